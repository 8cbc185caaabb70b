"""Where modelfusion keeps its files, and the one way it writes them.

`home_dir` is platformdirs' user dirs unless $MODELFUSION_HOME is set (tests set it so that
they never touch the real home). `atomic_open` / `atomic_write` never leave a half-written
file: a temp file in the same folder, fsynced, given the mode `open()` would give, then
renamed over the target. A reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import platformdirs

APP = "modelfusion"


def home_dir(kind: str) -> Path:
    """`config`, `data` or `cache` dir; all under $MODELFUSION_HOME when it is set."""
    root = os.environ.get("MODELFUSION_HOME")
    if root:
        return Path(root) / kind
    return Path(getattr(platformdirs, f"user_{kind}_dir")(APP))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give; mkstemp alone gives 0600, which hides reports and models from
# the other users (a CI step, a shared cache).
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends without an exception.

    An exception inside the block (a failed checksum, say) leaves `path` as it was.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: Path, data: str | bytes) -> None:
    with atomic_open(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
