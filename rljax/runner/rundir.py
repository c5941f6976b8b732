"""A run directory's life: created exclusively, locked while a process writes it, never shared.

A new run creates its directory with one atomic ``mkdir`` before anything compiles, so two runs
can never write into one directory; a run that fails before its first chunk (a bad value found
while building, a failed compilation, Ctrl-C) removes the directory it created, provided it
still holds only the run's own files. While a process writes a run it holds an exclusive
``flock`` on ``RUN/.lock`` (the operating system drops it when the process ends, even by
``kill -9``), so a second writer, a second ``--resume`` of a live run included, is refused by
name. An ``OSError`` while the run writes becomes one ``RunIOError`` line naming the path and the
cause; its traceback goes to ``RUN/error.log``.
"""

import contextlib
import errno
import fcntl
import importlib
import os
import shutil
import time
import traceback
from pathlib import Path

from rljax.runner.distributed import is_primary
from rljax.runner.errors import RunDirectoryExists, RunInUse, RunIOError

LOCK = ".lock"
ERROR_LOG = "error.log"
# What a run writes before its first chunk: all that a failed start may remove.
OWN_FILES = {LOCK, ERROR_LOG, "config.yaml", "state_structure.pkl", "run_info.json"}
OWN_FILES |= {"metrics.csv", "metrics", "checkpoints", "tensorboard", "wandb"}
SINK_MODULES = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def check_sinks(tensorboard: bool, wandb_project: str | None) -> None:
    """The optional sinks asked for must import, before a directory is made or anything
    compiles."""
    for option, wanted in (("tensorboard", tensorboard), ("wandb", wandb_project)):
        if wanted:
            try:
                importlib.import_module(SINK_MODULES[option])
            except ImportError:
                raise ImportError(
                    f"--{option} needs {SINK_MODULES[option]}: pip install 'rljax[{option}]'"
                ) from None


def lock_holder(out: Path) -> int | None:
    """The process id that holds ``out``'s lock, or None when no process does."""
    try:
        fd = os.open(out / LOCK, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return None


def check_free(out: Path) -> None:
    """RunInUse when a live process holds ``out``: its run is not to be resumed or replaced."""
    pid = lock_holder(out)
    if pid is not None:
        raise _in_use(out, pid)


def _in_use(out: Path, pid: int) -> RunInUse:
    who = f"process {pid}" if pid > 0 else "another process"
    return RunInUse(
        f"run directory {out} is in use by {who}; wait for it to finish (or stop it), then "
        "--resume it, or choose another --out"
    )


class RunDirectory:
    """Process 0's hold on a run directory: ``open`` creates (a new run) or locks it."""

    def __init__(self, out: Path, resume: bool):
        self.out, self.resume = Path(out), resume
        self.created: list[Path] = []  # the directory and the parents this run made
        self.started = False  # set when training begins; from then on the directory stays
        self._fd = None
        self._inode = None

    def open(self) -> None:
        if not is_primary():
            return
        if not self.resume:
            missing = [p for p in reversed(self.out.parents) if not p.exists()]
            if not self.out.parent.exists():  # (under a regular file, mkdir says so below)
                self.out.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.out.mkdir()
            except FileExistsError:
                pid = lock_holder(self.out)
                if pid is not None:
                    raise _in_use(self.out, pid) from None
                raise RunDirectoryExists(
                    f"run directory {self.out} already exists (another run just made it); "
                    "choose another --out"
                ) from None
            self.created = [*missing, self.out]
            self._inode = _inode(self.out)
        self._fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock(self._fd):
            os.close(self._fd)
            self._fd = None
            raise _in_use(self.out, lock_holder(self.out) or -1)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def close(self, failed: bool) -> None:
        """Releases the lock; a new run that failed before training removes what it made."""
        if failed and not self.started and self.created and self._is_ours():
            shutil.rmtree(self.out, ignore_errors=True)
            for parent in reversed(self.created[:-1]):
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only if empty: another run may use it now
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _is_ours(self) -> bool:
        try:
            names = {p.name for p in self.out.iterdir()}
        except OSError:
            return False
        return self._inode == _inode(self.out) and names <= OWN_FILES

    def log_error(self, error: BaseException) -> None:
        """The traceback, appended to RUN/error.log where that is still possible."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError), (self.out / ERROR_LOG).open("a") as f:
            f.write("".join(traceback.format_exception(error)))


def _lock(fd: int, tries: int = 20) -> bool:
    """Takes the lock, waiting out another process's brief probe (``lock_holder``) but not a
    writer, which holds it for its whole run."""
    for _ in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.025)
    return False


def _inode(path: Path) -> tuple | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def io_error_text(error: OSError, out: Path) -> str:
    """``cannot write PATH: [Errno 28] No space left on device``: the path and the cause."""
    path = error.filename if error.filename is not None else out
    verb = "cannot read" if error.errno == errno.ENOENT else "cannot write"
    cause = f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error)
    return f"{verb} {os.fspath(path)}: {cause}"


@contextlib.contextmanager
def run_directory(out: Path, resume: bool):
    """Holds the run directory for the ``with`` block (see the module docstring)."""
    directory = RunDirectory(out, resume)
    failed = True
    try:
        directory.open()
        yield directory
        failed = False
    except OSError as error:
        directory.log_error(error)
        raise RunIOError(io_error_text(error, directory.out)) from error
    finally:
        directory.close(failed)
