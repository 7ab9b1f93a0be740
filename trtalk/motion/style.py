"""A person's head motion style: the parameters `HeadMotion` draws its motion with, as a file.

``trtalk motion fit VIDEO -o STYLE.json`` (`trtalk.motion.fit`) fits one from a talking video of
the person; ``--pose auto --motion-style STYLE.json`` (render, stream, serve) drives the avatar's
head with it. Without a style, ``--pose auto`` uses the generic style shipped in
``trtalk/assets/motion_style.json``, itself fitted on public talking clips (see
``benchmarks/results/motion/motion_style.md``).

The parameters, per axis (yaw, pitch, roll; degrees, seconds) where a triple:

- ``rest``: the posture the head settles to, relative to the avatar photo's pose;
- ``sway`` / ``sway_tau``: amplitude and time constant of the speech-driven sway (its speed and
  spectral shape: a shorter time constant moves faster with more high-frequency power);
- ``posture``: spread of the postures taken at phrase starts and some stressed syllables;
- ``gesture``: gain of the nods, turns and tilts at stressed syllables (the fast movements);
- ``drift`` / ``drift_tau``: slow posture drift, independent of the speech;
- ``pause_sway``: sway in pauses relative to speech; ``nod_rate``: how often stressed syllables
  bring a gesture (how tightly the head couples to the speech);
- ``blink_rate_per_min``, ``blink_speech_rate_per_min``, ``blink_duration_s``: blink timing.

The file is JSON, versioned (``"format": "trtalk-motion-style", "version": 1``), at most
`MAX_BYTES`, every number finite and inside the bounds of `BOUNDS`; anything else is refused with
one line (`TrtalkError`). Written atomically (`save_style`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from trtalk.errors import TrtalkError

FORMAT = "trtalk-motion-style"
VERSION = 1
#: a style file is a few hundred bytes; anything larger is not one
MAX_BYTES = 16 * 1024
GENERIC_PATH = Path(__file__).resolve().parent.parent / "assets" / "motion_style.json"

Triple = tuple[float, float, float]
#: the fields that are (yaw, pitch, roll) triples
TRIPLES = ("rest", "sway", "sway_tau", "posture", "gesture", "drift")

#: inclusive bounds of each number (triples: of each item)
BOUNDS: dict[str, tuple[float, float]] = {
    "rest": (-10.0, 10.0),
    "sway": (0.0, 30.0),
    "sway_tau": (0.05, 20.0),
    "posture": (0.0, 30.0),
    "gesture": (0.0, 10.0),
    "drift": (0.0, 30.0),
    "drift_tau": (0.5, 60.0),
    "pause_sway": (0.0, 3.0),
    "nod_rate": (0.0, 5.0),
    "blink_rate_per_min": (0.0, 120.0),
    "blink_speech_rate_per_min": (0.0, 120.0),
    "blink_duration_s": (0.05, 1.0),
    "seconds": (0.0, 1e7),
}


@dataclass(frozen=True)
class MotionStyle:
    """How one person's head moves (module docstring). The defaults are trtalk's hand-set motion
    before styles existed: the starting point of a fit."""

    name: str = "hand-set"
    rest: Triple = (0.0, 0.0, 0.0)
    sway: Triple = (6.5, 3.8, 3.0)
    sway_tau: Triple = (1.1, 0.8, 1.4)
    posture: Triple = (8.0, 4.0, 4.0)
    gesture: Triple = (1.0, 1.0, 1.0)
    drift: Triple = (0.0, 0.0, 0.0)
    drift_tau: float = 4.0
    pause_sway: float = 0.3
    nod_rate: float = 1.0
    blink_rate_per_min: float = 17.0
    blink_speech_rate_per_min: float = 26.0
    blink_duration_s: float = 0.25
    #: seconds of video the style was fitted on (0: not fitted)
    seconds: float = 0.0
    #: where it was fitted (free text, at most 200 characters)
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        validate(self)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return {"format": FORMAT, "version": VERSION, **{k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in d.items()}}

    def with_(self, **changes: Any) -> "MotionStyle":
        return replace(self, **changes)


def _bad(where: str, why: str) -> TrtalkError:
    return TrtalkError(f"motion style {where}: {why}; fit one with `trtalk motion fit VIDEO -o STYLE.json`")


def validate(style: MotionStyle, where: str = "") -> None:
    """Raise `TrtalkError` unless every field is in bounds (finite numbers, right shapes)."""
    where = where or style.name or "(unnamed)"
    for name, (lo, hi) in BOUNDS.items():
        value = getattr(style, name)
        items = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) != 3:
            raise _bad(where, f"{name} must be 3 numbers (yaw, pitch, roll)")
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise _bad(where, f"{name} must be finite numbers in [{lo:g}, {hi:g}], got {value!r}")
    if not isinstance(style.name, str) or len(style.name) > 100:
        raise _bad(where, "name must be a string of at most 100 characters")
    if not isinstance(style.source, str) or len(style.source) > 200:
        raise _bad(where, "source must be a string of at most 200 characters")


def from_json(data: Any, where: str = "") -> MotionStyle:
    """A style from parsed JSON (untrusted: every key and value checked)."""
    if not isinstance(data, dict):
        raise _bad(where, "not a JSON object")
    if data.get("format") != FORMAT:
        raise _bad(where, f"not a motion style (format must be {FORMAT!r})")
    version = data.get("version")
    if version != VERSION:
        raise _bad(where, f"version {version!r} is not supported (this trtalk reads version {VERSION})")
    known = {f.name for f in fields(MotionStyle)} - {"extra"}
    unknown = set(data) - known - {"format", "version"}
    if unknown:
        raise _bad(where, f"unknown field {sorted(unknown)[0]!r}")
    kwargs: dict[str, Any] = {}
    for key in known & set(data):
        value = data[key]
        if key in TRIPLES:
            if not isinstance(value, list) or len(value) != 3:
                raise _bad(where, f"{key} must be a list of 3 numbers (yaw, pitch, roll)")
            value = tuple(value)
        kwargs[key] = value
    try:
        return MotionStyle(**kwargs)
    except TrtalkError as exc:
        raise _bad(where, str(exc).split(": ", 1)[-1].split("; fit one")[0]) from None
    except TypeError as exc:  # pragma: no cover - guarded by the checks above
        raise _bad(where, str(exc)) from None


def load_style(path: str | os.PathLike[str]) -> MotionStyle:
    """Read and validate a style file (one-line `TrtalkError` on a missing, large or bad file)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise _bad(str(p), f"{size} bytes is too large for a style file (at most {MAX_BYTES})")
        with open(p, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise TrtalkError(f"motion style {p}: no such file") from None
    except IsADirectoryError:
        raise TrtalkError(f"motion style {p}: is a folder, not a style file") from None
    except OSError as exc:
        raise TrtalkError(f"motion style {p}: cannot read it ({exc.strerror or exc})") from None
    return parse_style(raw, str(p))


def parse_style(raw: bytes | str, where: str = "(upload)") -> MotionStyle:
    """A style from a file's bytes (as an upload gives them)."""
    if len(raw) > MAX_BYTES:
        raise _bad(where, f"{len(raw)} bytes is too large for a style file (at most {MAX_BYTES})")
    try:
        data = json.loads(raw, parse_constant=lambda c: float("nan"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(where, f"not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    return from_json(data, where)


def dumps_style(style: MotionStyle) -> str:
    return json.dumps(style.to_json(), indent=1, allow_nan=False) + "\n"


def save_style(style: MotionStyle, path: str | os.PathLike[str]) -> Path:
    """Write ``style`` as JSON atomically (a temp file renamed over ``path``)."""
    from trtalk.fsutil import atomic_output

    validate(style)
    with atomic_output(path) as tmp:
        tmp.write_text(dumps_style(style))
    return Path(path)


@lru_cache(maxsize=1)
def generic_style() -> MotionStyle:
    """The default of ``--pose auto``: the generic style shipped with trtalk."""
    return load_style(GENERIC_PATH)


def resolve_style(path: str | os.PathLike[str] | None) -> MotionStyle:
    """``--motion-style``: the file's style, or the generic one when None."""
    return generic_style() if path is None or str(path) == "" else load_style(path)
