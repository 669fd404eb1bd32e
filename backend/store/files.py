"""Store files written whole or not at all: locked temp files, one lock for changes, and the
removal of what a killed process left behind."""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# A leading '.' is never a valid model name part nor a blob name, so a temp file is never listed.
TEMP_PREFIX = ".tmp-"


class TempFile:
    """A new file beside its target, flocked while it is written so that start-up cleanup (in
    this process or another) leaves it alone; commit() renames it over the target, anything
    else removes it. Use it as a context manager."""

    def __init__(self, directory: Path, prefix: str = TEMP_PREFIX):
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A cleanup that locked the new file before we did has unlinked it: take another.
            try:
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.committed = False

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self, target: Path) -> None:
        self.file.flush()
        os.chmod(self.path, 0o644)  # mkstemp makes 0600; the store may be shared with other users
        os.replace(self.path, target)
        self.committed = True
        self.file.close()

    def abort(self) -> None:
        if not self.committed and not self.file.closed:
            self.path.unlink(missing_ok=True)  # still locked: no cleanup can race the unlink
        self.file.close()

    def __enter__(self) -> "TempFile":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def write_atomic(target: Path, data: bytes) -> None:
    with TempFile(target.parent) as tmp:
        tmp.write(data)
        tmp.commit(target)


@contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """The store's one lock for create, copy, pull, delete and prune. An flock on a file opened
    per call: it excludes other threads of this process as well as other processes, and the
    kernel releases it when a holder is killed."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_unlocked(directory: Path, is_leftover: Callable[[str], bool]) -> list[Path]:
    """Removes the files in `directory` whose name `is_leftover` and that nobody holds locked
    (a writer that is alive holds its TempFile locked); returns what it removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed: list[Path] = []
    for name in filter(is_leftover, names):
        path = directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # gone already, or a symlink: nothing a writer of ours made
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed
