"""The configured outputs, each as a name and a constructor taking its cursor.

The client libraries are imported here, in the outputs process only, and only
for the outputs configured.
"""

from __future__ import annotations

from collections.abc import Callable

from streamd.config.outputs import OutputsConfig
from streamd.outputs.base import Cursor, Output

Factory = Callable[[Cursor], Output]


def build_outputs(cfg: OutputsConfig) -> list[tuple[str, Factory]]:
    out: list[tuple[str, Factory]] = []
    if cfg.mqtt is not None:
        from streamd.outputs.mqtt import MqttOutput

        mqtt_cfg = cfg.mqtt
        out.append(("mqtt", lambda c: MqttOutput(mqtt_cfg, c)))
    if cfg.nats is not None:
        from streamd.outputs.jetstream import NatsOutput

        nats_cfg = cfg.nats
        out.append(("nats", lambda c: NatsOutput(nats_cfg, c)))
    if cfg.webhooks:
        from streamd.outputs.webhooks import WebhookOutput

        for hook in cfg.webhooks:
            out.append((hook.output_name, lambda c, h=hook: WebhookOutput(h, c)))  # type: ignore[misc]
    return out
