"""Find, load and check ``libtrtalk_kernels.so`` (the compiled kernels of csrc/).

Search order: ``$TRTALK_KERNELS_LIB`` (a file), the package directory (``trtalk/kernels/``, where
setup.py may place a build), then the build cache of :mod:`trtalk.kernels.build` for the current
sources (newest first). The library must report ``ABI_VERSION``; anything else is refused.

Whether the kernels can *run* is a second question (:func:`unavailable_reason`): a CUDA build of
torch, a GPU, a driver at least as new as the library's CUDA runtime and an image in the library
for the GPU's compute capability. Every failure is a :class:`TrtalkError` with the reason; the
callers then use the reference path (never a wrong number).
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from trtalk.errors import TrtalkError
from trtalk.kernels import build as _build

log = logging.getLogger(__name__)

ABI_VERSION = 1
ENV_LIB = "TRTALK_KERNELS_LIB"

_c_int, _c_ll, _c_float, _c_size, _vp = (ctypes.c_int, ctypes.c_longlong, ctypes.c_float,
                                         ctypes.c_size_t, ctypes.c_void_p)
_fp = ctypes.c_void_p  # float* as a raw address

# name -> (restype, argtypes): the whole C ABI of csrc/trtalk_kernels.h, as data.
SIGNATURES: dict[str, tuple[object, tuple[object, ...]]] = {
    "trtalk_abi_version": (_c_int, ()),
    "trtalk_cuda_runtime_version": (_c_int, ()),
    "trtalk_error_string": (ctypes.c_char_p, (_c_int,)),
    "trtalk_check_device": (_c_int, (_c_int,)),
    "trtalk_modconv_workspace_size": (_c_size, (_c_int, _c_int, _c_int, _c_int, _c_int)),
    "trtalk_modconv_prepare_weight": (_c_int, (_fp, _fp, _c_int, _c_int, _c_int, _c_int, _vp,
                                               _fp, _vp)),
    "trtalk_modconv_demod": (_c_int, (_fp, _fp, _c_int, _c_int, _c_int, _fp, _vp)),
    "trtalk_modconv_igemm": (_c_int, (_vp, _vp, _fp, _fp, _c_int, _c_int, _c_int, _c_int, _c_int,
                                      _c_int, _c_int, _vp, _vp)),
    "trtalk_modulated_conv2d": (_c_int, (_vp, _fp, _fp, _fp, _c_int, _c_int, _c_int, _c_int,
                                         _c_int, _c_int, _c_int, _c_int, _vp, _vp, _vp)),
    "trtalk_bias_act_noise": (_c_int, (_vp, _fp, _fp, _c_ll, _fp, _c_int, _c_int, _c_int, _c_int,
                                       _c_float, _c_float, _vp, _vp)),
    "trtalk_to_rgb": (_c_int, (_vp, _fp, _fp, _fp, _fp, _fp, _c_int, _c_int, _c_int, _c_int, _fp,
                               _vp)),
}
EXPORTED_SYMBOLS: tuple[str, ...] = tuple(SIGNATURES)

_cache: dict[str, object] = {}


def candidate_paths() -> list[Path]:
    """Library files to try, in order (only those that exist)."""
    paths: list[Path] = []
    env = os.environ.get(ENV_LIB)
    if env:
        paths.append(Path(env))
    paths.append(Path(__file__).resolve().parent / _build.LIB_NAME)
    root = _build.cache_root()
    if root.is_dir() and _build.sources_present():
        prefix = _build.source_hash() + "-cuda"
        builds = [d / _build.LIB_NAME for d in root.iterdir()
                  if d.name.startswith(prefix) and ".tmp-" not in d.name]
        paths.extend(sorted((p for p in builds if p.is_file()),
                            key=lambda p: p.stat().st_mtime, reverse=True))
    return [p for p in paths if p.is_file()]


def open_library(path: str | os.PathLike) -> ctypes.CDLL:
    """Load one library file, declare the C ABI on it and check its ABI version.

    Raises:
        TrtalkError: the file does not load, lacks a symbol, or has another ABI version.
    """
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise TrtalkError(f"cannot load the CUDA kernels library {path}: {exc}") from exc
    for name, (restype, argtypes) in SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise TrtalkError(f"{path} lacks {name}: rebuild with python -m trtalk.kernels.build") from exc
        fn.restype, fn.argtypes = restype, list(argtypes)
    got = lib.trtalk_abi_version()
    if got != ABI_VERSION:
        raise TrtalkError(f"{path} has kernels ABI {got}, this trtalk needs {ABI_VERSION}: "
                          "rebuild with python -m trtalk.kernels.build")
    return lib


def load_library() -> ctypes.CDLL:
    """The first loadable library of :func:`candidate_paths` (cached for the process).

    Raises:
        TrtalkError: none found or none loads (the message says how to build one).
    """
    if "lib" in _cache:
        return _cache["lib"]  # type: ignore[return-value]
    errors = []
    for path in candidate_paths():
        try:
            lib = open_library(path)
        except TrtalkError as exc:
            errors.append(str(exc))
            continue
        log.debug("loaded CUDA kernels from %s", path)
        _cache["lib"], _cache["path"] = lib, path
        return lib
    detail = "; ".join(errors) if errors else "no library found"
    raise TrtalkError(f"trtalk CUDA kernels unavailable ({detail}); build them with "
                      f"`python -m trtalk.kernels.build` or set {ENV_LIB}")


def library_path() -> Path | None:
    """Path of the loaded library (after a successful :func:`load_library`), else None."""
    return _cache.get("path")  # type: ignore[return-value]


def error_string(code: int) -> str:
    """Text of a kernel return code."""
    try:
        return load_library().trtalk_error_string(code).decode()
    except TrtalkError:
        return f"error {code}"


def unavailable_reason(device: object = None) -> str | None:
    """None if the kernels can run on ``device`` (a torch device or index; default current),
    else one line saying why not. Results are cached per device index."""
    import torch

    if not torch.cuda.is_available():
        return ("no CUDA device (torch " + torch.__version__ +
                (" is a CPU build)" if torch.version.cuda is None else " sees no GPU)"))
    index = torch.device("cuda", torch.cuda.current_device()).index if device is None else \
        (device if isinstance(device, int) else torch.device(device).index or 0)
    key = f"dev{index}"
    if key not in _cache:
        try:
            lib = load_library()
            rc = lib.trtalk_check_device(index)
            if rc:
                major, minor = torch.cuda.get_device_capability(index)
                _cache[key] = (f"kernels cannot run on cuda:{index} (sm_{major}{minor}): "
                               f"{lib.trtalk_error_string(rc).decode()} (library built with CUDA "
                               f"runtime {lib.trtalk_cuda_runtime_version()})")
            else:
                _cache[key] = None
        except TrtalkError as exc:
            _cache[key] = str(exc)
    return _cache[key]  # type: ignore[return-value]


def require(device: object = None) -> ctypes.CDLL:
    """The loaded library, checked for ``device``.

    Raises:
        TrtalkError: with :func:`unavailable_reason`'s message.
    """
    reason = unavailable_reason(device)
    if reason:
        raise TrtalkError(f"CUDA kernels unavailable: {reason}")
    return load_library()


def check(code: int, what: str) -> None:
    """Raise TrtalkError for a nonzero kernel return code."""
    if code:
        raise RuntimeError(f"{what} failed: {error_string(code)} (code {code})")
