"""Wire format (contract v1), the ZeroMQ publisher and the event schema."""

from streamd.publish.publisher import Publisher
from streamd.publish.wire import SCHEMA_VERSION, Event, decode, encode, load_schema

__all__ = ["SCHEMA_VERSION", "Event", "Publisher", "decode", "encode", "load_schema"]
