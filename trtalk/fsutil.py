"""Filesystem helpers: atomic output files and early writability checks.

``atomic_output`` is how every trtalk writer produces a file: the data goes to
a hidden temp file next to the target and is renamed onto it only when the
writer finished cleanly, so an exception, a crash or Ctrl-C never leaves a
truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

__all__ = ["atomic_output", "check_writable", "temp_path_for"]


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """Return a fresh hidden temp path in the same directory as ``path``.

    The name is ``.<stem>.<random>.tmp<suffix>`` (``out.mp4`` ->
    ``.out.3fa9c2d1.tmp.mp4``): the real extension stays last so muxers that
    guess the format from the name still pick the right one, and the leading
    dot plus ``.tmp`` make leftovers easy to recognise.  Nothing is created.
    """
    target = Path(path)
    return target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write to; move it onto ``path`` on success.

    The temp file lives in the same directory as ``path`` (so the final
    ``os.replace`` is an atomic rename on the same filesystem) and is not
    created by this function: the caller creates it by writing.  When the
    ``with`` body finishes without an exception the temp file replaces
    ``path`` (overwriting an existing file).  On any exception, including
    ``KeyboardInterrupt``, the temp file is removed and the exception
    propagates; ``path`` is left untouched.

    Raises:
        TrtalkError: the parent directory does not exist or is not writable
            (checked before yielding).
        FileNotFoundError: the body finished but never created the temp file.
    """
    target = Path(path)
    check_writable(target)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (meant for {target})")
        os.replace(tmp, target)
        log.debug("wrote %s", target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
