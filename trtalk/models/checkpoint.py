"""Reading PC-AVS checkpoints: the official folder of .pth files or one trtalk safetensors file.

Official layout (``checkpoints/demo/`` of the published demo.zip): ``latest_net_G.pth``,
``latest_net_V.pth``, ``latest_net_E.pth``, ``latest_net_A_sync.pth``, each a plain state_dict.
They are read with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects) and
checked key by key and shape by shape before loading; any mismatch is a `TrtalkError` that names
the file and the key. Two tolerances, both documented: a uniform ``module.`` prefix (DataParallel
saves) is stripped, and missing BatchNorm ``num_batches_tracked`` counters (older PyTorch) are
filled in, since inference never reads them.

``convert`` writes one safetensors file: tensors under ``G.``, ``V.``, ``E.``, ``A_sync.``
prefixes, and a metadata record (format, family, architecture, options as JSON, source, version).
It converts PD-FGC folders too (`trtalk.models.pdfgc`); `detect_family` tells the two apart by
the folder's file names or the file's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from trtalk import __version__
from trtalk.errors import TrtalkError
from trtalk.models.pcavs import NETWORKS, PCAVS, ConfigError, PCAVSConfig

log = logging.getLogger(__name__)

OFFICIAL_FILES = {name: f"latest_net_{name}.pth" for name in NETWORKS}
FORMAT = "trtalk.pcavs"
FORMAT_VERSION = "1"
ARCHITECTURE = "PC-AVS: netG modulate, netV resnext, netE fan, netA_sync ressesync"
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


def check_state_dict(state: dict, module: torch.nn.Module, source: str, net: str) -> dict:
    """`check_keys` for PC-AVS's ``net{net}`` (no skips: every key of the file is loaded)."""
    return check_keys(state, module, source, f"PC-AVS net{net}")


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


def _short_reason(exc: BaseException, limit: int = 100) -> str:
    """The first line of ``exc``'s message, ANSI codes stripped, cut at a word (never mid-word)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    line = " ".join(text[0].split()) if text else ""
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:.") + " ..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _torch_load(path: Path) -> dict:
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
                          f"state_dict ({_short_reason(exc)})") from None


#: The model families a checkpoint can hold.
CHECKPOINT_FAMILIES = ("pcavs", "pdfgc")


def detect_family(path: str | os.PathLike, fallback: str | None = None) -> str:
    """"pcavs" or "pdfgc" for a checkpoint folder (by its official file names) or a trtalk
    safetensors file (by its metadata). TrtalkError for a folder holding both families' files;
    for a missing path, a folder with neither family's files or a file that is not a trtalk
    checkpoint, ``fallback`` when given (the family's own loader then says what is wrong), else
    TrtalkError."""
    try:
        return _detect_family(Path(path))
    except _NotDetected as exc:
        if fallback is not None:
            return fallback
        raise TrtalkError(str(exc)) from None


class _NotDetected(Exception):
    pass


def _detect_family(p: Path) -> str:
    from trtalk.models import pdfgc

    if p.is_dir():
        has_pcavs = [f for f in OFFICIAL_FILES.values() if (p / f).is_file()]
        has_pdfgc = [f for f in pdfgc.OFFICIAL_FILES.values() if (p / f).is_file()]
        if has_pcavs and has_pdfgc:
            raise TrtalkError(f"checkpoint folder {p} mixes PC-AVS ({has_pcavs[0]}) and PD-FGC "
                              f"({has_pdfgc[0]}) files; keep each family in its own folder")
        if has_pdfgc:
            return "pdfgc"
        if has_pcavs:
            return "pcavs"
        raise _NotDetected(f"checkpoint folder {p} holds neither PC-AVS ({', '.join(OFFICIAL_FILES.values())}) "
                          f"nor PD-FGC ({', '.join(pdfgc.OFFICIAL_FILES.values())}) files")
    if not p.is_file():
        raise _NotDetected(f"checkpoint not found: {p} (give the official checkpoint folder "
                           f"or a .safetensors file from `trtalk convert`)")
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise _NotDetected(f"cannot read checkpoint {p}: truncated or not a safetensors file "
                           f"({type(exc).__name__})") from None
    fmt = meta.get("format")
    if fmt == FORMAT:
        return "pcavs"
    if fmt == pdfgc.FORMAT:
        return "pdfgc"
    raise _NotDetected(f"{p} is not a trtalk checkpoint (metadata format is {fmt!r:.60}); make one "
                       f"with `trtalk convert`")


def _load_folder(folder: Path, config: PCAVSConfig) -> PCAVS:
    paths = {n: folder / f for n, f in OFFICIAL_FILES.items()}
    absent = [p.name for p in paths.values() if not p.is_file()]
    if absent:
        from trtalk.models.pdfgc import is_pdfgc_folder

        if is_pdfgc_folder(folder):
            raise TrtalkError(f"{folder} is a PD-FGC checkpoint folder, not PC-AVS; use --model pdfgc "
                              f"(or leave --model out)")
        raise TrtalkError(f"checkpoint folder {folder} has no {absent[0]} "
                          f"(expected {', '.join(OFFICIAL_FILES.values())})")
    model = PCAVS(config)
    for name, path in paths.items():
        net = model.network(name)
        net.load_state_dict(check_state_dict(_torch_load(path), net, str(path), name))
    return model


def config_from_metadata(meta: dict, source: str | os.PathLike) -> PCAVSConfig:
    """The `PCAVSConfig` recorded in a trtalk safetensors file's metadata (untrusted input).

    Validated against the schema before anything is allocated (`PCAVSConfig.from_dict`: known
    keys, types, bounded sizes, the model size it implies); every problem is a one-line
    TrtalkError, and unknown keys or a newer format version say which trtalk made the file."""
    made_by = meta.get("trtalk_version") or "an unknown version"
    newer = f"made by trtalk {made_by}, this is trtalk {__version__}: upgrade trtalk to read it"
    version = meta.get("format_version")
    if version is not None and version != FORMAT_VERSION:
        if version.isdigit() and int(version) > int(FORMAT_VERSION):
            raise TrtalkError(f"{source}: format version {version:.20} is newer than {FORMAT_VERSION} ({newer})")
        raise TrtalkError(f"{source}: unknown format version {version!r:.40}; re-make it with `trtalk convert`")
    if "config" not in meta:
        raise TrtalkError(f"{source} has no 'config' metadata; re-make it with `trtalk convert`")
    try:
        return PCAVSConfig.from_json(meta["config"])
    except ConfigError as exc:
        if getattr(exc, "unknown", None):
            raise TrtalkError(f"{source}: {exc} ({newer}, or re-make it with `trtalk convert`)") from None
        raise TrtalkError(f"{source}: bad metadata: {exc}; re-make it with `trtalk convert`") from None


def _load_safetensors(path: Path, config: PCAVSConfig | None) -> PCAVS:
    with trtalk_file(path, FORMAT, "PC-AVS", {"trtalk.pdfgc": ("PD-FGC", "pdfgc")}) as (f, meta):
        # The config (and the size it implies) is checked before any tensor is read.
        if config is None:
            config = config_from_metadata(meta, path)
        model = PCAVS(config)
        expected = {f"{name}.{k}": v for name in NETWORKS
                    for k, v in model.network(name).state_dict().items()}
        tensors = {}
        for k in f.keys():
            want = expected.get(k)
            if want is not None:
                shape = tuple(f.get_slice(k).get_shape())
                if shape != tuple(want.shape):
                    raise TrtalkError(f"{path}: key '{k}' has shape {_fmt_shape(shape)}, "
                                      f"the model expects {_fmt_shape(want.shape)}")
                tensors[k] = f.get_tensor(k)
            elif k.split(".", 1)[0] in NETWORKS:
                tensors[k] = torch.empty(0)  # reported as unexpected below, never read
            else:
                raise TrtalkError(f"{path}: unexpected key '{k}' outside the G/V/E/A_sync groups")
    for name in NETWORKS:
        prefix = f"{name}."
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        net = model.network(name)
        net.load_state_dict(check_state_dict(part, net, f"{path} [{name}]", name))
    return model


def load_pcavs(path: str | os.PathLike, config: PCAVSConfig | None = None,
               device: str | torch.device = "cpu") -> PCAVS:
    """Load an official checkpoint folder or a trtalk .safetensors file, in eval mode.

    ``config`` defaults to the official demo options for a folder and to the file's own
    metadata for safetensors.
    """
    p = Path(path)
    if p.is_dir():
        model = _load_folder(p, config or PCAVSConfig())
    elif p.is_file():
        model = _load_safetensors(p, config)
    else:
        raise TrtalkError(f"checkpoint not found: {p} (give the official checkpoint folder "
                          f"or a .safetensors file from `trtalk convert`)")
    log.info("loaded PC-AVS checkpoint %s", p)
    return model.to(device).eval()


def save_official_folder(model: PCAVS, folder: str | os.PathLike) -> Path:
    """Write ``model`` in the official layout (four latest_net_*.pth state_dicts)."""
    from trtalk.fsutil import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, fname in OFFICIAL_FILES.items():
        with atomic_output(folder / fname) as tmp:
            torch.save(model.network(name).state_dict(), tmp)
    return folder


def convert(src: str | os.PathLike, out: str | os.PathLike, config: PCAVSConfig | None = None) -> Path:
    """Convert an official checkpoint folder (or a trtalk file) of either family to one
    safetensors file; the family (`detect_family`) is recorded in the metadata.

    ``config`` (PC-AVS) is recorded in the file's metadata; it defaults as in `load_pcavs`.
    """
    from safetensors.torch import save_file

    from trtalk.fsutil import atomic_output, check_writable

    out = Path(out)
    check_writable(out)
    if detect_family(src, fallback="pcavs") == "pdfgc":
        from trtalk.models.pdfgc import load_pdfgc, save_pdfgc_safetensors

        return save_pdfgc_safetensors(load_pdfgc(src), out, source=Path(src).name)
    model = load_pcavs(src, config)
    tensors = {f"{name}.{k}": v.detach().contiguous().clone()
               for name in NETWORKS for k, v in model.network(name).state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": "pcavs",
            "architecture": ARCHITECTURE,
            "config": model.config.to_json(), "source": Path(src).name,
            "trtalk_version": __version__}
    with atomic_output(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def checkpoint_hash(path: str | os.PathLike) -> str:
    """SHA-256 over the checkpoint's file(s), in a stable order (for manifests and caches)."""
    p = Path(path)
    if p.is_dir():
        from trtalk.models import pdfgc

        names = pdfgc.OFFICIAL_FILES if pdfgc.is_pdfgc_folder(p) else OFFICIAL_FILES
        files = [p / f for f in names.values()]
    else:
        files = [p]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
