"""Reading checkpoints of any family: state_dicts checked key by key against a network, trtalk
safetensors files by their metadata format, plain ``torch.load`` with ``weights_only``, and the
hash of a checkpoint's files (manifests and caches)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

_BN_COUNTER = "num_batches_tracked"


def _fmt_shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape) or "scalar"


def _never(key: str) -> bool:
    return False


def check_keys(state: object, module: torch.nn.Module, source: str, network: str, *,
               skip: Callable[[str], bool] = _never, optional: Callable[[str], bool] = _never) -> dict:
    """Validate a state_dict ``state`` read from ``source`` against ``module``'s keys and shapes;
    return the dict to load. ``network`` names the network in messages ("PC-AVS netE", "PD-FGC
    motion"); ``skip(key)``: file keys that are dropped unread (a loader's official skips);
    ``optional(key)``: network keys the file may lack (left at init, logged). Tolerated: a uniform
    ``module.`` prefix and absent BatchNorm ``num_batches_tracked`` counters. Any other mismatch
    raises TrtalkError naming ``source`` and the first missing, unexpected or mis-shaped key, or
    the first tensor holding NaN or Inf."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrtalkError(f"{source} is not a {network} state_dict (expected a dict of tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = module.state_dict()
    kept = {k: v for k, v in state.items() if not skip(k)}
    missing = [k for k in expected if k not in kept and not k.endswith(_BN_COUNTER) and not optional(k)]
    unexpected = [k for k in kept if k not in expected]
    for keys, what in ((missing, "missing"), (unexpected, "unexpected")):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise TrtalkError(f"{source} does not match the {network} network: {what} key '{keys[0]}'{more}")
    for k, v in kept.items():
        if v.shape != expected[k].shape:
            raise TrtalkError(f"{source}: key '{k}' has shape {_fmt_shape(v.shape)}, the {network} "
                              f"network expects {_fmt_shape(expected[k].shape)}")
    for k, v in kept.items():  # a damaged file can hold NaN/Inf: black frames, no error
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise TrtalkError(f"{source}: tensor '{k}' holds NaN or Inf values; the checkpoint is "
                              f"damaged (download or convert it again)")
    absent = [k for k in expected if k not in kept and optional(k)]
    if absent:
        log.info("%s lacks %d unused key(s) of the %s network (e.g. %s); left at init", source,
                 len(absent), network, absent[0])
    out = dict(kept)
    for k, v in expected.items():
        out.setdefault(k, v)  # BN counters and optional keys
    return out


@contextlib.contextmanager
def trtalk_file(path: Path, fmt: str, family: str, other: dict[str, tuple[str, str]]) -> Iterator[tuple[Any, dict]]:
    """``with trtalk_file(...) as (f, meta)``: a trtalk safetensors file of format ``fmt`` open
    for reading, and its metadata. TrtalkError when it is another family's file (``other``: format
    -> (family name, ``--model`` value)), not a trtalk ``family`` file, or unreadable (anything the
    block raises but a TrtalkError: a truncated file, random bytes)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            got = meta.get("format")
            if got in other:
                name, model = other[got]
                raise TrtalkError(f"{path} is a {name} file, not {family}; use --model {model} "
                                  f"(or leave --model out)")
            if got != fmt:
                raise TrtalkError(f"{path} is not a trtalk {family} file (metadata format is "
                                  f"{got!r:.60}); make one with `trtalk convert`")
            yield f, meta
    except TrtalkError:
        raise
    except Exception as exc:
        raise TrtalkError(f"cannot read checkpoint {path}: truncated or not a safetensors file "
                          f"({type(exc).__name__})") from None


def short_reason(exc: BaseException, limit: int = 100) -> str:
    """The first line of ``exc``'s message, ANSI codes stripped, cut at a word (never mid-word)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    line = " ".join(text[0].split()) if text else ""
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + " ..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def torch_load(path: Path) -> dict:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            # torch warns about legacy pickle protocols and weights_only defaults; the message
            # below says all a user needs.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrtalkError(f"refused {path}: it holds pickled Python objects, not only tensors "
                          f"(trtalk loads checkpoints with weights_only=True and never runs code "
                          f"from them); give a plain state_dict such as the official "
                          f"latest_net_*.pth") from None
    except Exception as exc:  # truncated zip, random bytes ...
        raise TrtalkError(f"cannot read checkpoint {path}: truncated, corrupt or not a plain "
                          f"state_dict ({short_reason(exc)})") from None


def safetensors_format(path: str | os.PathLike) -> str | None:
    """The ``format`` of a safetensors file's metadata (``trtalk.pcavs``, ...), None when the file
    is not a readable safetensors file or has none."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:
        return None


def files_hash(files: Sequence[str | os.PathLike]) -> str:
    """SHA-256 over ``files`` (names and bytes), in the given order (for manifests and caches)."""
    h = hashlib.sha256()
    for f in map(Path, files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
