"""``shard: {index, count}``: which of a pipeline's streams this instance analyses.

Every instance of a fleet reads the same pipeline file; each takes the streams
whose rendezvous (highest random weight) hash puts them in its shard: for a
stream id, every shard gets a score (a keyed BLAKE2b of the id, not Python's
``hash()``, which differs per process) and the highest score wins. Changing
``count`` from n to n+1 moves only the streams whose new top score is the new
shard's, about 1/(n+1) of them; nothing moves between the old shards.

``index`` is an integer or a StatefulSet pod name (``streamd-2``: the ordinal
after the last ``-``), so a Kubernetes pod can pass its own name through the
environment (``index: ${POD_NAME}``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from streamd.config.base import _Strict

MAX_SHARDS = 4096
# A DNS label (what a pod name is) ending in -<ordinal>, or a bare number.
_POD_NAME = re.compile(r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?-)?([0-9]+)")


def score(stream_id: str, shard: int) -> int:
    """The rendezvous weight of ``stream_id`` on ``shard``: stable across processes,
    machines and Python versions."""
    key = f"{shard}".encode()
    digest = hashlib.blake2b(stream_id.encode(), digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big")


def shard_of(stream_id: str, count: int) -> int:
    """The shard (0..count-1) that analyses ``stream_id``; ties go to the lower index."""
    return max(range(count), key=lambda s: (score(stream_id, s), -s))


def assignment(stream_ids: Iterable[str], count: int) -> dict[str, int]:
    """Each stream id's shard."""
    return {sid: shard_of(sid, count) for sid in stream_ids}


class ShardConfig(_Strict):
    # count first: fields validate in order, and index is checked against it.
    count: int = Field(..., ge=1, le=MAX_SHARDS, description="Instances in the fleet.")
    index: int = Field(
        ...,
        ge=0,
        description="This instance, 0..count-1; or a StatefulSet pod name such as "
        "streamd-2 (its ordinal), e.g. from ${POD_NAME}.",
    )

    @field_validator("index", mode="before")
    @classmethod
    def _ordinal(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        m = _POD_NAME.fullmatch(value.strip())
        if m is None:
            raise ValueError(
                f"{value!r} is neither a number nor a StatefulSet pod name ending in "
                "-<ordinal> (e.g. streamd-2)"
            )
        return int(m.group(1))

    @field_validator("index")
    @classmethod
    def _below_count(cls, index: int, info: ValidationInfo) -> int:
        count = info.data.get("count")  # absent if it was invalid: reported already
        if count is not None and index >= count:
            raise ValueError(
                f"{index} is not below shard.count {count} (shards are 0..{count - 1}; "
                "a StatefulSet's replicas must equal shard.count)"
            )
        return index

    def owns(self, stream_id: str) -> bool:
        """Whether this instance analyses ``stream_id``."""
        return shard_of(stream_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
