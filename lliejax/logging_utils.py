"""Console logging for the command-line programs: lliejax and clu progress at INFO, library chatter hidden."""
from __future__ import annotations

import logging

_QUIET = ("orbax", "tensorstore", "jax._src", "absl_py", "tensorflow_datasets", "grain")


class _LibraryFilter(logging.Filter):
  """Drops INFO/DEBUG records emitted from the source files of chatty libraries (Orbax logs every save)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(f"/{name}/" in path or f"/{name}." in path for name in _QUIET)


def setup_logging(level: int = logging.INFO) -> None:
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_LibraryFilter())
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.use_python_logging()
    absl_logging.get_absl_handler().addFilter(_LibraryFilter())
  except ImportError:
    pass
