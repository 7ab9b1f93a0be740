"""Build the CUDA kernels of csrc/ into ``libtrtalk_kernels.so``, cached and atomically.

``python -m trtalk.kernels.build [--out DIR] [--arch 80 --arch 90] [--nvcc-direct] [--force]``

The library goes to ``~/.cache/trtalk/kernels/<key>/`` (``$TRTALK_CACHE_DIR/kernels`` if set)
where ``key = <sha256 of the sources>[:16]-cuda<nvcc release>``, so a source edit or another
CUDA toolkit gets a fresh directory and the loader (`trtalk.kernels.loader`) never picks a
stale build. A build happens in a temporary sibling directory and is renamed into place, so
concurrent builds (pytest workers, setup.py) never see half-written files.

CMake (the root CMakeLists.txt) is used when ``cmake`` is on PATH, else nvcc is driven
directly with the same flags. For setup.py use :func:`try_build`, which never raises.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trtalk.configcli import add_config_args, config_from_args, option
from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

LIB_NAME = "libtrtalk_kernels.so"
DEFAULT_ARCHS: tuple[int, ...] = (80, 86, 89, 90)
SOURCE_FILES: tuple[str, ...] = ("csrc/trtalk_kernels.h", "csrc/common.cuh", "csrc/api.cu",
                                 "csrc/modconv.cu", "csrc/epilogue.cu", "CMakeLists.txt")
CUDA_SOURCES: tuple[str, ...] = ("csrc/api.cu", "csrc/modconv.cu", "csrc/epilogue.cu")
NVCC_FLAGS: tuple[str, ...] = ("-std=c++17", "-O3", "--expt-relaxed-constexpr", "-lineinfo",
                               "-Xcompiler", "-fPIC,-fvisibility=hidden", "-shared",
                               "-cudart", "static")


def source_root() -> Path:
    """The directory holding csrc/ and CMakeLists.txt (the repository root)."""
    return Path(__file__).resolve().parents[2]


def sources_present(root: Path | None = None) -> bool:
    """Whether every source file of the library is present under ``root``."""
    root = root or source_root()
    return all((root / f).is_file() for f in SOURCE_FILES)


def source_hash(root: Path | None = None) -> str:
    """sha256 (16 hex digits) over the library's source files, names included."""
    root = root or source_root()
    h = hashlib.sha256()
    for name in SOURCE_FILES:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def find_nvcc() -> str | None:
    """Path of nvcc from $CUDA_HOME/bin, PATH or /usr/local/cuda/bin, or None."""
    for cand in (os.environ.get("CUDA_HOME") and Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc",
                 shutil.which("nvcc"), Path("/usr/local/cuda/bin/nvcc")):
        if cand and Path(cand).is_file():
            return str(cand)
    return None


def nvcc_release(nvcc: str) -> str:
    """The toolkit release of ``nvcc``, e.g. ``"13.0"``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    if not m:
        raise TrtalkError(f"cannot read the CUDA release from `{nvcc} --version`")
    return m.group(1)


def cache_root() -> Path:
    """``$TRTALK_CACHE_DIR/kernels`` or ``~/.cache/trtalk/kernels``."""
    base = os.environ.get("TRTALK_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "trtalk") / "kernels"


def cache_dir(nvcc: str | None = None, archs: tuple[int, ...] = DEFAULT_ARCHS) -> Path:
    """Where the build for the current sources, this nvcc and ``archs`` lives."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise TrtalkError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    arch_tag = "" if tuple(archs) == DEFAULT_ARCHS else "-sm" + "_".join(map(str, archs))
    return cache_root() / f"{source_hash()}-cuda{nvcc_release(nvcc)}{arch_tag}"


def _run(cmd: list[str], cwd: Path) -> None:
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise TrtalkError(f"kernel build failed ({' '.join(cmd[:2])} ...): {tail}")


def _build_nvcc(nvcc: str, root: Path, work: Path, archs: tuple[int, ...]) -> Path:
    gencode: list[str] = []
    for a in archs:  # SASS for every arch + PTX of each, so newer GPUs can JIT
        gencode += ["-gencode", f"arch=compute_{a},code=[sm_{a},compute_{a}]"]
    lib = work / LIB_NAME
    _run([nvcc, *NVCC_FLAGS, *gencode, f"-I{root / 'csrc'}",
          *[str(root / s) for s in CUDA_SOURCES], "-o", str(lib)], cwd=work)
    return lib


def _build_cmake(nvcc: str, root: Path, work: Path, archs: tuple[int, ...], jobs: int) -> Path:
    bdir = work / "cmake"
    _run(["cmake", "-S", str(root), "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_CUDA_COMPILER={nvcc}",
          f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(map(str, archs))}"], cwd=work)
    _run(["cmake", "--build", str(bdir), "-j", str(jobs)], cwd=work)
    built = bdir / "lib" / LIB_NAME
    lib = work / LIB_NAME
    shutil.copy2(built, lib)
    shutil.rmtree(bdir, ignore_errors=True)
    return lib


def build(out: str | os.PathLike | None = None, *, archs: tuple[int, ...] = DEFAULT_ARCHS,
          use_cmake: bool | None = None, force: bool = False, jobs: int | None = None) -> Path:
    """Build (or reuse) the library and return its path.

    Args:
        out: also place a copy of the library in this directory (atomically); None: cache only.
        archs: compute capabilities to compile SASS + PTX for (default 80, 86, 89, 90).
        use_cmake: True forces CMake, False forces plain nvcc, None uses CMake when on PATH.
        force: rebuild even when the cache already holds this build.
        jobs: parallel compile jobs for CMake (default: CPU count).

    Raises:
        TrtalkError: no nvcc, no sources, or the compiler failed (its output is in the message).
    """
    root = source_root()
    if not sources_present(root):
        raise TrtalkError(f"kernel sources not found under {root} (csrc/, CMakeLists.txt)")
    nvcc = find_nvcc()
    if nvcc is None:
        raise TrtalkError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    final = cache_dir(nvcc, archs)
    if force or not (final / LIB_NAME).is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            if use_cmake is None:
                use_cmake = shutil.which("cmake") is not None
            if use_cmake:
                _build_cmake(nvcc, root, work, archs, jobs or os.cpu_count() or 1)
            else:
                _build_nvcc(nvcc, root, work, archs)
            if force and final.exists():
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(work, final)  # atomic; loses the race quietly to a concurrent build
            except OSError:
                if not (final / LIB_NAME).is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("built %s", final / LIB_NAME)
    lib = final / LIB_NAME
    if out is not None:
        dest_dir = Path(out)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest_dir / f".{LIB_NAME}.{os.getpid()}"
        shutil.copy2(lib, tmp)
        os.replace(tmp, dest_dir / LIB_NAME)
        lib = dest_dir / LIB_NAME
    return lib


def try_build(out: str | os.PathLike | None = None, **kwargs) -> Path | None:
    """:func:`build` for setup.py: returns the library path, or None (logged) on any failure.

    Never raises: without nvcc, or when the compiler fails, the package still installs and
    runs on the reference (plain PyTorch) path.
    """
    try:
        return build(out, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        log.warning("trtalk CUDA kernels not built (%s); the reference path will be used", exc)
        return None


@dataclass
class BuildCommand:
    """`python -m trtalk.kernels.build`: build the CUDA kernel library, print its path."""

    out: str | None = option(None, help="also copy the library into this directory")
    arch: list[int] | None = option(None, help="compute capabilities, e.g. 80,90",
                                    default_text=",".join(map(str, DEFAULT_ARCHS)))
    nvcc_direct: bool = option(False, help="call nvcc directly, not CMake")
    force: bool = option(False, help="rebuild even if cached")


def main(argv: list[str] | None = None) -> int:
    """CLI entry: build, print the library path (flags from `BuildCommand`)."""
    p = argparse.ArgumentParser(prog="python -m trtalk.kernels.build", description=__doc__.split("\n")[0])
    add_config_args(p, BuildCommand)
    cmd = config_from_args(BuildCommand, p.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        lib = build(cmd.out, archs=tuple(cmd.arch or DEFAULT_ARCHS),
                    use_cmake=False if cmd.nvcc_direct else None, force=cmd.force)
    except TrtalkError as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(f"{lib}\n")
    return 0

if __name__ == "__main__":
    sys.exit(main())
