"""Advisory file locks (``fcntl.flock``) that name their holder.

Two uses:
  * the workdir lock: one trainer per run folder (taken by process 0 only; every
    host of a pod shares the workdir), ``workdir/.lock``;
  * the data lock: one preparer per TFDS data dir at a time, ``data_dir/.prepare.lock``,
    so concurrent runs on a fresh data dir wait for each other instead of racing on
    TFDS's ``incomplete`` folders.

``flock`` locks belong to the open file description: the kernel drops them when the
process dies (also on ``kill -9``), so a crashed run never blocks its resume. The lock
file itself stays (it is empty but for the holder's ``pid``/host line).

Object stores (``gs://``, ``s3://``) have no file locks: ``is_local`` is False for
them and the callers skip locking. Two trainers on one ``gs://`` workdir are then not
prevented, and the data dir should be prepared once before a sweep starts.

Linux/macOS only (``fcntl``); on NFS ``flock`` is emulated with POSIX locks (Linux
>= 2.6.12), which also work across hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from typing import Iterator


class LockHeldError(RuntimeError):
  """The lock is held by another live process."""


def is_local(path: str) -> bool:
  """True for a path on a local or mounted filesystem (not ``gs://`` and the like)."""
  return "://" not in str(path)


def _holder_line() -> str:
  return f"pid {os.getpid()} on host {socket.gethostname()} since " \
         f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


class FileLock:
  """An exclusive ``flock`` on ``path`` that records who holds it.

  Args:
    path: the lock file (created if missing; its folder must exist).
    what: what the lock protects, for error messages ("workdir runs/x").
  """

  def __init__(self, path: str, what: str):
    self.path = path
    self.what = what
    self._fd: int | None = None

  def acquire(self, blocking: bool) -> None:
    """Takes the lock.

    Args:
      blocking: wait for the holder to release it (True), or fail at once (False).

    Raises:
      LockHeldError: (non-blocking) naming the holder's pid and host.
    """
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      with open(self.path) as f:
        holder = f.read().strip() or "another process"
      os.close(fd)
      raise LockHeldError(f"{self.what} is in use by {holder} (lock file {self.path}); "
                          "wait for it to finish or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, (_holder_line() + "\n").encode())
    os.fsync(fd)
    self._fd = fd

  def release(self) -> None:
    """Releases the lock (the file stays; its holder line is cleared)."""
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "FileLock":
    self.acquire(blocking=False)
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def locked(path: str, what: str) -> Iterator[None]:
  """Waits for and holds ``FileLock(path)``; a no-op for object-store paths."""
  if not is_local(path):
    yield
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  lock = FileLock(path, what)
  lock.acquire(blocking=True)
  try:
    yield
  finally:
    lock.release()
