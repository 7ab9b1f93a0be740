"""Every model family trtalk can run: the built-ins and the ``trtalk.families`` entry points.

A third-party package registers a family with an entry point in that group whose object is a
`trtalk.families.spec.FamilySpec` (or a callable returning one)::

    [project.entry-points."trtalk.families"]
    tiny = "trtalk_tiny:SPEC"

Everything that needs to know about a family asks here: by name (`get`), by a model or config
object (`spec_of`), by a checkpoint (`detect`: the families' ``claims``), or for all of them
(`all_specs`). A plugin that fails to load, has a name that is taken, or is not a spec is left
out with a warning (`problems` lists why), so one broken package never stops trtalk.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtalk.errors import TrtalkError
from trtalk.families import pcavs, pdfgc, warp
from trtalk.families.spec import FamilySpec
from trtalk.models.weights import files_hash

log = logging.getLogger(__name__)

#: The entry-point group third-party families register in.
GROUP = "trtalk.families"
BUILTIN: tuple[FamilySpec, ...] = (pcavs.SPEC, warp.SPEC, pdfgc.SPEC)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, FamilySpec], tuple[str, ...]]:
    from importlib.metadata import entry_points

    specs = {s.name: s for s in BUILTIN}
    problems: list[str] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        where = f"{ep.value}" + (f" ({ep.dist.name} {ep.dist.version})" if getattr(ep, "dist", None) else "")
        try:
            obj = ep.load()
            spec = obj() if callable(obj) and not isinstance(obj, FamilySpec) else obj
        except Exception as exc:  # a plugin's own bug: reported, never fatal
            problems.append(f"{ep.name}: cannot load {ep.value}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(spec, FamilySpec):
            problems.append(f"{ep.name}: {ep.value} is not a FamilySpec")
            continue
        if spec.name in specs:
            problems.append(f"{ep.name}: the family name {spec.name!r} is taken ({specs[spec.name].origin})")
            continue
        specs[spec.name] = replace(spec, origin=f"plugin {where}")
    for p in problems:
        log.warning("model family plugin left out: %s", p)
    return specs, tuple(problems)


def refresh() -> None:
    """Forget the families found so far (after installing a plugin in this process)."""
    _load.cache_clear()


def all_specs() -> dict[str, FamilySpec]:
    """Every family by name: the built-ins first, then the plugins in name order."""
    return dict(_load()[0])


def names() -> tuple[str, ...]:
    return tuple(_load()[0])


def problems() -> tuple[str, ...]:
    """Why plugins were left out (one line each)."""
    return _load()[1]


def get(name: str) -> FamilySpec:
    """The family ``name``; TrtalkError naming the choices for an unknown one."""
    specs = _load()[0]
    if name not in specs:
        raise TrtalkError(f"unknown model family {name!r}; choose one of {', '.join(specs)}")
    return specs[name]


def spec_of(obj: object) -> FamilySpec:
    """The family whose model or config ``obj`` is (ValueError for anything else)."""
    for spec in _load()[0].values():
        if spec.owns(obj):
            return spec
    raise ValueError(f"{type(obj).__name__} is no model family's model or config")


def with_stages(spec: FamilySpec) -> FamilySpec:
    """``spec``, or TrtalkError when it has no networks to export or run on a backend."""
    if not spec.stages or not spec.capabilities.exportable:
        raise TrtalkError(f"the {spec.title} ({spec.name}) has no exportable networks; "
                          f"choose one of {', '.join(s.name for s in _load()[0].values() if s.stages)}")
    return spec


def detect(path: str | os.PathLike, fallback: str | None = None) -> str:
    """The family whose checkpoint ``path`` is (every family's ``claims``). TrtalkError when a
    folder holds several families' files; for a path no family claims, ``fallback`` when given
    (that family's loader then says what is wrong), else TrtalkError."""
    p = Path(path)
    found = [s for s in _load()[0].values() if s.claims is not None and s.claims(p)]
    if len(found) > 1:
        raise TrtalkError(f"checkpoint folder {p} mixes {' and '.join(_files_of(s, p) for s in found)} "
                          f"files; keep each family in its own folder")
    if found:
        return found[0].name
    if fallback is not None:
        return fallback
    if p.is_dir():
        raise TrtalkError(f"checkpoint folder {p} holds neither "
                          + " nor ".join(f"{s.title} ({', '.join(f.name for f in s.checkpoint_files(p))})"
                                         for s in _load()[0].values() if s.checkpoint_files is not None)
                          + " files")
    if not p.exists():
        raise TrtalkError(f"checkpoint not found: {p} (give the official checkpoint folder "
                          f"or a .safetensors file from `trtalk convert`)")
    raise TrtalkError(f"{p} is not a trtalk checkpoint of any family; make one with `trtalk convert`")


def _files_of(spec: FamilySpec, folder: Path) -> str:
    files = [f.name for f in (spec.checkpoint_files(folder) if spec.checkpoint_files else []) if f.is_file()]
    return f"{spec.title} ({files[0]})" if files else spec.title


def load(name: str, path: str | os.PathLike, config: Any = None) -> Any:
    """Family ``name``'s model from checkpoint ``path`` (eval mode). A path that another family
    claims (and ``name``'s does not) is named as that family's."""
    spec = get(name)
    if spec.load is None:
        raise TrtalkError(f"the {spec.title} has no checkpoint; drop --checkpoint")
    p = Path(path)
    if spec.claims is not None and not spec.claims(p):
        other = detect(p, fallback="")
        if other and other != name:
            what = "checkpoint folder" if p.is_dir() else "file"
            raise TrtalkError(f"{p} is a {get(other).title} {what}, not {spec.title}; use --model "
                              f"{other} (or leave --model out)")
    return spec.load(p, config)


def convert(src: str | os.PathLike, out: str | os.PathLike, config: Any = None) -> Path:
    """``trtalk convert``: a checkpoint of any family (`detect`) as one safetensors file."""
    spec = get(detect(src))
    if spec.convert is None:
        raise TrtalkError(f"the {spec.title} has no checkpoint format to convert to")
    return spec.convert(Path(src), Path(out), config)


def checkpoint_hash(path: str | os.PathLike) -> str:
    """SHA-256 over a checkpoint's file(s) in a stable order (manifests and caches): a folder's
    are those its family lists."""
    p = Path(path)
    if p.is_dir():
        spec = get(detect(p))
        if spec.checkpoint_files is None:
            raise TrtalkError(f"the {spec.title} has no checkpoint files")
        return files_hash(spec.checkpoint_files(p))
    return files_hash([p])
