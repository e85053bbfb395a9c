"""Atomic file writes (readers never see half a file: checkpoints, results, rank exchange files), file names
claimed atomically (two processes never get the same one), and their cleanup when the process is killed."""

import contextlib
import itertools
import os
import signal
import threading
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


def claim_new_file(stem: str, suffix: str) -> str:
    """Create the first free one of ``stem + suffix``, ``stem + "-1" + suffix``, ``stem + "-2" + suffix``, ...
    as an empty file and return its path.

    Exclusive creation (``O_CREAT | O_EXCL``) makes the check and the creation one step, so processes choosing a
    name at the same moment each get their own: checking that a name is free and writing it later lets two of
    them choose the same name before either file exists.
    """
    for count in itertools.count():
        path = f"{stem}{suffix}" if count == 0 else f"{stem}-{count}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        return path


@contextlib.contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Within this block, ``kill`` (SIGTERM) ends the process as Ctrl-C does: by an exception (``SystemExit(143)``).

    Python's default for SIGTERM exits at once without running ``finally`` blocks, so a run killed mid-save left
    a ``*.partial`` file and a run killed before its first save an empty claimed checkpoint name. Signal handlers
    can only be set in the main thread; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
