"""What stops a run early: diverging members and termination signals.

A member diverges when any of its metrics (losses, gradient norms; not the ``episode_*``
statistics, which are NaN while no episode has finished) or any of its parameters is not
finite. Members are independent under vmap, so a diverged member is marked failed and the
others go on; when every member has failed the run stops before writing another checkpoint,
so the last good one is kept.
"""

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np


def params_finite(params) -> jax.Array:
    """Whether every parameter of one member is finite (a scalar bool, computed on device)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(params)]
    return jnp.all(jnp.stack(leaves))


def guarded(metrics: dict) -> list[str]:
    return sorted(name for name in metrics if not name.startswith("episode"))


def first_failures(metrics: dict, updates: np.ndarray, finite_params: np.ndarray) -> dict:
    """member -> (quantities, update): what was first non-finite, and when, in one chunk.

    ``metrics`` are (members, updates) arrays; ``finite_params`` is (members,) at chunk end.
    """
    names = guarded(metrics)
    bad = np.stack([~np.isfinite(metrics[name]) for name in names], axis=-1)  # (M, K, Q)
    failures = {}
    for member in range(bad.shape[0]):
        bad_updates = np.flatnonzero(bad[member].any(axis=-1))
        if len(bad_updates):
            first = bad_updates[0]
            quantities = [name for q, name in enumerate(names) if bad[member, first, q]]
            failures[member] = (quantities, int(updates[first]))
        elif not finite_params[member]:
            failures[member] = (["params"], int(updates[-1]))
    return failures


class StopSignals:
    """Within ``with``, SIGTERM and SIGINT are recorded instead of killing the process, so the
    runner can finish its chunk, checkpoint, and exit cleanly."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _record(self, signum, frame):
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def logged_failures(table: dict, num_members: int, done: int, boundary: int, phase_metrics):
    """Failures found again in the logged metrics (``table``, ``done`` updates per member) of a
    resumed run, each phase's rows in that phase's metrics (``phase_metrics``: second phase or
    not -> names; the other phase's columns are empty there); ``boundary``: the first phase's
    updates (None in a one-phase run)."""
    failures = {}
    spans = [(False, 0, done if boundary is None else min(done, boundary))]
    spans += [(True, boundary, done)] if boundary is not None else []
    for later, begin, end in spans:
        if end <= begin:
            continue
        metrics = {
            name: table[name].reshape(num_members, done)[:, begin:end]
            for name in phase_metrics[later]
        }
        found = first_failures(metrics, np.arange(begin + 1, end + 1), np.ones(num_members, bool))
        failures = found | failures  # the earlier phase's failure first
    return failures
