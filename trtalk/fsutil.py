"""Filesystem helpers: atomic output files and early writability checks.

``atomic_output`` is how every trtalk writer produces a file: the data goes to
a hidden temp file next to the target and is renamed onto it only when the
writer finished cleanly, so an exception, a crash or Ctrl-C never leaves a
truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from trtalk.errors import TrtalkError
from trtalk.signals import raise_if_interrupted

log = logging.getLogger(__name__)

__all__ = ["STALE_AFTER_S", "atomic_output", "check_free_space", "check_writable", "disk_full",
           "disk_full_error", "pid_alive", "remove_abandoned",
           "output_folder", "output_parent", "remove_stale_temps",
           "temp_path_for"]

#: A temp file whose name carries no writer pid counts as abandoned after this long.
STALE_AFTER_S = 3600.0


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """Return a fresh hidden temp path in the same directory as ``path``.

    The name is ``.<stem>.<random>-<pid>.tmp<suffix>`` (``out.mp4`` ->
    ``.out.3fa9c2d1-4242.tmp.mp4``): the real extension stays last so muxers that
    guess the format from the name still pick the right one, the leading
    dot plus ``.tmp`` make leftovers easy to recognise, and the writer's pid
    tells `remove_stale_temps` whether its writer is gone.  Nothing is created.
    """
    target = Path(path)
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}-{os.getpid()}.tmp{target.suffix}")


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def remove_stale_temps(path: str | os.PathLike[str], now: float | None = None) -> list[Path]:
    """Delete the temp files that killed writers of ``path`` left behind; return them.

    Only names of `temp_path_for`'s own pattern for this very target are considered
    (``.<stem>.<8 hex>-<pid>.tmp<suffix>``, or the older ``.<stem>.<8 hex>.tmp<suffix>``), and
    only when abandoned: the writer pid is not a live process on this machine, or (names
    without a pid) the file is older than `STALE_AFTER_S`. A run in progress is never touched.
    Errors (a folder that does not exist, a file removed meanwhile) are ignored.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(rf"\.{re.escape(target.stem)}\.[0-9a-f]{{8}}(?:-(?P<pid>\d+))?\.tmp"
                         rf"{re.escape(target.suffix)}")
    return remove_abandoned(parent, pattern, now=now)


def remove_abandoned(parent: str | os.PathLike[str], pattern: re.Pattern[str], *, dirs: bool = False,
                     now: float | None = None) -> list[Path]:
    """Delete the entries of ``parent`` whose whole name matches ``pattern`` and whose writer is
    gone: the pattern's ``pid`` group names a process that is not alive here, or (no pid in the
    name) the entry is older than `STALE_AFTER_S`. Files, or folders with ``dirs``."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m:
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir != dirs or (not dirs and not entry.is_file(follow_symlinks=False)):
                continue
            pid = m.groupdict().get("pid")
            stale = (not pid_alive(int(pid))) if pid \
                else now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            if not stale:
                continue
            if is_dir:
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except (OSError, ValueError):
            continue
    for p in removed:
        log.warning("removed %s, left by an interrupted run", p)
    return removed


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full: an OSError
    with ENOSPC / EDQUOT / EFBIG, or a library's own error with that text (safetensors, ONNX)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def disk_full_error(path: str | os.PathLike[str] | None = None) -> TrtalkError:
    """The one-line error of a full disk while writing ``path``."""
    where = f" while writing {path}" if path is not None else ""
    return TrtalkError(f"no space left on the device{where}; free some space or write elsewhere "
                       f"(nothing partial was kept)")


def check_free_space(folder: str | os.PathLike[str], need_bytes: int, what: str) -> None:
    """TrtalkError unless ``folder`` (or its nearest existing parent) has ``need_bytes`` free."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return  # cannot tell: the writer's own failure is the check
    if free < need_bytes:
        raise TrtalkError(f"{what} needs about {need_bytes / 2**30:.1f} GiB free in {p}; "
                          f"{free / 2**30:.1f} GiB are: free some space or choose another folder")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, interruptible: bool = True) -> Iterator[Path]:
    """Yield a temp path to write to; move it onto ``path`` on success.

    The temp file lives in the same directory as ``path`` (so the final
    ``os.replace`` is an atomic rename on the same filesystem) and is not
    created by this function: the caller creates it by writing.  When the
    ``with`` body finishes without an exception the temp file replaces
    ``path`` (overwriting an existing file).  On any exception, including
    ``KeyboardInterrupt``, the temp file is removed and the exception
    propagates; ``path`` is left untouched. With ``interruptible`` (the default) a body that
    finished after a SIGINT / SIGTERM whose exception a library swallowed is treated as
    interrupted too (`trtalk.signals.raise_if_interrupted`); False keeps the file (a live
    recording, which a signal ends rather than discards).

    Raises:
        TrtalkError: the parent directory does not exist or is not writable
            (checked before yielding).
        FileNotFoundError: the body finished but never created the temp file.
    """
    target = Path(path)
    check_writable(target)
    remove_stale_temps(target)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (meant for {target})")
        if interruptible:
            raise_if_interrupted()  # a SIGINT / SIGTERM whose exception a library swallowed
        os.replace(tmp, target)
        log.debug("wrote %s", target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if disk_full(exc):
            raise disk_full_error(target) from None
        raise


@contextlib.contextmanager
def output_folder(folder: str | os.PathLike[str], what: str = "output") -> Iterator[Path]:
    """Create ``folder`` and its missing parents for the block; at its end (an error, Ctrl-C,
    SIGTERM, or a run that wrote nothing) remove the folders created here that are still empty,
    innermost first. So no run leaves an empty directory it made, and an existing one is never
    touched. TrtalkError when a folder cannot be created."""
    folder = Path(folder) if str(folder) else Path(".")
    created: list[Path] = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise TrtalkError(f"cannot write the {what} into {folder}: {p} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrtalkError(f"cannot write the {what} into {folder}: cannot create it "
                          f"({exc.strerror or exc})") from None
    try:
        yield folder
    finally:
        for d in created:  # innermost first
            try:
                d.rmdir()  # only when empty
            except OSError:
                break


def output_parent(path: str | os.PathLike[str],
                  what: str = "output") -> contextlib.AbstractContextManager[Path]:
    """`output_folder` of ``path``'s parent: the folder an output file goes into."""
    target = Path(path)
    return output_folder(target.parent if str(target.parent) else Path("."), what)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise ``TrtalkError`` unless a file can be created at ``path``.

    Checks that the parent directory exists, is a directory and is writable
    by this process, and that ``path`` itself is not a directory.  Call it
    before long work starts so a typo in an output path fails in
    milliseconds rather than after minutes of rendering.  (As root the
    permission check always passes; the write itself is then the check.)
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    max_name = os.pathconf(parent, "PC_NAME_MAX") if parent.is_dir() else 255
    # the temp file written first has the longer name (`temp_path_for`; "." and "/" have no name)
    name_len = len(os.fsencode(target.name))
    extra = len(os.fsencode(temp_path_for(target).name)) - name_len if target.name else 0
    if name_len + extra > max_name:
        raise TrtalkError(f"cannot write {target.name[:40]}...: the file name is {name_len} bytes; "
                          f"at most {max_name - extra} fit here (its temporary file needs {extra} more)")
    if not parent.exists():
        raise TrtalkError(
            f"cannot write {target}: directory {parent} does not exist (create it first)"
        )
    if not parent.is_dir():
        raise TrtalkError(f"cannot write {target}: {parent} is not a directory")
    if target.is_dir():
        raise TrtalkError(f"cannot write {target}: it is a directory, give a file name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TrtalkError(
            f"cannot write {target}: no permission to create files in {parent}"
        )
