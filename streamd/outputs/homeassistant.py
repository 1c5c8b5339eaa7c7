"""Home Assistant MQTT discovery configs: a device per camera, its state, zones and lines.

Published retained under ``<discovery_prefix>/<component>/<node>/<object>/config``
(``outputs.mqtt.discovery: true``), built from what the heartbeat says each
camera has, so a stream or zone added at runtime appears in Home Assistant too:

- ``sensor`` *state*: the source state (``streaming``, ``reconnecting``, ...);
- per zone, ``sensor`` *<zone> occupancy* (tracks inside) and ``binary_sensor``
  *<zone> occupied* (device class ``occupancy``);
- per line, ``sensor`` *<line> in* and *<line> out* (``total_increasing``: the
  counts start again at 0 when the camera's process restarts).

Every entity is unavailable when streamd is (``<p>/availability``, its will);
the zone and line entities also while the camera is not streaming.
"""

from __future__ import annotations

import re
from typing import Any


def _object_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def discovery_configs(
    discovery_prefix: str, prefix: str, stream: str, zones: list[str], lines: list[str]
) -> dict[str, dict[str, Any]]:
    """Topic → config payload for one camera's entities."""
    node = _object_id(prefix.replace("/", "_"))
    uid = f"{node}_{_object_id(stream)}"
    device = {
        "identifiers": [uid],
        "name": f"{stream} (streamd)",
        "manufacturer": "streamd",
        "model": "camera",
    }
    daemon_up = {"topic": f"{prefix}/availability"}
    stream_up = {"topic": f"{prefix}/{stream}/availability"}
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, config: dict[str, Any], with_stream: bool) -> None:
        config.update(
            unique_id=f"{uid}_{object_id}",
            device=device,
            availability=[daemon_up, stream_up] if with_stream else [daemon_up],
            availability_mode="all",
        )
        out[f"{discovery_prefix}/{component}/{node}/{uid}_{object_id}/config"] = config

    state = {"name": "State", "icon": "mdi:cctv", "state_topic": f"{prefix}/{stream}/state"}
    add("sensor", "state", state, with_stream=False)
    for zone in zones:
        zid = _object_id(zone)
        topic = f"{prefix}/{stream}/zone/{zone}/occupancy"
        add("sensor", f"zone_{zid}_occupancy", {
            "name": f"{zone} occupancy", "state_topic": topic, "state_class": "measurement",
            "unit_of_measurement": "objects", "icon": "mdi:account-group",
        }, with_stream=True)  # fmt: skip
        add("binary_sensor", f"zone_{zid}_occupied", {
            "name": f"{zone} occupied", "state_topic": topic, "device_class": "occupancy",
            "value_template": "{{ 'ON' if value | int(0) > 0 else 'OFF' }}",
        }, with_stream=True)  # fmt: skip
    for line in lines:
        lid = _object_id(line)
        counts = f"{prefix}/{stream}/line/{line}/counts"
        for direction in ("in", "out"):
            add("sensor", f"line_{lid}_{direction}", {
                "name": f"{line} {direction}", "state_topic": counts,
                "value_template": f"{{{{ value_json['{direction}'] }}}}",
                "state_class": "total_increasing", "icon": "mdi:counter",
            }, with_stream=True)  # fmt: skip
    return out
