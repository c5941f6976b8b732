"""Orbax checkpoints of the whole (member-batched) train state, each with a checksum.

Orbax writes each step into a temporary directory and renames it when complete, so a step
killed mid-write never looks finished. Once it is finished we record the SHA-256 of every file
in it, in ``checkpoints/<step>.sha256`` (the format of ``sha256sum``, so ``cd checkpoints/8 &&
sha256sum -c ../8.sha256`` checks it by hand), written atomically.

``restore_latest`` is the one way back for resume, ``rljax eval``, ``load_policy`` and ``rljax
export``: the newest step whose files match their checksums and that orbax reads wins. Each
step passed over (flipped bytes, a truncated or missing file, no checksum) is reported in one
warning line; a writer moves it aside to ``checkpoints/corrupt-<step>`` (as
evidence, and so a resumed run writes that step afresh), a reader leaves the directory as it is.
A step whose files are intact but do not fit the train state (another version's layout) stops
with a RunError instead: it is not corrupt. Orbax's own log lines are silenced while it
restores.
"""

import contextlib
import hashlib
import importlib
import logging
import os
import warnings
from pathlib import Path

from rljax.runner.distributed import barrier, is_primary
from rljax.runner.errors import RunError

_ORBAX_LOGGERS = ("absl", "orbax", "orbax.checkpoint", "tensorstore", "jax._src.distributed")


class Checkpoints:
    def __init__(self, directory: Path, keep: int = 2, read_only: bool = False):
        """A writer keeps the newest ``keep`` steps; a reader (``read_only``) changes nothing."""
        self.directory = Path(directory).absolute()
        self._read_only = read_only
        self._keep = keep
        self._opened = None

    @property
    def _manager(self):
        """Orbax's manager, opened at its first use: a fresh run imports orbax (0.1-0.2 s) while
        it trains (``load_orbax``), not before."""
        if self._opened is None:
            ocp = load_orbax()
            with _quiet_orbax():  # orbax logs what it changes in a reader's options
                options = ocp.CheckpointManagerOptions(
                    max_to_keep=None if self._read_only else self._keep,
                    create=not self._read_only,
                    read_only=self._read_only,
                )
                self._opened = ocp.CheckpointManager(self.directory, options=options)
        return self._opened

    def save(self, step: int, state) -> None:
        """Saves ``state`` as ``step`` and, once orbax has finished it, its checksum."""
        self._manager.save(step, args=load_orbax().args.StandardSave(state))
        self._manager.wait_until_finished()
        if is_primary():
            lines = [f"{digest}  {name}\n" for name, digest in _digests(self._step_dir(step))]
            write_atomically(self._checksum_file(step), "".join(lines))
            kept = {self._checksum_file(s) for s in self._manager.all_steps()}
            for stale in self.directory.glob("*.sha256"):  # of steps orbax has deleted
                if stale not in kept and stale.stem.isdigit():
                    stale.unlink(missing_ok=True)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def verify(self, step: int) -> str | None:
        """Why the files of ``step`` cannot be trusted, or None when they match their checksum."""
        try:
            recorded = _parse(self._checksum_file(step).read_text())
        except FileNotFoundError:
            return "no checksum was recorded for it"
        except (OSError, UnicodeError, ValueError) as error:
            return f"its checksum file is unreadable: {_one_line(error)}"
        try:
            found = dict(_digests(self._step_dir(step)))
        except OSError as error:
            return f"a file cannot be read: {_one_line(error)}"
        for name in sorted(recorded.keys() | found.keys()):
            if name not in found:
                return f"{name} is missing"
            if name not in recorded:
                return f"{name} was not there when it was saved"
            if found[name] != recorded[name]:
                return f"checksum mismatch in {name}"
        return None

    def restore(self, step: int, abstract_state):
        """The state saved at ``step``, laid out (shapes, dtypes, shardings) as abstract_state,
        without checking its checksum (``restore_latest`` does)."""
        with _quiet_orbax():
            return self._manager.restore(
                step, args=load_orbax().args.StandardRestore(abstract_state)
            )

    def restore_latest(self, layout_at):
        """(step, state) of the newest checkpoint that verifies, or (None, None); the state laid
        out as ``layout_at(step)`` (a second phase's steps have their own layout).

        Warns once per step passed over, naming it and the cause; a writer moves each aside."""
        passed_over = []
        found = None, None
        for step in sorted(self._manager.all_steps(), reverse=True):
            cause = self.verify(step)
            if cause is None:
                try:
                    found = step, self.restore(step, layout_at(step))
                    break
                except Exception as error:  # intact files that do not fit: not corruption
                    raise RunError(
                        f"checkpoint at update {step} in {self.directory} matches its checksum "
                        f"but does not fit this run's train state ({_one_line(error)}); was it "
                        "written by another version of rljax or of the agent?"
                    ) from None
            passed_over.append((step, cause))
        for step, cause in passed_over:
            where = "" if self._read_only else f" and was set aside as {self._set_aside(step)}"
            using = (
                "no older checkpoint is readable"
                if found[0] is None
                else f"using update {found[0]}"
            )
            warnings.warn_explicit(
                f"checkpoint at update {step} is unreadable ({cause}){where}; {using}",
                UserWarning, filename=str(self.directory), lineno=step,
            )  # fmt: skip
        if passed_over and not self._read_only:
            barrier("rljax: unreadable checkpoints set aside")
            self._manager.reload()  # so the steps set aside are written afresh
        return found

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _checksum_file(self, step: int) -> Path:
        return self.directory / f"{step}.sha256"

    def _set_aside(self, step: int) -> str:
        """Moves the step (and its checksum) to a free ``corrupt-<step>[-n]``; returns the name.
        Orbax takes only plain numbers for steps, so it never lists or deletes what is there."""
        name, n = f"corrupt-{step}", 1
        while (self.directory / name).exists():
            n += 1
            name = f"corrupt-{step}-{n}"
        if is_primary():
            os.replace(self._step_dir(step), self.directory / name)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self._checksum_file(step), self.directory / f"{name}.sha256")
        return name


def load_orbax():
    """``orbax.checkpoint``, imported at first use."""
    return importlib.import_module("orbax.checkpoint")


def _digests(step_dir: Path) -> list[tuple[str, str]]:
    """(relative path, SHA-256) of every file under ``step_dir``, sorted by path."""
    if not step_dir.is_dir():
        raise FileNotFoundError(f"{step_dir} is not a directory")
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    digests = []
    for path in files:
        with path.open("rb") as f:
            digests.append(
                (path.relative_to(step_dir).as_posix(), hashlib.file_digest(f, "sha256"))
            )
    return [(name, h.hexdigest()) for name, h in digests]


def _parse(text: str) -> dict[str, str]:
    """``sha256sum`` lines back into {relative path: SHA-256}."""
    recorded = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise ValueError(f"malformed line {line[:80]!r}")
        recorded[name] = digest
    if not recorded:
        raise ValueError("it is empty")
    return recorded


def write_atomically(path: Path, text: str) -> None:
    """Writes a temporary file beside ``path``, syncs it and renames it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's and absl's loggers (and warnings) say nothing while inside; errors still raise."""
    loggers = [logging.getLogger(name) for name in _ORBAX_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
