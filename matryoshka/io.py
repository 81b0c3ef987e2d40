"""The folder protocol: a writer lock, atomic files, hidden temp files cleaned by the next
writer, and atomic folders for checkpoints.

docs/design.md, "The export folder". A writer holds an
exclusive flock on `<folder>/.lock` for its whole read-modify-write; readers never lock. Every
file is written under a hidden temporary name (`.NAME.RANDOM.tmp`), fsynced and renamed, so a
crash leaves either the old or the new file whole, plus a temp file that the next writer,
holding the lock, knows to be stale. Standard library only: the runtime uses it too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from matryoshka.errors import ArtifactError, ConfigError, LockTimeout

log = logging.getLogger(__name__)
LOCK = ".lock"
TEMP = re.compile(r"^\..+\.tmp$")  # the only names writers use for unfinished files
DEFAULT_LOCK_TIMEOUT = 3600.0  # seconds; MATRYOSHKA_LOCK_TIMEOUT overrides it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(folder: str | Path, name: str) -> Path:
    """A hidden, unique temp name in `folder` for a file that will become `name`."""
    return Path(folder) / f".{name}.{secrets.token_hex(4)}.tmp"


def publish(path: str | Path) -> None:
    """Give a file the permissions a normal create would (0666 less the umask): temp files and
    some writers (safetensors) make 0600 files that other users could not read."""
    os.chmod(path, 0o666 & ~_umask())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a temp file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = temp_path(path.parent, path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with writing(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON with NaN and inf refused: a manifest or record never holds a non-standard number."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object; ArtifactError with the path otherwise."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    return obj


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name `path` in an OSError that does not name its file (a full disk inside a library's
    own write), and turn a library's I/O error that carries an errno into an OSError."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)
        raise
    except Exception as e:  # safetensors: "I/O error: No space left on device (os error 28)"
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


# -- output folders ----------------------------------------------------------------------------
def _has_content(folder: Path) -> bool:
    """Anything in the folder but the lock and writers' temp files."""
    return any(p.name != LOCK and not TEMP.match(p.name) for p in folder.iterdir())


def check_out_dir(out: str | Path, force: bool) -> Path:
    """Refuse a non-folder, or an existing non-empty output folder unless force is given."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
            break
    if out.is_dir() and _has_content(out) and not force:
        raise ConfigError(f"--out {out} already exists; pass --force to replace it")
    return out


def make_dir(out: str | Path) -> Path:
    """Create `out` and its parents, with a ConfigError when a parent is a file."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--out {out} cannot be made: a part of the path is a file") from None
    return out


# -- the writer lock ---------------------------------------------------------------------------
def _lock_timeout() -> float:
    text = os.environ.get("MATRYOSHKA_LOCK_TIMEOUT")
    try:
        return float(text) if text else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise ConfigError(f"MATRYOSHKA_LOCK_TIMEOUT must be a number of seconds; got {text!r}"
                          ) from None


@contextlib.contextmanager
def writer_lock(folder: str | Path, timeout: float | None = None) -> Iterator[Path]:
    """Hold the folder's exclusive writer lock; on entry, remove stale temp files.

    A second writer waits (logging once who holds the lock) and raises LockTimeout after
    `timeout` seconds [MATRYOSHKA_LOCK_TIMEOUT, else one hour]. An unwritable folder raises
    the OSError (PermissionError, read-only file system) before anything is changed.

    >>> with writer_lock("artifacts/demo/export"):  # doctest: +SKIP
    ...     ...  # read manifest.json, write new files, commit, delete the unnamed ones
    """
    folder = Path(folder)
    timeout = _lock_timeout() if timeout is None else timeout
    path = folder / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        _acquire(fd, path, timeout)
        with contextlib.suppress(OSError):  # who holds it, for a waiting writer's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        clean_stale(folder)
        try:
            yield folder
        finally:
            with contextlib.suppress(OSError):
                clean_stale(folder)  # a failed writer's temp files go with it
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(fd: int, path: Path, timeout: float) -> None:
    start, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(path)
        if time.monotonic() - start >= timeout:
            raise LockTimeout(f"another writer{holder} has held {path} for more than "
                              f"{timeout:g} s; wait for it to finish or stop it")
        if not told:
            log.warning("waiting for another writer%s of %s", holder, path.parent)
            told = True
        time.sleep(0.05)


def _holder(path: Path) -> str:
    """' (pid N)' of the writer holding the lock, or '' (the file is empty while a new holder
    writes its pid)."""
    words = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        words = path.read_text().split()
    return f" (pid {words[0]})" if words and words[0].isdigit() else ""


def clean_stale(folder: Path) -> None:
    """Remove writers' temp files in `folder` (call with its lock held: every writer holds it
    while it has temp files, so any left are a dead writer's), and stale sibling folders of
    `atomic_dir` that no living writer holds."""
    for p in folder.iterdir():
        if TEMP.match(p.name):
            _remove(p)
    _clean_siblings(folder)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _clean_siblings(out: Path) -> None:
    """`.NAME.*.tmp` and `.NAME.*.old` folders beside `out` whose flock is free: their writer
    is dead (a living one holds its temp folder's flock until it renames it)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*"):
        if p.suffix in (".tmp", ".old") and p.is_dir() and not p.is_symlink() and _unheld(p):
            shutil.rmtree(p, ignore_errors=True)


def _unheld(folder: Path) -> bool:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `out`; on success it replaces `out` whole.

    For checkpoints, which have no manifest to commit through. On any exception the temporary
    folder is removed and `out` is left as it was; a killed writer's folder is removed by the
    next one (this one holds a flock on it while it works).
    """
    out = check_out_dir(out, force)
    make_dir(out.parent)
    _clean_siblings(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    held = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.replace(out, old)
        os.replace(tmp, out)
        fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        os.close(held)
