"""Files: atomic writes with normal permissions, and SHA-256 checksums."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ..errors import PercepkitError, WriteError

_DIGESTS: dict[tuple[str, float, int], str] = {}


def cache_root(kind: str = "") -> Path:
    """percepkit's cache folder ``$PERCEPKIT_CACHE`` (default ``~/.cache/percepkit``), or its
    subfolder ``kind`` (``datasets``, ``models``)."""
    root = Path(os.environ.get("PERCEPKIT_CACHE") or Path.home() / ".cache" / "percepkit")
    return root.expanduser() / kind if kind else root.expanduser()


def asset_path(*parts: str) -> Path:
    """A file or folder shipped inside the package (``percepkit/assets/<parts>``)."""
    from importlib import resources

    return Path(str(resources.files("percepkit").joinpath("assets", *parts)))


def env_folders(name: str) -> list[Path]:
    """The folders listed in environment variable ``name`` (``os.pathsep``-separated)."""
    return [Path(p).expanduser() for p in os.environ.get(name, "").split(os.pathsep) if p]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: errno -> why a write failed, for people; these errors become one paragraph (:class:`WriteError`)
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is too large for the file system",
}


def _blocking_file(path: Path) -> Path | None:
    """The regular file among ``path``'s parents that stands where a folder is needed."""
    return next((p for p in path.absolute().parents if p.exists() and not p.is_dir()), None)


def write_error(path: str | Path, error: OSError, cleaned: bool = True) -> WriteError:
    """One paragraph for a failed write of ``path``: what it was, why, what to do (and, when
    ``cleaned``, that no partial file is left: true of every writer in this module)."""
    path = Path(path)
    why = WRITE_ERRORS.get(error.errno or 0) or error.strerror or str(error)
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _blocking_file(path) or (path if path.exists() and not path.is_dir() else None)
        if blocker is not None:
            why = f"{blocker} is a file, not a folder"
    todo = {errno.ENOSPC: "free some space (or write elsewhere) and run the command again",
            errno.EDQUOT: "free some space (or write elsewhere) and run the command again",
            errno.EROFS: "write to another folder",
            errno.EACCES: "write to a folder you may write to",
            errno.EPERM: "write to a folder you may write to"}.get(error.errno or 0,
                                                                   "choose another path")
    left = " No partial file was left behind." if cleaned else ""
    return WriteError(f"cannot write {path}: {why}; {todo}.{left}", error.errno)


def is_write_error(error: BaseException) -> bool:
    """Whether ``error`` is an OSError of a failed write that :func:`write_error` explains."""
    return isinstance(error, OSError) and error.errno in WRITE_ERRORS


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (disk full, quota, read-only, permission, a file where
    a folder should be) into :class:`WriteError`; other errors pass."""
    try:
        yield
    except OSError as e:
        if not is_write_error(e):
            raise
        raise write_error(e.filename or path, e) from None


def make_folder(path: str | Path) -> Path:
    """``mkdir -p path``, or :class:`WriteError` naming what is in the way."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file name beside ``path`` for code that writes by file name (ONNX,
    TorchScript): renamed into place when the block succeeds, removed when it fails."""
    path = Path(path)
    make_folder(path.parent)
    with writing(path):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                    suffix=f".tmp{path.suffix}")
        os.close(fd)
    tmp = Path(name)
    try:
        with writing(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all: a failed append (disk full) is cut
    back to the file's old length and raises :class:`WriteError`."""
    path = Path(path)
    with writing(path), open(path, "ab") as f:
        start = f.tell()
        try:
            f.write(text.encode("utf-8"))
            f.flush()
        except OSError:
            with suppress(OSError):
                f.truncate(start)
            raise


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None],
                 verify: Callable[[Path], None] | None = None, durable: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    The file is either complete or absent (an interrupted write leaves nothing behind), gets
    the permissions a plain ``open()`` would give (0644 under the usual umask, not the 0600 of
    temporary files), and replaces any older file at once. ``verify(tmp)`` may raise to keep
    the old file; ``durable`` also fsyncs the data and the folder (checkpoints). A write
    that fails for want of space, quota or permission raises :class:`WriteError` (one
    paragraph naming ``path``), with the temporary file removed and the old file intact.
    """
    path = Path(path)
    make_folder(path.parent)
    with writing(path):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with writing(path):
            with os.fdopen(fd, "wb") as f:
                write(f)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            if verify is not None:
                verify(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
    return path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file (remembered per path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def check_output(flag: str, path: Path | None, overwrite: bool) -> None:
    """Refuse an output file that exists (without --overwrite) or cannot be written."""
    if path is None or str(path) == "-":
        return
    if path.is_dir():
        raise PercepkitError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise PercepkitError(f"{flag} {path}: exists; pass --overwrite to replace it")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise PercepkitError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PercepkitError(f"{flag} {path}: {parent} is not writable")


def check_output_folder(flag: str, path: Path | None) -> None:
    """Refuse an output folder that is a file, lies under a file or cannot be written."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise PercepkitError(f"{flag} {path}: is a file; give a folder")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise PercepkitError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise PercepkitError(f"{flag} {path}: {path if path.exists() else parent} is not "
                             f"writable")
