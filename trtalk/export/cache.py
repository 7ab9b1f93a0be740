"""On-disk cache of engines (TensorRT, AOTInductor), keyed by everything an engine depends on.

It sits beside the key and sidecar format (`trtalk.export.engine_file`) in export/, below the
engine package that loads what it holds, so both the exporters and the engine use it.

Layout: ``<root>/engines/<stage>-<digest>.engine`` and its sidecar ``<same>.engine.json`` (the
key and sidecar format are `trtalk.export.engine_file`'s, shared with the exporter); AOTInductor
packages are ``<stage>-<digest>.pt2`` and ``.pt2.json``, keyed by `trtalk.export.aot.AotKey`.
``<root>`` is, in order: the ``root`` argument, ``$TRTALK_CACHE_DIR``, ``~/.cache/trtalk``.

Promise: a cached engine is used only when `check_engine` vouches for it (sidecar present, key
equal, size and sha256 equal); anything else (stale, foreign, truncated, edited) is logged,
moved aside as ``<name>.corrupt-<UTC time>`` (for inspection) and rebuilt, never loaded blindly. Builds are atomic (`write_engine`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from trtalk.errors import TrtalkError
from trtalk.fsutil import ENV_CACHE_DIR, cache_root  # noqa: F401  (the cache root, re-exported)
from trtalk.export.engine_file import (EngineKey, EngineRecord, check_engine, covering_key, read_sidecar,
                                       sidecar_path, write_engine)

log = logging.getLogger(__name__)



#: how many set-aside ``.corrupt-*`` entries a cache folder keeps (the newest; for inspection)
KEEP_CORRUPT = 3


def prune_corrupt(folder: Path, keep: int = KEEP_CORRUPT) -> list[Path]:
    """Delete all but the newest ``keep`` ``*.corrupt-*`` entries of ``folder`` (files or
    folders; an engine and its sidecar count as one); returns what was deleted."""
    groups: dict[str, list[Path]] = {}
    try:
        entries = [p for p in folder.iterdir() if ".corrupt-" in p.name]
    except OSError:
        return []
    for p in entries:  # one group per set-aside time stamp and entry name (sidecar included)
        base, _, stamp = p.name.partition(".corrupt-")
        groups.setdefault(base.removesuffix(".json") + stamp, []).append(p)

    def age(paths: list[Path]) -> float:
        try:
            return max(p.lstat().st_mtime for p in paths)
        except OSError:
            return 0.0

    ordered = sorted(groups.values(), key=age, reverse=True)
    removed = []
    for paths in ordered[keep:]:
        for p in paths:
            try:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
            except OSError:
                pass
    if removed:
        log.info("removed %d old set-aside cache entries from %s", len(removed), folder)
    return removed


class EngineCache:
    """Engines under ``<root>/engines``, looked up and built by `EngineKey`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root)
        self.dir = self.root / "engines"

    def path_for(self, stage: str, key: EngineKey) -> Path:
        return self.dir / f"{stage}-{key.digest[:24]}{key.file_suffix}"

    def lookup(self, stage: str, key: EngineKey) -> EngineRecord | None:
        """The verified cached engine, or None (an unusable one is logged and deleted)."""
        path = self.path_for(stage, key)
        if not path.exists() and not sidecar_path(path).exists():
            return None
        ok, reason, sc = check_engine(path, key)
        if ok:
            assert sc is not None
            return EngineRecord.from_sidecar(path, sc, type(key))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for p in (sidecar_path(path), path):  # kept aside for inspection, never read again
            if p.exists():
                try:
                    os.replace(p, p.with_name(f"{p.name}.corrupt-{stamp}"))
                except OSError:
                    p.unlink(missing_ok=True)
        log.warning("cached %s engine %s is unusable (%s); moved aside as %s.corrupt-%s, rebuilding",
                    stage, path.name, reason, path.name, stamp)
        prune_corrupt(self.dir)
        return None

    def covering(self, stage: str, key: EngineKey, batch: int) -> tuple[EngineRecord | None, int]:
        """A verified cached engine that serves ``key``'s graph and target for batches up to
        ``batch``: ``key`` itself when cached, else the same key but for its batch profile
        (``max_batch`` >= ``batch``, any ``opt_batch``), the smallest such profile first; with its
        ``max_batch``. None and the largest ``max_batch`` of the same graph and target that falls
        short (0: none) when there is none, for the log line of the build that follows.

        The sidecars are not trusted: an entry counts only under the file name its own key gives
        (`path_for`) and after `lookup` checks its size and sha256 (an unusable one is set aside)."""
        found: list[tuple[int, EngineKey]] = []
        try:
            names = sorted(p for p in self.dir.glob(f"{stage}-*{key.file_suffix}") if p.is_file())
        except OSError:
            names = []
        for path in names:
            sc = read_sidecar(path)
            other = covering_key(sc.get("key") if sc else None, key, 1)  # any profile of this target
            if other is not None and self.path_for(stage, other) == path:
                found.append((int(other.max_batch), other))
        largest = 0
        for top, other in sorted(found, key=lambda t: (t[1] != key, t[0])):
            if top < batch:
                largest = max(largest, top)
                continue
            rec = self.lookup(stage, other)
            if rec is not None:
                return rec, top
        return None, largest

    def get_or_build(self, stage: str, key: EngineKey, build: Callable[[Path], dict]) -> EngineRecord:
        """The cached engine for ``key``, building (atomically) when absent or unusable."""
        rec = self.lookup(stage, key)
        if rec is not None:
            log.info("engine cache hit: %s", rec.path)
            return rec
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrtalkError(f"cannot create engine cache {self.dir}: {exc.strerror or exc}; "
                              f"set {ENV_CACHE_DIR} to a writable folder") from None
        log.info("building %s engine into cache %s", stage, self.dir)
        return write_engine(self.path_for(stage, key), key, build)
