"""File-system helpers shared by every writer (a leaf module: it imports nothing from lliejax)."""
from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()


def umask() -> int:
  """The process's current umask (read without changing it for other threads)."""
  with _LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def make_public(path: str | os.PathLike, *, executable: bool = False) -> None:
  """Give a file from ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open()`` would: 0666 minus the umask.

  Atomic writers create a private temporary file and rename it into place; without this the result stays 0600
  (unreadable to other users and services) whatever the user's umask says.
  """
  os.chmod(path, (0o777 if executable else 0o666) & ~umask())
