"""Zones, lines, dwell and track lifecycle → alerts (engine.py); its YAML (config.py)."""
