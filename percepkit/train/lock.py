"""One training run per run directory: ``train.lock`` in the folder, held while a run trains.

The lock is a POSIX record lock (``fcntl.lockf``) on ``RUN_DIR/train.lock``, which holds the
owner's pid, host, start time and command line. The operating system drops the lock when its
process ends in any way (SIGKILL, a crash, a lost node on a shared file system with working
locks), so a lock file left by a killed run is stale exactly when nobody holds its lock: the next
run takes it over. Where the file system has no locks (``lockf`` fails with ENOLCK and the
like), the recorded pid decides: a lock of this host whose pid is no longer running is stale; one
of another host is respected. The lock file is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..errors import PercepkitError

LOCK_FILE = "train.lock"
_HELD = (errno.EAGAIN, errno.EACCES)
#: Lock files this process holds: POSIX locks do not exclude their own process, so a second
#: Trainer in the same process is refused here.
_HELD_HERE: set[str] = set()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    cmd = " ".join(str(a) for a in owner.get("argv") or [])
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started "
            f"{owner.get('started', '?')}" + (f" ({cmd})" if cmd else ""))


class RunLock:
    """The lock of one run directory (see the module docstring); :meth:`acquire` it."""

    def __init__(self, run_dir: Path, fd: int, created_dir: bool) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = fd
        self._created_dir = created_dir

    @classmethod
    def acquire(cls, run_dir: str | Path, console: Console | None = None) -> RunLock:
        """Lock ``run_dir`` (created if missing) or raise PercepkitError naming the holder.

        A stale lock (its run was killed) is taken over with a note on ``console``.
        """
        run_dir = Path(run_dir)
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise PercepkitError(f"run directory {run_dir}: a file is in the way of this "
                                 f"folder; choose another --out") from None
        except PermissionError:
            raise PercepkitError(f"run directory {run_dir}: cannot create the folder "
                                 f"(permission denied); choose a writable --out") from None
        try:
            lock = cls._lock(run_dir, created, console)
        except BaseException:
            if created:
                _remove_empty(run_dir)
            raise
        return lock

    @classmethod
    def _lock(cls, run_dir: Path, created: bool, console: Console | None) -> RunLock:
        path = run_dir / LOCK_FILE
        if str(path.resolve()) in _HELD_HERE:
            raise _in_use(path, _read_file(path))
        for _ in range(10):  # retried while another process replaces the file under us
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except PermissionError:
                raise PercepkitError(f"{path}: cannot write the run's lock file (permission "
                                     f"denied); choose a writable --out") from None
            try:
                owner = cls._take(fd, path)
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            except FileNotFoundError:  # removed by its owner between open and lock: retry
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise PercepkitError(f"{path}: the lock file keeps changing; another run is "
                                 f"starting in {run_dir}")
        if owner and owner.get("pid") not in (None, os.getpid()) and console is not None:
            console.print(f"note: took over the lock of a run that is no longer running "
                          f"({escape(_describe(owner))})", soft_wrap=True, highlight=False)
        me = {"pid": os.getpid(), "host": platform.node(),
              "started": _dt.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        _HELD_HERE.add(str(path.resolve()))
        return cls(run_dir, fd, created)

    @staticmethod
    def _take(fd: int, path: Path) -> dict[str, Any] | None:
        """Lock ``fd``; returns the previous owner's record (None if empty) or raises."""
        import fcntl

        owner = _read_owner(fd)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in _HELD:  # no locks on this file system: trust the recorded pid
                if owner and _alive_elsewhere(owner):
                    raise _in_use(path, owner) from None
                return owner
            raise _in_use(path, _read_owner(fd) or owner) from None
        return _read_owner(fd)

    def release(self) -> None:
        """Remove the lock file and unlock (also removes a run folder this lock created if it
        stayed empty). Safe to call twice."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD_HERE.discard(str(self.path.resolve()))
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        if self._created_dir:
            _remove_empty(self.run_dir)


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        data = os.pread(fd, 65536, 0)
        owner = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _read_file(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive_elsewhere(owner: dict[str, Any]) -> bool:
    """Whether a lock record without a working lock still counts (same host: its pid runs)."""
    if owner.get("host") != platform.node():
        return True
    pid = owner.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)


def _in_use(path: Path, owner: dict[str, Any] | None) -> PercepkitError:
    who = _describe(owner) if owner else "another process"
    return PercepkitError(
        f"{path.parent} is in use by another training run ({who}); two runs in one folder would "
        f"overwrite each other's checkpoints and logs. Wait for it to finish or stop it (kill "
        f"-TERM {owner.get('pid', 'PID') if owner else 'PID'} saves a checkpoint), or choose "
        f"another --out. If that run is certainly gone, delete {path}.")


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
