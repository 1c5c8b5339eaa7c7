"""Zones, lines, dwell and track lifecycle → alerts (engine.py); its YAML is in streamd.config."""
