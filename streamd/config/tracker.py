"""The ``tracker`` section: which tracker of the ``trackers`` library, and its options.

Shared settings (``kind``, ``lost_track_s``, ``min_consecutive_frames``) sit at the top;
each kind's own options live in a section named after it (``tracker.ocsort.delta_t``),
and only the section of the chosen kind may be set, so a typo'd kind cannot silently
ignore options. The default kind and every kind's defaults were chosen with
``streamd eval-tracking`` (docs/benchmarks.md) for the offline person model with
``model.conf`` 0.25: its confidences on people run about 0.35-0.85 (5th-95th
percentile), so tracks start at 0.5 and boxes from 0.4 (BoT-SORT) count as sure.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from streamd.config.base import _Strict

TrackerKind = Literal["bytetrack", "ocsort", "botsort", "sort"]
# The Kalman state of the library's estimators: corners, or centre + scale/aspect.
MotionModel = Literal["xyxy", "xcycsr", "xcycwh"]
IouKind = Literal["iou", "giou", "diou", "ciou", "biou"]

_MOTION = "Kalman state: xyxy (corners), xcycsr or xcycwh (centre-based)."
_IOU = "Box similarity for association: iou, giou, diou, ciou, biou."


class ByteTrackOptions(_Strict):
    """ByteTrack: two-stage association, high- then low-confidence boxes."""

    activation_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Minimum confidence to start a track."
    )
    high_conf_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Boxes at or above this go to the first stage."
    )
    min_iou: float = Field(0.1, ge=0.0, le=1.0, description="Least similarity to associate.")
    motion: MotionModel = Field("xyxy", description=_MOTION)
    iou: IouKind = Field("biou", description=_IOU)


class SortOptions(_Strict):
    """SORT: one IoU association stage, Kalman prediction."""

    activation_threshold: float = Field(
        0.4, gt=0.0, le=1.0, description="Minimum confidence to start a track."
    )
    min_iou: float = Field(0.1, ge=0.0, le=1.0, description="Least similarity to associate.")
    motion: MotionModel = Field("xcycsr", description=_MOTION)
    iou: IouKind = Field("biou", description=_IOU)


class OCSortOptions(_Strict):
    """OC-SORT: observation-centric re-update and direction consistency."""

    high_conf_threshold: float = Field(
        0.4, gt=0.0, le=1.0, description="Boxes below this are neither associated nor started."
    )
    min_iou: float = Field(0.1, ge=0.0, le=1.0, description="Least similarity to associate.")
    direction_weight: float = Field(
        0.2, ge=0.0, le=10.0, description="Weight of direction consistency in association."
    )
    delta_t: int = Field(3, ge=1, le=30, description="Observations back for the velocity.")
    motion: MotionModel = Field("xcycsr", description=_MOTION)
    iou: IouKind = Field("biou", description=_IOU)


class BoTSortOptions(_Strict):
    """BoT-SORT: ByteTrack-style stages, a centre/size Kalman state, optional camera-motion
    compensation (off by default: fixed cameras do not move, and it costs CPU per frame)."""

    activation_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Minimum confidence to start a track."
    )
    high_conf_threshold: float = Field(
        0.4, gt=0.0, le=1.0, description="Boxes at or above this go to the first stage."
    )
    min_iou_first: float = Field(0.2, ge=0.0, le=1.0, description="First-stage least IoU.")
    min_iou_second: float = Field(0.5, ge=0.0, le=1.0, description="Second-stage least IoU.")
    min_iou_unconfirmed: float = Field(
        0.3, ge=0.0, le=1.0, description="Least IoU to continue an unconfirmed track."
    )
    cmc: bool = Field(False, description="Camera-motion compensation (moving cameras only).")
    cmc_method: Literal["orb", "sift", "sparseOptFlow", "ecc"] = "sparseOptFlow"
    cmc_downscale: int = Field(2, ge=1, le=8, description="Frame downscale for CMC.")
    motion: MotionModel = Field("xyxy", description=_MOTION)
    iou: IouKind = Field("giou", description=_IOU)


class AppearanceOptions(_Strict):
    """Identities kept by colour where the motion tracker loses or swaps them
    (streamd/track/appearance.py): a new track takes over an identity that vanished
    nearby and looks the same; a crossing the tracker came out of with two people's ids
    exchanged is undone; a track that went on with somebody else's boxes is split off
    under a new id; a box the tracker has not confirmed shows the vanished identity it
    looks like. Needs every frame's pixels on the host: off for streams decoded
    in the detector process (``decode_in: detector``)."""

    enabled: bool = Field(True, description="Re-link and un-cross identities by colour.")
    window_s: float = Field(
        4.0, gt=0.0, le=60.0, description="How long a vanished identity can be taken over."
    )
    min_similarity: float = Field(
        0.75, gt=0.0, le=1.0,
        description="Least colour similarity (1 = the same) to hand an identity on.",
    )  # fmt: skip
    swap_margin: float = Field(
        0.1, ge=0.0, le=1.0, description="How much better exchanged ids must fit the colours."
    )
    split_similarity: float = Field(
        0.5, ge=0.0, le=1.0,
        description="A track whose box touched another (or that came back after a gap) "
        "and whose clear looks then fall below this similarity to its identity went on with "
        "somebody else: it goes on under a new id (0: never).",
    )  # fmt: skip
    unconfirmed: bool = Field(
        True,
        description="Show a vanished identity on a box the motion tracker has not confirmed "
        "(a person detected too weakly to start a track) that is within reach and looks "
        "like it.",
    )
    drift: float = Field(
        0.5, ge=0.0, le=10.0,
        description="Box heights a second a person may stray from their last velocity.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _split_below_handing_on(self) -> AppearanceOptions:
        # A look that splits a track must not also count as the person's own (where the
        # identity goes back to), nor be learnt into its signature.
        if self.split_similarity >= self.min_similarity:
            raise ValueError(
                f"split_similarity ({self.split_similarity:g}) must be below min_similarity "
                f"({self.min_similarity:g}), or 0 to never split"
            )
        return self


_LEGACY = ("activation_threshold", "high_conf_threshold", "min_iou")
_SECTIONS: dict[str, type[_Strict]] = {
    "bytetrack": ByteTrackOptions,
    "ocsort": OCSortOptions,
    "botsort": BoTSortOptions,
    "sort": SortOptions,
}


class TrackerConfig(_Strict):
    """One tracker per stream, driven by media time (dropped frames are longer steps)."""

    kind: TrackerKind = Field("botsort", description="Which tracker of the trackers library.")
    lost_track_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="Keep a lost track this long (seconds)."
    )
    min_consecutive_frames: int = Field(
        2, ge=1, le=100, description="Frames seen in a row before a track gets an id."
    )
    bytetrack: ByteTrackOptions = Field(default_factory=lambda: ByteTrackOptions())
    ocsort: OCSortOptions = Field(default_factory=lambda: OCSortOptions())
    botsort: BoTSortOptions = Field(default_factory=lambda: BoTSortOptions())
    sort: SortOptions = Field(default_factory=lambda: SortOptions())
    appearance: AppearanceOptions = Field(default_factory=lambda: AppearanceOptions())

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # These were top-level keys when ByteTrack was the only tracker.
        if isinstance(data, dict):
            moved = [k for k in _LEGACY if k in data]
            if moved:
                kind = data.get("kind", cls.model_fields["kind"].default)
                section = _SECTIONS.get(kind)
                has = [] if section is None else [k for k in moved if k in section.model_fields]
                where = (f"tracker.{kind}.{has[0]}" if has else
                         f"tracker.{kind}, whose keys are {sorted(section.model_fields)}"
                         if section is not None else "the chosen kind's section")  # fmt: skip
                raise ValueError(
                    f"{', '.join(moved)}: no longer top-level keys; each kind has its own "
                    f"section (here {where})"
                )
        return data

    @model_validator(mode="after")
    def _only_own_section(self) -> TrackerConfig:
        others = sorted(k for k in ("bytetrack", "ocsort", "botsort", "sort")
                        if k != self.kind and k in self.model_fields_set)  # fmt: skip
        if others:
            raise ValueError(
                f"tracker.{others[0]} is set but tracker.kind is {self.kind!r}: "
                f"set kind: {others[0]}, or move the options to tracker.{self.kind}"
            )
        return self

    @property
    def memory_s(self) -> float:
        """How long an unseen id may still come back: the library keeps a lost track
        ``lost_track_s``, the appearance cue hands an identity on for ``window_s``. A
        track's ``end`` waits this long, so a hidden person's dwell is not split."""
        if self.appearance.enabled:
            return max(self.lost_track_s, self.appearance.window_s)
        return self.lost_track_s

    def options(self) -> ByteTrackOptions | OCSortOptions | BoTSortOptions | SortOptions:
        """The chosen kind's own options."""
        opts: ByteTrackOptions | OCSortOptions | BoTSortOptions | SortOptions = getattr(
            self, self.kind
        )
        return opts
