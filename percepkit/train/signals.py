"""Stopping a training run on SIGINT, SIGTERM or SIGHUP: after the current step, with a checkpoint.

``timeout``, systemd, Slurm pre-emption, Ctrl-C and a closed terminal send the signal to the
whole process group, DataLoader workers included. The workers ignore these signals
(:func:`ignore_stop_signals` is their ``worker_init_fn``; they are started with the signals
blocked, :func:`stop_signals_blocked`, so none arrives before that), so only the main process
reacts: the first signal asks the loop to stop after its step and save a checkpoint; a second
one, at least :data:`REPEAT_WINDOW` seconds later, raises :class:`TrainingAborted` at once.
Repeats within the window are the same request: ``timeout`` signals the process and then its
group, and a closing terminal's SIGHUP comes from the kernel and again from the shell.
Exit status: ``128 + signal number`` (:func:`exit_code`), as a shell reports a process that the
signal ended.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: The signals that stop a run: Ctrl-C, termination (timeout, systemd, Slurm), hang-up.
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: Seconds within which a repeated signal counts as the same request.
REPEAT_WINDOW = 1.0


def signal_name(signum: int) -> str:
    """``'SIGTERM'`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 128 + its number (SIGTERM: 143)."""
    return 128 + int(signum)


class TrainingAborted(KeyboardInterrupt):
    """A stop signal arrived where no checkpoint could be saved first (a second signal, or one
    during set-up); training stopped at once. ``signum`` is the signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"{signal_name(signum)}: stopped at once")
        self.signum = signum


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: ignore the stop signals (the main process handles them)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread (and so in processes it starts) for the block;
    signals that arrive meanwhile are delivered when it ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def detach_dead_terminal() -> None:
    """Point stdout/stderr at /dev/null if they are a terminal that has hung up (a closed
    terminal window or SSH session), so that the rest of the run (its checkpoint save and final
    lines) does not fail on writes (EIO). A live terminal or a file is left alone."""
    for fd in (1, 2):
        try:
            os.tcgetpgrp(fd)  # EIO on a hung-up terminal, ENOTTY on a file or pipe
        except OSError as e:
            if e.errno == errno.EIO:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


class StopSignals:
    """Handlers for :data:`STOP_SIGNALS` while installed (main thread only).

    Before :meth:`arm` (set-up) the first signal raises :class:`TrainingAborted`: there is no
    step to finish. Once armed, the first signal calls ``on_stop(signum)``, which should make the
    loop stop after its step; another signal :data:`REPEAT_WINDOW` seconds or more later raises
    :class:`TrainingAborted`. ``clock`` is ``time.monotonic`` (tests pass their own).
    """

    def __init__(self, on_stop: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_stop = on_stop
        self.clock = clock
        self.signum: int | None = None
        self.armed = False
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers; returns False (and does nothing) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return True

    def arm(self) -> None:
        """From now on a first signal stops after the current step instead of at once."""
        self.armed = True

    def restore(self) -> None:
        """Put the handlers that were there before :meth:`install` back."""
        for sig, handler in self._old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = self.clock()
        if self.signum is not None:
            if now - self._first < REPEAT_WINDOW:
                return  # the same request, delivered twice
            raise TrainingAborted(signum)
        self.signum, self._first = signum, now
        if signum == getattr(signal, "SIGHUP", None):
            detach_dead_terminal()
        if not self.armed:
            raise TrainingAborted(signum)
        self.on_stop(signum)
