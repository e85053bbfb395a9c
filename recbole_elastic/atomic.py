"""Atomic file writes: readers never see half a file (checkpoints, results, rank exchange files)."""

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary name beside ``path``; whatever is written there replaces ``path`` in one rename.

    Readers never see half a file. If nothing was written under the temporary name (in a distributed run only
    rank 0 saves), ``path`` is left as it was; if the write fails, the temporary file is removed.
    """
    temporary = f"{path}.{os.getpid()}.partial"
    try:
        yield temporary
        if os.path.exists(temporary):
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
