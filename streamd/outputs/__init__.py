"""Outputs: alerts (from the journal) and live events delivered beyond the ZeroMQ bus.

MQTT with Home Assistant discovery (``mqtt.py``, ``homeassistant.py``), NATS
JetStream (``jetstream.py``) and webhooks (``webhooks.py``), all behind one
interface (``base.Output``), run by one process (``runner.py``) that feeds them
from the journal after each one's cursor (``cursor.py``) and from the bus.
"""

from streamd.outputs.base import Cursor, JournaledAlert, LiveEvent, Output
from streamd.outputs.runner import OutputsSpec, outputs_main

__all__ = ["Cursor", "JournaledAlert", "LiveEvent", "Output", "OutputsSpec", "outputs_main"]
