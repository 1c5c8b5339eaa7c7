"""The fleet as one daemon: every instance's /status in one table (:mod:`.status`),
and the whole fleet's events read back from NATS JetStream, de-duplicated and in
order per camera (:mod:`.events`). Which instance runs which camera is
:mod:`streamd.config.shard`'s."""
