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
`claims` recognises a PC-AVS checkpoint (the folder's file names, the file's metadata format);
`trtalk.families.registry` asks every family's and names a folder that mixes families.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from trtalk import __version__
from trtalk.errors import TrtalkError
from trtalk.families.pcavs.model import NETWORKS, PCAVS, ConfigError, PCAVSConfig
from trtalk.models.weights import check_keys, safetensors_format, torch_load, trtalk_file

log = logging.getLogger(__name__)

OFFICIAL_FILES = {name: f"latest_net_{name}.pth" for name in NETWORKS}
FORMAT = "trtalk.pcavs"
FORMAT_VERSION = "1"
ARCHITECTURE = "PC-AVS: netG modulate, netV resnext, netE fan, netA_sync ressesync"


def check_state_dict(state: dict, module: torch.nn.Module, source: str, net: str) -> dict:
    """`check_keys` for PC-AVS's ``net{net}`` (no skips: every key of the file is loaded)."""
    return check_keys(state, module, source, f"PC-AVS net{net}")


def _load_folder(folder: Path, config: PCAVSConfig) -> PCAVS:
    paths = {n: folder / f for n, f in OFFICIAL_FILES.items()}
    absent = [p.name for p in paths.values() if not p.is_file()]
    if absent:
        raise TrtalkError(f"checkpoint folder {folder} has no {absent[0]} "
                          f"(expected {', '.join(OFFICIAL_FILES.values())})")
    model = PCAVS(config)
    for name, path in paths.items():
        net = model.network(name)
        net.load_state_dict(check_state_dict(torch_load(path), net, str(path), name))
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
    """Convert an official PC-AVS folder (or a trtalk file) to one safetensors file, with the
    family and ``config`` (default as in `load_pcavs`) in its metadata. (`trtalk convert` takes
    any family's: `trtalk.families.registry.convert`.)"""
    from safetensors.torch import save_file

    from trtalk.fsutil import atomic_output, check_writable

    out = Path(out)
    check_writable(out)
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


def claims(path: Path) -> bool:
    """Whether ``path`` is a PC-AVS checkpoint: a folder with any official file name, or a
    trtalk PC-AVS safetensors file."""
    p = Path(path)
    if p.is_dir():
        return any((p / f).is_file() for f in OFFICIAL_FILES.values())
    return p.is_file() and safetensors_format(p) == FORMAT


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of an official folder that its hash covers."""
    return [Path(folder) / f for f in OFFICIAL_FILES.values()]
