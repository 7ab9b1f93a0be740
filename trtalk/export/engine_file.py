"""The TensorRT engine file format: the key an engine is built for and its JSON sidecar.

Shared by the exporter, which builds engines (`trtalk.export.tensorrt`), and the engine package,
which caches (`trtalk.export.cache`) and loads them (`trtalk.engine.tensorrt_backend`).

The key (`EngineKey`) is the graph's sha256, the precision, the TensorRT flavour and version,
the target compute capability, the plugin version and the batch profile; its ``digest`` is the
sha256 of its canonical JSON. The sidecar ``<engine>.json`` holds the key, the engine's sha256
and size, its I/O (checked on the parsed network at build time: TensorRT-RTX cannot deserialise
an engine, nor even report its validity, without a GPU) and the build time.

Promises:
- an engine is usable only when its sidecar exists, the sidecar's key equals the wanted key, and
  the file's size and sha256 equal the sidecar's (`check_engine`); a user-named engine is also
  refused when built for another TensorRT version or GPU (`check_engine_target`);
- writes are atomic (temp file + rename, engine first, sidecar last): a failed or interrupted
  build leaves no engine under a real name that a sidecar vouches for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from trtalk.errors import TrtalkError
from trtalk.fsutil import atomic_output

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "trtalk.engine"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on; two engines are interchangeable iff keys match."""

    graph_sha256: str
    precision: str  # "fp16" | "fp32"
    flavour: str  # "tensorrt-rtx" | "tensorrt"
    trt_version: str
    compute_capability: str  # "sm89", ... ("current:sm90" when built for the local GPU)
    max_batch: int
    opt_batch: int
    plugin_version: str = "none"

    #: Name suffix of the cached file (a key subclass for another engine kind sets its own, e.g.
    #: `trtalk.export.aot.AotKey`; a class attribute, so not part of the key or its digest).
    file_suffix: ClassVar[str] = ".engine"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def describe_difference(self, other: dict) -> str:
        """A short 'field: theirs != ours' list (for log lines and errors)."""
        diffs = [f"{k} {other.get(k)!r} != {v!r}" for k, v in self.to_dict().items()
                 if other.get(k) != v]
        return ", ".join(diffs) or "none"


@dataclass
class EngineRecord:
    """A verified engine on disk and its sidecar contents."""

    path: Path
    key: EngineKey
    sha256: str
    bytes: int
    io: list[dict] = field(default_factory=list)
    build_seconds: float = 0.0

    @classmethod
    def from_sidecar(cls, path: str | os.PathLike, sc: dict,
                     key_type: type[EngineKey] = EngineKey) -> EngineRecord:
        """The record of the engine at ``path`` from its (already checked) sidecar dict."""
        return cls(Path(path), key_type(**sc["key"]), sc["sha256"], sc["bytes"], sc.get("io", []),
                   sc.get("build_seconds", 0.0))

    def to_manifest(self, relative_to: Path | None = None) -> dict:
        p = self.path.relative_to(relative_to) if relative_to else self.path
        return {"file": str(p), "sha256": self.sha256, "bytes": self.bytes, "key": self.key.to_dict(),
                "io": self.io, "build_seconds": round(self.build_seconds, 3)}


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(engine_path: str | os.PathLike) -> dict | None:
    """The sidecar dict of ``engine_path``, or None when absent or unreadable."""
    sc = sidecar_path(engine_path)
    try:
        d = json.loads(sc.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        return None
    return d


def covering_key(raw: object, key: EngineKey, batch: int) -> EngineKey | None:
    """The key ``raw`` (a sidecar's ``key`` dict) when it is ``key`` but for its batch profile
    and that profile covers batches up to ``batch`` (``max_batch`` >= ``batch``); else None."""
    if not isinstance(raw, dict):
        return None
    same = {k: v for k, v in key.to_dict().items() if k not in ("max_batch", "opt_batch")}
    if {k: raw.get(k) for k in same} != same or set(raw) != set(key.to_dict()):
        return None
    try:
        other = type(key)(**raw)
        return other if int(other.max_batch) >= batch else None
    except (TypeError, ValueError):
        return None


def check_engine(engine_path: str | os.PathLike, key: EngineKey | None = None) -> tuple[bool, str, dict | None]:
    """(ok, reason, sidecar): is ``engine_path`` a complete engine made for ``key``?

    Checks, cheapest first: sidecar present and of this format, key equal (when given), file
    size, then sha256. Reads the whole file once for the hash.
    """
    p = Path(engine_path)
    if not p.is_file():
        return False, "no engine file", None
    sc = read_sidecar(p)
    if sc is None:
        return False, "no readable sidecar (interrupted build or foreign file)", None
    if sc.get("version") != SIDECAR_VERSION:
        return False, f"sidecar version {sc.get('version')} != {SIDECAR_VERSION}", sc
    if key is not None and sc.get("key") != key.to_dict():
        return False, f"built for another target ({key.describe_difference(sc.get('key') or {})})", sc
    size = p.stat().st_size
    if size != sc.get("bytes"):
        return False, f"size {size} != recorded {sc.get('bytes')} (truncated or replaced)", sc
    if _sha256(p) != sc.get("sha256"):
        return False, "sha256 differs from the recorded one (corrupt or replaced)", sc
    return True, "ok", sc


def write_engine(engine_path: str | os.PathLike, key: EngineKey,
                 build: Callable[[Path], dict]) -> EngineRecord:
    """Build an engine into ``engine_path`` atomically, then write its sidecar.

    ``build(tmp_path)`` writes the serialized engine to ``tmp_path`` and returns extra sidecar
    fields (``io``: the network's I/O list). Any exception leaves neither file behind (an old
    sidecar is removed first, so an old engine is never vouched for by a half-updated pair).
    """
    path = Path(engine_path)
    sc_path = sidecar_path(path)
    sc_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with atomic_output(path) as tmp:
        extra = build(tmp)
    seconds = time.perf_counter() - t0
    sc = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "key": key.to_dict(),
          "sha256": _sha256(path), "bytes": path.stat().st_size, "build_seconds": round(seconds, 3),
          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    sc.update(extra or {})
    with atomic_output(sc_path) as tmp:
        tmp.write_text(json.dumps(sc, indent=2) + "\n")
    return EngineRecord.from_sidecar(path, sc, type(key))


def verify_user_engine(engine_path: str | os.PathLike, key: EngineKey | None = None) -> EngineRecord:
    """An engine file the user named directly: verify or raise a one-line TrtalkError (no rebuild)."""
    ok, reason, sc = check_engine(engine_path, key)
    if not ok:
        raise TrtalkError(f"engine {engine_path} cannot be used: {reason}; rebuild it with "
                          f"`trtalk export --target tensorrt-rtx` (or let the cache build one)")
    assert sc is not None
    return EngineRecord.from_sidecar(engine_path, sc)


def local_compute_capability() -> str | None:
    """``smXY`` of CUDA device 0, or None without one (torch answers; no CUDA import here)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm{major}{minor}"
    except Exception:  # noqa: BLE001 - no usable CUDA is the answer
        pass
    return None


def check_engine_target(key: dict, installed_version: str, local_cc: str | None) -> None:
    """Refuse (TrtalkError) an engine whose key names another TensorRT version or GPU.

    For engines a user passes directly (no expected key to compare with): the sidecar's
    ``trt_version`` must equal the installed one and its compute capability must be the local
    GPU's (``smXY`` or ``current:smXY``).
    """
    if key.get("trt_version") != installed_version:
        raise TrtalkError(f"engine built with {key.get('flavour')} {key.get('trt_version')}, this "
                          f"machine has {installed_version}; rebuild it (trtalk export --target ...)")
    cc = str(key.get("compute_capability", "")).split(":")[-1]
    if local_cc is not None and cc != local_cc:
        raise TrtalkError(f"engine built for {cc}, this GPU is {local_cc}; rebuild it with "
                          f"--compute-capability {local_cc} (or on this machine)")
