"""The runner's errors, in a module that imports nothing, so the CLI can name a problem without
waiting for JAX to import."""


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class RunDirectoryExists(RunError):
    """The run directory exists and --resume was not given: it is never overwritten."""


class NoRunDirectory(RunError):
    """--resume of a directory that does not exist."""


class DatasetChanged(RunError):
    """A resumed run's dataset whose SHA-256 differs from the one the run started with."""


class RunInUse(RunError):
    """Another process holds the run directory's lock: it is training or resuming that run."""


class RunIOError(RunError):
    """Reading or writing the run directory failed (read-only, disk full, permissions)."""


class Divergence(RuntimeError):
    """Every member of the run has diverged; the message names the first bad quantity."""


class Interrupted(RuntimeError):
    """A termination signal stopped the run after a final checkpoint; --resume continues it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
