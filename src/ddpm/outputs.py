"""Where commands write: output folders that never swallow a user's files, atomic files, one writer per run.

Every command that writes a folder claims it first (``OutputDir``): a missing folder is created; an existing one
is used only if it is empty or was written by the same command before (a hidden marker file says which); a
folder holding a training run, or anything else, is refused unless ``overwrite`` is given. A claim that fails
before its command wrote anything leaves no trace: the folder it created and its marker are removed again.

Files are written atomically (``atomic_file``): into a temporary name beside the target, flushed, renamed into
place, so a crash leaves either the old file or the new one. Temporary files are created by the writer itself,
so they get the user's umask like any other file.

A training run holds an exclusive lock (``RunLock``, an ``fcntl`` lock on ``<run>/.lock``), released on exit and
by the kernel when the process dies; the lock file names its holder, so a second writer is told who holds it and
a lock left by a killed process is recognised and said to be recovered.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

MARKER = ".ddpm-output.json"  # which ddpm command wrote a folder
LOCK = ".lock"                # a training run's lock file
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


class OutputError(ValueError):
    """An output target that would overwrite or swallow what a user made, or that escapes its folder."""


# --- names ---------------------------------------------------------------------------------------

def safe_name(name: str, option: str = "--name") -> str:
    """A file stem that stays inside its folder: letters, digits and ``_.+-``, not starting with a dot."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise OutputError(f"{option} {name!r} must be a plain file name (letters, digits, _ . + -, not starting "
                          "with a dot or containing a path separator)")
    return name


# --- atomic files --------------------------------------------------------------------------------

def file_mode() -> int:
    """The mode a file created now gets, 0o666 less the process's umask (for writers that create files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside ``path`` with the same suffix (writers such as PIL and numpy go by it)."""
    return path.parent / f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s contents to; on success it is flushed and renamed to ``path``.

    On an error the temporary file is removed and an existing ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_npz(path: str | Path, compressed: bool = False, **arrays: Any) -> Path:
    """Write numpy arrays to an ``.npz`` at exactly ``path``, atomically."""
    import numpy as np

    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" of its own
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return Path(path)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable."""
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals renames anyway
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # fs without directory fsync
            raise
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the complete directory ``tmp`` to ``final``; an existing ``final`` is moved aside first and deleted after.

    If the rename fails, the previous ``final`` is put back, so a failed replacement loses nothing.
    """
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    moved_aside = False
    try:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(final, old)  # POSIX cannot rename a directory over a non-empty one
            moved_aside = True
        os.rename(tmp, final)
    except BaseException:
        if moved_aside and not final.exists():
            try:
                os.rename(old, final)
            except OSError:
                pass  # it stays as .old-*, removed by the next writer
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)  # make the rename itself durable
    if moved_aside:
        shutil.rmtree(old, ignore_errors=True)


# --- output folders ------------------------------------------------------------------------------

def holds_run(path: Path) -> bool:
    """Whether ``path`` is a training run (or a converted checkpoint): checkpoints, or a checkpoint's meta.json."""
    return (path / "checkpoints").is_dir() or (path / "meta.json").is_file() or marker_command(path) == "train"


def marker_command(path: Path) -> str | None:
    """The ddpm command named by ``path``'s output marker, if it has a readable one."""
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def _describe(path: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in path.iterdir() if p.name not in (MARKER, LOCK))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_parents(path: Path, option: str) -> None:
    """An output path below a file cannot be made: say which part is the file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path}: {parent} is a file, not a folder")
            return


def check_output_dir(path: str | Path, command: str, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse ``path`` as ``command``'s output folder when writing there could overwrite what someone else made."""
    path = Path(path)
    _check_parents(path, option)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file; give a folder")
    if not path.exists() or overwrite:
        return path
    entries = [p for p in path.iterdir() if p.name not in (MARKER, LOCK)]
    if not entries:
        return path
    owner = marker_command(path)
    if owner == command or (command == "train" and holds_run(path)):  # the trainer decides on --resume
        return path
    if holds_run(path):
        what = "a training run or checkpoint"
    elif owner is not None:
        what = f"the output of ddpm {owner}"
    else:
        what = f"files ({_describe(path)})"
    raise OutputError(f"{option} {path} already holds {what}; choose another {option} or pass --overwrite to "
                      "write into it anyway")


def check_output_file(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Refuse an existing file (or a folder) as an output file unless ``overwrite``."""
    path = Path(path)
    _check_parents(path, option)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{option} {path} already exists; choose another name or pass --overwrite to replace it")
    return path


class OutputDir:
    """A command's claim on its output folder; ``with OutputDir(...) as out:`` checks, creates and marks it.

    Leaving the block by an exception removes what the claim itself made (the folder, its marker) when
    nothing else was written into it, so a refused command leaves no empty ``--out`` behind.
    """

    def __init__(self, path: str | Path, command: str, *, overwrite: bool = False, option: str = "--out",
                 active: bool = True) -> None:
        self.path, self.command, self.overwrite, self.option = Path(path), command, overwrite, option
        self.active = active  # False on processes other than rank 0, which write nothing
        self.created: list[Path] = []
        self.marked = False

    def __enter__(self) -> Path:
        if not self.active:
            return self.path
        check_output_dir(self.path, self.command, self.overwrite, self.option)
        missing = []
        p = self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self.created = missing  # deepest first
        if marker_command(self.path) is None:
            write_text(self.path / MARKER, json.dumps({"command": self.command}) + "\n")
            self.marked = True
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or not self.active:
            return
        self.discard_if_untouched()

    def discard_if_untouched(self) -> None:
        """Remove the marker and the folders this claim created, if nothing else was written there."""
        try:
            left = [p for p in self.path.iterdir() if p.name not in (MARKER, LOCK)]
        except OSError:
            return
        if left:
            return
        if self.marked:
            (self.path / MARKER).unlink(missing_ok=True)
        for d in self.created:
            try:
                (d / LOCK).unlink(missing_ok=True)
                d.rmdir()
            except OSError:
                break


# --- one writer per run --------------------------------------------------------------------------

class RunLockedError(OutputError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory, held while one process writes it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _locked(self.path, fd)
            os.close(fd)
            raise error from None
        except BaseException:
            os.close(fd)
            raise
        stale = _read_holder(fd)
        if stale:  # the previous holder died without releasing: the kernel dropped its lock, the note stayed
            log.warning("recovered a stale lock on %s left by process %s on %s, which is no longer running",
                        self.path.parent, stale.get("pid"), stale.get("host"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)  # an empty note: released cleanly
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_not_locked(run_dir: str | Path) -> None:
    """RunLockedError naming the holder when another live process holds ``run_dir``'s lock; writes nothing.

    For the checks a writer makes before it takes the lock itself (e.g. "this run already has checkpoints"), so
    that a second writer is told about the first rather than about what the first has written so far.
    """
    import fcntl

    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _locked(path, fd) from None
    finally:
        os.close(fd)


def _locked(path: Path, fd: int) -> RunLockedError:
    """The error for a lock held by another live process, naming it from the note in ``fd``."""
    holder = _read_holder(fd)
    who = f"process {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
    return RunLockedError(f"{path.parent} is being written by {who} (lock {path}); wait for it to finish or "
                          "choose another --out")


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
