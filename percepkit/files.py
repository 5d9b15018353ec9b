"""Files: atomic writes with normal permissions, and SHA-256 checksums."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import PercepkitError

_DIGESTS: dict[tuple[str, float, int], str] = {}


def cache_root(kind: str = "") -> Path:
    """percepkit's cache folder ``$PERCEPKIT_CACHE`` (default ``~/.cache/percepkit``), or its
    subfolder ``kind`` (``datasets``, ``models``)."""
    root = Path(os.environ.get("PERCEPKIT_CACHE") or Path.home() / ".cache" / "percepkit")
    return root.expanduser() / kind if kind else root.expanduser()


def env_folders(name: str) -> list[Path]:
    """The folders listed in environment variable ``name`` (``os.pathsep``-separated)."""
    return [Path(p).expanduser() for p in os.environ.get(name, "").split(os.pathsep) if p]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None],
                 verify: Callable[[Path], None] | None = None, durable: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder, then rename it into place.

    The file is either complete or absent (an interrupted write leaves nothing behind), gets
    the permissions a plain ``open()`` would give (0644 under the usual umask, not the 0600 of
    temporary files), and replaces any older file at once. ``verify(tmp)`` may raise to keep
    the old file; ``durable`` also fsyncs the data and the folder (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
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
