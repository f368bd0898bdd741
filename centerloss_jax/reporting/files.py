"""Writes that are whole or absent: a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w') -> Iterator[IO]:
  """Opens a temporary file beside `path`; renames it over `path` on success.

  The temporary file is in the same folder, so the rename is atomic, and
  opened normally (not with mkstemp), so the file gets the usual umask
  permissions. On any error it is removed and `path` keeps its old content.

  Example::

    with atomic_write(os.path.join(workdir, 'results.json')) as f:
      json.dump(results, f)

  Args:
    path: the file to write.
    mode: 'w' for text, 'wb' for bytes (numpy archives, PNGs).

  Yields:
    The open temporary file.
  """
  if 'w' not in mode:
    raise ValueError(f"atomic_write writes a new file; mode must contain "
                     f"'w', got {mode!r}.")
  tmp_path = f'{path}.tmp'
  try:
    with open(tmp_path, mode) as f:
      yield f
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
