"""Identities kept by appearance where the motion tracker loses or swaps them.

The ``trackers`` library associates by motion and box overlap only (no appearance
model in 2.6.1). Two things then cost a person their id: hidden longer than the Kalman
prediction stays useful (or detected under the activation threshold for a while), the
library starts a new track; and where two people cross, its tracks can come out of the
crossing on the wrong people. Either re-fires every alert on them.

This layer sits after the library and maps its track ids to the ids streamd publishes.
Each identity keeps a colour signature (hue x saturation histograms of three
horizontal stripes of its box, leaving out what nearer boxes cover; brightness left
out, so a dimmer or brighter scene changes little), learnt only from boxes mostly
visible that still look like it.

- **Re-linking**: a new identity, at its first box at least half visible, is compared
  with the identities that vanished in the last ``window_s`` seconds before it was
  confirmed, within reach of where they were heading; it takes over the one it
  resembles best (similarity at least ``min_similarity``) instead of keeping a new id.
- **Crossings**: an identity whose box touched another's in the last ``window_s``
  seconds is checked, once both boxes show enough, against the other: if exchanging
  the two ids fits the colours better by ``2 * swap_margin``, they are exchanged.
- **Unconfirmed boxes**: a box the library has not confirmed (a person detected too
  weakly to start a track, or whose new track is still young) shows a vanished
  identity within reach that it looks like, for at most ``window_s`` after a library
  track last carried it; in the next frame the box that best continues it goes on
  showing it (looked at again every ``_LEARN_EVERY_S``), and a track the library
  confirms there takes it over (at once in the next frame, else at its first clear
  look if the identity was last shown before the track was confirmed).
- **Splits**: a library track whose clear looks stop resembling its identity (below
  ``split_similarity``, twice in a row) after a chance to pass to somebody (its box
  touched another, or it came back after a gap) went on with somebody else's boxes;
  the identity goes back to where it last looked like itself, as if vanished there,
  and the track goes on under a new id. Without such a chance the person's look
  changed: the identity learns it.

Look-alikes (the same clothes) are left as the library had them. Where the model's
classes are different objects (``classes`` given to ``update``), an identity matched by
look goes only to a box of its class (a weak car box never shows a vanished person's
id); a box that continues the last one by overlap, or an exchange after a crossing,
follows the library, which tracks across classes. Classes that are states of one object
(the person model's Normal and Fall, with ``model.agnostic_nms``) are not given.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import supervision as sv
from scipy.optimize import linear_sum_assignment

from streamd.config.tracker import AppearanceOptions

Image = npt.NDArray[np.uint8]
Box = npt.NDArray[np.float64]
Signature = npt.NDArray[np.float32]

# Hue x saturation bins per horizontal stripe of the box (head and shoulders, torso,
# legs); value (brightness) is left out on purpose.
_BINS = (16, 8)
_STRIPES = 3
_RANGES = (0.0, 180.0, 0.0, 256.0)
# The signature is measured on this many pixels (box resized): cost independent of size.
_SAMPLE = (24, 48)
_ROWS = [(i * _SAMPLE[1] // _STRIPES, (i + 1) * _SAMPLE[1] // _STRIPES) for i in range(_STRIPES)]
# A box is compared when at least this share of it shows, and learnt from above the next.
_MIN_VISIBLE = 0.5
_LEARN_VISIBLE = 0.85
# How fast an identity's signature follows what it looks like now (per clear update).
_LEARN = 0.1
# ... and only from a box this like it already (one person's boxes score 0.95-1.0).
_LEARN_SIMILAR = 0.9
# ... at most this often (a look costs a resize and three histograms).
_LEARN_EVERY_S = 0.2
# Times are compared with this slack: at 15 fps a look is due after exactly 3 frames,
# and 9/15 - 6/15 < 0.2 must not make it wait a frame.
_EPS = 1e-6
_NONE = 1e6
# A vanished identity is handed on only to a track confirmed this long after it was last
# seen: a track is confirmed a few frames after its first box, and one person's old and
# new tracks do not overlap in time (a look-alike walking next to them may).
_GAP_S = 0.25
# A box this much overlapping the one an identity was shown on in the frame before goes
# on showing it (unconfirmed boxes, and a track the library confirms on one).
_CONTINUE_IOU = 0.5
# A track is split off its identity after this many clear looks in a row (one every
# ``_LEARN_EVERY_S``) below ``split_similarity``: one odd look (a pose, a glare) is not.
_STRIKES = 2
# Velocity is measured over this long a trail.
_TRAIL_S = 1.0


@dataclass(slots=True)
class _Identity:
    out_id: int
    box: Box
    ts: float
    trail: deque[tuple[float, npt.NDArray[np.float64]]] = field(default_factory=deque)
    signature: Signature | None = None
    born: float = 0.0
    learnt: float = -1e9  # when its signature was last looked at
    checked: float = -1e9  # when it was last checked against those it touched
    provisional: bool = True  # new, not yet compared with the vanished (no clear box)
    contacts: dict[int, float] = field(default_factory=dict)  # other id -> last touch
    # When, where and how fast it last looked like itself (a split goes back there).
    vouched: tuple[float, Box, npt.NDArray[np.float64], int] | None = None  # ... its class
    strikes: int = 0  # clear looks in a row unlike itself
    met: float = -1e9  # when its box last touched another, or came back after a gap
    shown_unconfirmed: float = -1e9  # when last shown on a box the library had not confirmed
    shown_looked: float = -1e9  # ... on one that looked like it
    confirmed: float = -1e9  # when a library track last carried it
    cls: int = 0  # the class of its track's last box (matched by look only within it)


@dataclass(frozen=True, slots=True)
class Look:
    """What a box showed: its signature and how much of it was its own."""

    signature: Signature
    visible: float  # share of the box no nearer box covers


def look(image: Image, box: Box, nearer: list[Box]) -> Look | None:
    """Hue/saturation histograms of three horizontal stripes of the box (inner 70 % wide),
    leaving out what nearer boxes cover (a person whose feet are lower in the picture
    stands in front); None for a box too small, outside the image or mostly hidden."""
    h, w = image.shape[:2]
    inset = 0.15 * (box[2] - box[0])
    x1, x2 = int(max(0.0, box[0] + inset)), int(min(w, box[2] - inset))
    y1, y2 = int(max(0.0, box[1])), int(min(h, box[3]))
    if x2 - x1 < 4 or y2 - y1 < 8:
        return None
    mask = np.full((y2 - y1, x2 - x1), 255, np.uint8)
    for o in nearer:
        ox1, ox2 = int(max(x1, o[0])) - x1, int(min(x2, o[2])) - x1
        oy1, oy2 = int(max(y1, o[1])) - y1, int(min(y2, o[3])) - y1
        if ox2 > ox1 and oy2 > oy1:
            mask[oy1:oy2, ox1:ox2] = 0
    visible = float(np.count_nonzero(mask)) / mask.size
    if visible < _MIN_VISIBLE:
        return None
    # Nearest sampling: a histogram of ~1,000 sampled pixels needs no filtering, and
    # area averaging of a large crop cost ~80 us a box.
    crop = cv2.resize(image[y1:y2, x1:x2], _SAMPLE, interpolation=cv2.INTER_NEAREST)
    small: Image | None = None
    if visible < 1.0:
        small = np.asarray(cv2.resize(mask, _SAMPLE, interpolation=cv2.INTER_NEAREST))
    hsv: Image = np.asarray(cv2.cvtColor(crop, cv2.COLOR_BGR2HSV))
    parts = [_hist(hsv[a:b], None if small is None else small[a:b]) for a, b in _ROWS]
    return Look(np.concatenate(parts).astype(np.float32), visible)


def _hist(hsv: Image, mask: Image | None) -> Signature:
    """The stripe's histogram summing to 1, kept as its square root: the Bhattacharyya
    coefficient of two is then a dot product."""
    hist = cv2.calcHist([hsv], [0, 1], mask, list(_BINS), list(_RANGES)).ravel()
    total = float(hist.sum())
    return np.asarray(np.sqrt(hist / total if total > 0 else hist), np.float32)


def similarity(a: Signature, b: Signature) -> float:
    """Mean Bhattacharyya coefficient of the stripes both show (1 = identical colours)."""
    sa, sb = a.reshape(_STRIPES, -1), b.reshape(_STRIPES, -1)
    coeffs = np.einsum("ij,ij->i", sa, sb)
    # A stripe one of them does not show (all hidden) sums to 0 and is left out.
    shown = np.einsum("ij->i", sa) * np.einsum("ij->i", sb) > 0
    return float(coeffs[shown].mean()) if shown.any() else 0.0


class Relinker:
    """Maps the library's track ids to the ids streamd publishes."""

    def __init__(self, options: AppearanceOptions, library_keep_s: float) -> None:
        """``library_keep_s``: how long the library keeps a lost track (lost_track_s)."""
        self._opt = options
        self._library_keep_s = library_keep_s
        self._out_of: dict[int, int] = {}  # library id -> published id
        self._lib_of: dict[int, int] = {}  # published id -> library id (the inverse)
        self._lib_seen: dict[int, float] = {}  # library id -> when it last had a box
        self._ids: dict[int, _Identity] = {}  # published id -> what it looked like
        self._next = 0
        self._prev_ts = -1e9  # the frame before this one
        self._cls: npt.NDArray[np.int64] = np.zeros(0, np.int64)  # this frame's box classes

    def update(
        self, boxes: npt.NDArray[np.floating[Any]], lib_ids: npt.NDArray[np.int64], ts: float,
        image: Image | None, classes: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.int64]:  # fmt: skip
        """The published ids for this frame's boxes (-1, not confirmed by the library,
        stays -1 unless it shows a vanished identity). ``classes``: the boxes' class ids
        (None: one class); a vanished identity is matched by look only to a box of its class."""
        b = boxes.astype(np.float64)
        if classes is not None and np.shape(classes) != (len(b),):
            raise ValueError(f"{np.shape(classes)} classes for {len(b)} boxes")
        self._cls = np.zeros(len(b), np.int64) if classes is None else np.asarray(classes, np.int64)
        rows = [k for k, i in enumerate(lib_ids) if i >= 0]
        looks = _Looks(image, b)
        for k in rows:
            lib = int(lib_ids[k])
            self._lib_seen[lib] = ts
            if lib not in self._out_of:
                new = self._map(lib, self._new_id())
                self._ids[new] = _Identity(new, b[k], ts, born=ts, cls=self._kind(k))
            elif self._out_of[lib] not in self._ids:
                # Its identity was handed on, or forgotten while the library kept it lost.
                old = self._out_of[lib]
                self._ids[old] = _Identity(old, b[k], ts, born=ts, provisional=False,
                                           cls=self._kind(k))  # fmt: skip
        self._relink(rows, b, lib_ids, ts, looks)
        out = np.full(len(lib_ids), -1, np.int64)
        for k in rows:
            out[k] = self._out_of[int(lib_ids[k])]
        self._uncross(out, rows, lib_ids, ts, looks)
        touching = _touching(b)  # once a frame: both the split's chance and the contacts
        jumped = []
        for k in rows:
            out[k] = self._out_of[int(lib_ids[k])]
            self._meet(self._ids.get(int(out[k])), bool(touching[k].any()), ts)
            if self._observe(int(out[k]), b[k], ts, looks, k):
                jumped.append(k)
        if jumped:
            self._split_all(jumped, rows, b, lib_ids, ts, looks)
            for k in rows:  # the split tracks' new ids show at once
                out[k] = self._out_of[int(lib_ids[k])]
        self._touch(out, rows, touching, ts)
        if self._opt.unconfirmed and looks.pictured:
            self._show_unconfirmed(out, lib_ids, b, ts, looks)
        self._forget(ts)
        self._prev_ts = ts
        return out

    def sizes(self) -> dict[str, int]:
        """How much it remembers (bounded by the last ``window_s`` of tracks)."""
        return {"library_ids": len(self._out_of), "published_ids": len(self._lib_of),
                "identities": len(self._ids)}  # fmt: skip

    def _kind(self, k: int) -> int:
        """The class of this frame's box ``k``."""
        return int(self._cls[k])

    def _new_id(self) -> int:
        self._next += 1
        return self._next - 1

    def _relink(
        self, rows: list[int], b: Box, lib_ids: npt.NDArray[np.int64], ts: float,
        looks: _Looks,
    ) -> None:  # fmt: skip
        """New identities, at their first clear box, take over vanished ones they resemble
        (vanished before the new one was born: never two ids of one person at once; or
        shown on the new track's own boxes before the library confirmed it)."""
        self._continue_unconfirmed(rows, b, lib_ids, ts)
        fresh = [k for k in rows if self._ids[self._out_of[int(lib_ids[k])]].provisional
                 and looks.signature(k) is not None]  # fmt: skip
        carried = {self._out_of[int(lib_ids[k])] for k in rows}
        gone = [d for d in self._ids.values()
                if d.out_id not in carried and d.signature is not None]  # fmt: skip
        for k in fresh:
            self._ids[self._out_of[int(lib_ids[k])]].provisional = False
        if not fresh or not gone:
            return
        cost = np.full((len(fresh), len(gone)), _NONE)
        for r, k in enumerate(fresh):
            sig = looks.signature(k)
            assert sig is not None
            for c, d in enumerate(gone):
                assert d.signature is not None
                if d.cls != self._kind(k):
                    continue
                sim = similarity(sig, d.signature)
                born = self._ids[self._out_of[int(lib_ids[k])]].born
                # Last shown on unconfirmed boxes up to before the track was confirmed:
                # within reach and looking like it, those are taken for its own boxes.
                own = d.shown_unconfirmed == d.ts < born
                before = d.ts < born - _GAP_S or own
                if sim >= self._opt.min_similarity and before and self._reachable(d, b[k], ts):
                    cost[r, c] = 1.0 - sim
        for r, c in _pairs(cost):
            self._take_over(int(lib_ids[fresh[r]]), gone[c].out_id)

    def _take_over(self, lib: int, out_id: int) -> None:
        """The library track ``lib``, new, takes over identity ``out_id``; its own
        provisional identity goes."""
        provisional = self._out_of[lib]
        self._hand_on(lib, out_id)
        del self._ids[provisional]

    def _continue_unconfirmed(
        self, rows: list[int], b: Box, lib_ids: npt.NDArray[np.int64], ts: float
    ) -> None:
        """A track the library confirms this frame on the box that best continues the
        unconfirmed one an identity was shown on in the frame before takes it over at
        once (no clear look needed: that box was the track's own)."""
        carried = {self._out_of[int(lib_ids[k])] for k in rows}
        tracks = {k: self._ids[self._out_of[int(lib_ids[k])]] for k in rows}
        new = {k for k, t in tracks.items() if t.born == ts and t.provisional}
        for d in [d for d in self._ids.values() if d.out_id not in carried]:
            if not new or not self._just_shown_unconfirmed(d):
                continue
            k, iou = _best_overlap(d.box, b)
            if k in new and iou >= _CONTINUE_IOU:
                self._take_over(int(lib_ids[k]), d.out_id)
                new.discard(k)

    def _just_shown_unconfirmed(self, d: _Identity) -> bool:
        """Shown on an unconfirmed box in the frame before, and not carried since."""
        return d.shown_unconfirmed == d.ts and d.ts >= self._prev_ts - _EPS

    def _show_unconfirmed(
        self, out: npt.NDArray[np.int64], lib_ids: npt.NDArray[np.int64], b: Box, ts: float,
        looks: _Looks,
    ) -> None:  # fmt: skip
        """Vanished identities on boxes the library has not confirmed, for at most
        ``window_s`` after a library track last carried them: the box that best
        continues one shown so in the frame before goes on showing it; else an identity
        within reach that the box looks like (the assignment with the best total
        likeness, one box each)."""
        free = [k for k in range(len(lib_ids)) if lib_ids[k] < 0]
        carried = {int(i) for i in out if i >= 0}
        gone = [d for d in self._ids.values() if d.out_id not in carried
                and d.signature is not None and not d.provisional
                and ts - d.confirmed <= self._opt.window_s]  # fmt: skip
        for d in sorted(gone, key=lambda d: -d.ts):
            if free and self._just_shown_unconfirmed(d):
                self._follow_unconfirmed(d, free, out, b, ts, looks)
        self._match_unconfirmed([d for d in gone if d.ts < ts], free, out, b, ts, looks)

    def _follow_unconfirmed(
        self, d: _Identity, free: list[int], out: npt.NDArray[np.int64], b: Box, ts: float,
        looks: _Looks,
    ) -> None:  # fmt: skip
        """Go on showing ``d`` on the unconfirmed box that best continues its box of the
        frame before (of all this frame's boxes); once every ``_LEARN_EVERY_S`` only if
        that box, seen clearly enough, still looks like it."""
        k, iou = _best_overlap(d.box, b)
        if k not in free or iou < _CONTINUE_IOU:
            return
        looked = False
        if ts - d.shown_looked >= _LEARN_EVERY_S - _EPS:
            sig = looks.signature(k)
            if sig is not None:
                assert d.signature is not None
                if similarity(sig, d.signature) < self._opt.min_similarity:
                    return
                looked = True
        free.remove(k)
        self._show(d, out, k, b[k], ts, looked)

    def _match_unconfirmed(
        self, gone: list[_Identity], free: list[int], out: npt.NDArray[np.int64], b: Box,
        ts: float, looks: _Looks,
    ) -> None:  # fmt: skip
        cost = np.full((len(free), len(gone)), _NONE)
        for r, k in enumerate(free):
            # Reach first: a look costs, and most unconfirmed boxes have nobody near.
            near = [c for c, d in enumerate(gone)
                    if d.cls == self._kind(k) and self._reachable(d, b[k], ts)]  # fmt: skip
            sig = looks.signature(k) if near else None
            if sig is None:
                continue
            for c in near:
                theirs = gone[c].signature
                assert theirs is not None
                sim = similarity(sig, theirs)
                if sim >= self._opt.min_similarity:
                    cost[r, c] = 1.0 - sim
        for r, c in _pairs(cost):
            self._show(gone[c], out, free[r], b[free[r]], ts, looked=True)

    def _show(
        self, d: _Identity, out: npt.NDArray[np.int64], k: int, box: Box, ts: float,
        looked: bool,
    ) -> None:  # fmt: skip
        out[k] = d.out_id
        d.box, d.ts, d.shown_unconfirmed = box, ts, ts
        if looked:
            d.shown_looked = ts
        # Boxes the library did not tie to the identity: a chance it passed to somebody
        # (so a track confirmed on them that then looks unlike it is split, not learnt).
        d.met = ts
        _follow(d, box, ts)

    def _uncross(
        self, out: npt.NDArray[np.int64], rows: list[int], lib_ids: npt.NDArray[np.int64],
        ts: float, looks: _Looks,
    ) -> None:  # fmt: skip
        """Undo a crossing the library came out of with two people's tracks exchanged."""
        row_of = {int(out[k]): k for k in rows}
        for k in rows:
            me = self._ids.get(int(out[k]))
            if me is None or me.signature is None or not me.contacts:
                continue
            if ts - me.checked < _LEARN_EVERY_S - _EPS:
                continue  # a look costs; a crossing is checked a few times a second
            me.checked = ts
            now = looks.signature(k)
            if now is None:
                continue
            mine = similarity(now, me.signature)
            for other_id in [i for i, t in me.contacts.items() if ts - t <= self._opt.window_s]:
                other, j = self._ids.get(other_id), row_of.get(other_id)
                if other is None or other.signature is None or j is None:
                    continue  # a vanished one is for re-linking, not this
                their_now = looks.signature(j)
                if their_now is None:
                    continue
                kept = mine + similarity(their_now, other.signature)
                exchanged = similarity(now, other.signature) + similarity(their_now, me.signature)
                if exchanged - kept >= 2 * self._opt.swap_margin:
                    self._exchange(int(lib_ids[k]), int(lib_ids[j]))
                    out[k], out[j] = out[j], out[k]
                    row_of[int(out[k])], row_of[int(out[j])] = k, j
                    break

    def _map(self, lib: int, out_id: int) -> int:
        self._out_of[lib], self._lib_of[out_id] = out_id, lib
        return out_id

    def _exchange(self, lib_a: int, lib_b: int) -> None:
        a, b = self._out_of[lib_a], self._out_of[lib_b]
        for out_id in (a, b):  # strikes were against the other person's looks
            if out_id in self._ids:
                self._ids[out_id].strikes = 0
        self._map(lib_a, b)
        self._map(lib_b, a)

    def _hand_on(self, lib: int, out_id: int) -> None:
        # The library track that carried it before, should it come back, gets a new id;
        # the published id ``lib`` had is given up.
        old_lib = self._lib_of.get(out_id)
        if old_lib is not None and old_lib != lib:
            self._map(old_lib, self._new_id())
        given_up = self._out_of.get(lib)
        if given_up is not None:
            self._lib_of.pop(given_up, None)
        self._map(lib, out_id)
        if out_id in self._ids:
            self._ids[out_id].strikes = 0  # counted on another track's looks

    def _reachable(self, d: _Identity, box: Box, ts: float) -> bool:
        dt = ts - d.ts
        if dt <= 0 or dt > self._opt.window_s:
            return False
        centre = (box[:2] + box[2:]) / 2
        predicted = (d.box[:2] + d.box[2:]) / 2 + _velocity(d) * dt
        height = max(1.0, float(d.box[3] - d.box[1]))
        return float(np.linalg.norm(centre - predicted)) <= height * (0.5 + self._opt.drift * dt)

    def _observe(self, out_id: int, box: Box, ts: float, looks: _Looks, k: int) -> bool:
        """Follow the identity's box and learn its look; True when its track has jumped
        to somebody else (clear looks unlike it ``_STRIKES`` times in a row)."""
        d = self._ids.get(out_id)
        if d is None:  # a library track whose id was handed on came back
            d = self._ids[out_id] = _Identity(out_id, box, ts, born=ts, provisional=False)
        d.box, d.ts, d.confirmed, d.cls = box, ts, ts, self._kind(k)
        _follow(d, box, ts)
        if d.signature is not None and ts - d.learnt < _LEARN_EVERY_S - _EPS:
            return False
        seen = looks(k)
        if seen is None or seen.visible < _LEARN_VISIBLE:
            return False
        d.learnt, sig = ts, seen.signature
        if d.signature is None:
            d.signature, d.vouched = sig, _vouch(d, ts, box)
            return False
        sim = similarity(sig, d.signature)
        if sim >= _LEARN_SIMILAR:
            # Learnt only from boxes that still look like it: a wrong box is not absorbed.
            d.signature = ((1 - _LEARN) * d.signature + _LEARN * sig).astype(np.float32)
        if sim >= self._opt.min_similarity:
            d.vouched = _vouch(d, ts, box)
        return self._jumped(d, sim, sig, box, ts)

    def _meet(self, d: _Identity | None, touches: bool, ts: float) -> None:
        """Note a chance for the library's track to have passed to somebody else: its box
        touches another (confirmed or not), or it comes back after missing a frame."""
        if d is not None and (touches or d.ts < self._prev_ts - _EPS):
            d.met = ts

    def _jumped(self, d: _Identity, sim: float, sig: Signature, box: Box, ts: float) -> bool:
        """One clear look unlike it is a pose or a glare; ``_STRIKES`` in a row are
        somebody else if the track had a chance to pass to somebody since it last looked
        like itself (``_meet``). Without one, the person's own look changed (turned
        round, took a coat off; or a box that does not follow what it covers, as the null
        backend's): the identity learns the new look and keeps its id."""
        d.strikes = d.strikes + 1 if sim < self._opt.split_similarity else 0
        if d.strikes < _STRIKES or d.vouched is None:
            return False
        if d.met >= d.vouched[0] - _LEARN_EVERY_S - _EPS:
            return True
        d.signature, d.vouched, d.strikes = sig, _vouch(d, ts, box), 0
        return False

    def _split_all(
        self, jumped: list[int], rows: list[int], b: Box, lib_ids: npt.NDArray[np.int64],
        ts: float, looks: _Looks,
    ) -> None:  # fmt: skip
        """The library's tracks at ``jumped`` went on with somebody else's boxes (taken
        while their own people were hidden or undetected). Each identity goes back to
        where it last looked like itself, as if it had vanished there; a track born since
        that looks like it takes it over (its person came back before the split), else it
        waits to be re-linked. The tracks go on under new ids, which may at once take
        over a vanished identity they do resemble."""
        for k in jumped:
            lib = int(lib_ids[k])
            d = self._rewind(self._out_of[lib])
            if self._lib_of.get(d.out_id) == lib:
                del self._lib_of[d.out_id]
            new = self._map(lib, self._new_id())
            self._ids[new] = _Identity(new, b[k], ts, born=ts, cls=self._kind(k))
            self._reclaim(d, [r for r in rows if r not in jumped], b, lib_ids, ts, looks)
        self._relink(rows, b, lib_ids, ts, looks)

    def _rewind(self, out_id: int) -> _Identity:
        """The identity back where and when it last looked like itself, moving as it was
        then; what it touched since was somebody else's."""
        d = self._ids[out_id]
        assert d.vouched is not None
        # Its class too: the boxes it took since may have been of another object.
        d.ts, d.box, velocity, d.cls = d.vouched
        centre = (d.box[:2] + d.box[2:]) / 2
        d.trail = deque([(d.ts - _TRAIL_S, centre - velocity * _TRAIL_S), (d.ts, centre)])
        d.contacts = {i: t for i, t in d.contacts.items() if t <= d.ts}
        d.strikes = 0
        return d

    def _reclaim(
        self, d: _Identity, rows: list[int], b: Box, lib_ids: npt.NDArray[np.int64],
        ts: float, looks: _Looks,
    ) -> None:  # fmt: skip
        """Hand a rewound identity to the track its person came back on, if that track
        was born after the identity last looked like itself (while the jumped track still
        held it, re-linking could not offer it) and looks like it."""
        best, best_sim = None, self._opt.min_similarity
        for k in rows:
            young = self._ids.get(self._out_of[int(lib_ids[k])])
            if young is None or young.born <= d.ts + _GAP_S or self._kind(k) != d.cls:
                continue
            sig = looks.signature(k)
            if sig is None:
                continue
            assert d.signature is not None
            sim = similarity(sig, d.signature)
            if sim >= best_sim and self._reachable(d, b[k], ts):
                best, best_sim = k, sim
        if best is not None:
            given_up = self._out_of[int(lib_ids[best])]
            self._hand_on(int(lib_ids[best]), d.out_id)
            del self._ids[given_up]

    def _touch(
        self, out: npt.NDArray[np.int64], rows: list[int], touching: npt.NDArray[np.bool_],
        ts: float,
    ) -> None:  # fmt: skip
        for x in range(len(rows)):
            for y in range(x + 1, len(rows)):
                if touching[rows[x], rows[y]]:
                    a_id, b_id = int(out[rows[x]]), int(out[rows[y]])
                    self._ids[a_id].contacts[b_id] = ts
                    self._ids[b_id].contacts[a_id] = ts

    def _forget(self, ts: float) -> None:
        horizon = ts - self._opt.window_s
        for out_id in [i for i, d in self._ids.items() if d.ts < horizon]:
            del self._ids[out_id]
        # The library drops a track unseen for its lost-track time and never reuses an id:
        # a 24/7 camera must not keep every library id it ever saw.
        gone = ts - max(self._opt.window_s, self._library_keep_s) - 1.0
        for lib in [i for i, t in self._lib_seen.items() if t < gone]:
            del self._lib_seen[lib]
            out_id = self._out_of.pop(lib, -1)
            if self._lib_of.get(out_id) == lib:
                del self._lib_of[out_id]
        for d in self._ids.values():
            d.contacts = {i: t for i, t in d.contacts.items() if t >= horizon and i in self._ids}


def _vouch(d: _Identity, ts: float, box: Box) -> tuple[float, Box, npt.NDArray[np.float64], int]:
    """When, where, how fast and as what it looks like itself now (a split goes back there)."""
    return ts, box, _velocity(d), d.cls


def _follow(d: _Identity, box: Box, ts: float) -> None:
    """Add the box's centre to the identity's trail (the last ``_TRAIL_S``)."""
    d.trail.append((ts, (box[:2] + box[2:]) / 2))
    while d.trail[0][0] < ts - _TRAIL_S:
        d.trail.popleft()


def _pairs(cost: npt.NDArray[np.float64]) -> list[tuple[int, int]]:
    """The cheapest one-to-one pairs of rows and columns, leaving out the barred."""
    if cost.size == 0:
        return []
    return [(int(r), int(c)) for r, c in zip(*linear_sum_assignment(cost), strict=True)
            if cost[r, c] < _NONE]  # fmt: skip


def _best_overlap(box: Box, b: Box) -> tuple[int, float]:
    """The row of ``b`` (not empty) that overlaps ``box`` most, and their IoU."""
    iou = sv.box_iou_batch(box[None, :], b)[0]
    k = int(np.argmax(iou))
    return k, float(iou[k])


def _velocity(d: _Identity) -> npt.NDArray[np.float64]:
    """Pixels a second over the last ``_TRAIL_S`` (box jitter averages out over it)."""
    (t0, c0), (t1, c1) = d.trail[0], d.trail[-1]
    return (c1 - c0) / (t1 - t0) if t1 - t0 >= 0.2 else np.zeros(2)


def _touching(b: Box) -> npt.NDArray[np.bool_]:
    """Which boxes overlap which (by more than an edge; every pair at once, not itself)."""
    x = np.minimum(b[:, None, 2], b[None, :, 2]) > np.maximum(b[:, None, 0], b[None, :, 0])
    y = np.minimum(b[:, None, 3], b[None, :, 3]) > np.maximum(b[:, None, 1], b[None, :, 1])
    both = x & y
    np.fill_diagonal(both, False)
    return both


class _Looks:
    """This frame's looks, taken only for the boxes asked about, once each; a box is
    hidden by every box whose bottom is lower (nearer the camera)."""

    def __init__(self, image: Image | None, boxes: Box) -> None:
        self._image, self._b = image, boxes
        self._seen: dict[int, Look | None] = {}

    def __call__(self, k: int) -> Look | None:
        if self._image is None:
            return None
        if k not in self._seen:
            b = self._b
            nearer = [b[j] for j in range(len(b)) if j != k and b[j][3] > b[k][3]]
            self._seen[k] = look(self._image, b[k], nearer)
        return self._seen[k]

    @property
    def pictured(self) -> bool:
        return self._image is not None

    def signature(self, k: int) -> Signature | None:
        seen = self(k)
        return None if seen is None else seen.signature
