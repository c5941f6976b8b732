"""The offline ``Dataset``: flat transitions on device, sampled inside jit.

Every loader in ``rljax.data`` returns the same six arrays, whatever the file layout:

* ``observations`` (N, *obs_shape), ``actions`` (N, *act_shape), ``next_observations`` like
  ``observations``: float32 (actions keep an integer dtype when the file has one, for discrete
  action spaces).
* ``rewards`` (N,) float32.
* ``terminals`` (N,) float32: 1 where the environment terminated after this transition (no
  bootstrap: the Bellman mask is ``1 - terminals``).
* ``timeouts`` (N,) float32: 1 where the episode ended after this transition *without*
  termination (a time limit, or the end of the recorded data). ``next_observations`` is valid
  there, so agents bootstrap through it; ``terminals + timeouts`` marks every episode boundary,
  which return-based reward scaling and goal relabelling need.

IO stays in numpy on the host (``rljax.data.d4rl``, ``rljax.data.minari``); ``Dataset.from_arrays``
converts once, and ``sample`` draws a batch inside jit without leaving the device.
"""

import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message says which file and why."""


class DatasetNotFound(DatasetError, FileNotFoundError):
    """No file where a dataset was expected; the message names the path and how to produce it.

    Also a FileNotFoundError, which is what minari's own offline loader raises.
    """


class MalformedDataset(DatasetError):
    """A file that lacks a key or holds arrays of the wrong shape; the message names them."""


class ChecksumMismatch(DatasetError):
    """A data file whose SHA-256 differs from the one recorded when it was written."""


class DatasetExists(DatasetError, FileExistsError):
    """Writing would overwrite dataset files; the message lists them (pass force to replace)."""


class UnwritableOutput(DatasetError):
    """A directory that datasets cannot be written to; the message names it and the OSError."""


def not_found(path, what: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"no {what} at {path}: generate it (e.g. with the rljax.data writers) or copy it there. "
        "rljax never downloads datasets."
    )


def sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path, expected: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"{os.fspath(path)} has SHA-256 {actual} but {expected} was recorded when it was "
            "written: the file changed or is truncated (pass verify=False to load it anyway)"
        )


def write_sidecar(path) -> str:
    """Records ``path``'s SHA-256 in ``<path>.sha256`` (``sha256sum`` format) and returns it."""
    digest = sha256(path)
    Path(f"{path}.sha256").write_text(f"{digest}  {Path(path).name}\n")
    return digest


def verify_sidecar(path) -> None:
    """Checks ``path`` against its ``<path>.sha256``; files without one are not checked."""
    sidecar = Path(f"{path}.sha256")
    if sidecar.exists():
        recorded = sidecar.read_text().split()
        verify_sha256(path, recorded[0] if recorded else "(an empty sidecar)")


@struct.dataclass
class Dataset:
    """Row-aligned transitions on device; the fields are described in the module docstring."""

    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    terminals: jax.Array
    timeouts: jax.Array
    next_observations: jax.Array

    @property
    def size(self) -> int:
        return self.rewards.shape[0]

    @classmethod
    def from_arrays(cls, source: str = "arrays", **arrays) -> "Dataset":
        """Checks the six arrays (``check_transitions``) and puts them on the default device;
        ``source`` (a file) starts any error message."""
        check_transitions(arrays, source)
        return cls(**{k: jnp.asarray(_as_float32(arrays[k])) for k in FIELDS})

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(getattr(self, k)) for k in FIELDS}


def _as_float32(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    return x


def check_arrays(arrays: dict, keys, source: str, ndims: dict | None = None) -> None:
    """Raises MalformedDataset naming the first missing key, or a key whose length or ndim is off.

    ``ndims`` maps a key to the exact number of dimensions it must have; by default
    ``rewards``, ``terminals``, ``timeouts`` (and Minari's ``terminations``, ``truncations``)
    must be 1-D and everything else at least 1-D.
    """
    ndims = {k: 1 for k in ("rewards", "terminals", "timeouts", "terminations", "truncations")} | (
        ndims or {}
    )
    for key in keys:
        if key not in arrays:
            raise MalformedDataset(f"{source}: missing key {key!r} (has {sorted(arrays)})")
    shapes = {k: np.shape(arrays[k]) for k in keys}
    for key, shape in shapes.items():
        want = ndims.get(key)
        if (want is not None and len(shape) != want) or len(shape) == 0:
            raise MalformedDataset(
                f"{source}: {key!r} has shape {shape}; expected {want or 'at least 1'} dimension(s)"
            )
    first = keys[0]
    for key, shape in shapes.items():
        if shape[0] != shapes[first][0]:
            raise MalformedDataset(
                f"{source}: {key!r} has {shape[0]} rows (shape {shape}) but {first!r} has "
                f"{shapes[first][0]} (shape {shapes[first]})"
            )


# Keys whose values are checked wherever they appear, in a file's rows or in transitions.
NUMERIC = ("observations", "next_observations", "actions", "rewards")
FINITE = NUMERIC
BINARY = ("terminals", "timeouts", "terminations", "truncations", "masks", "valids")


def check_values(arrays: dict, source: str) -> None:
    """Raises MalformedDataset naming the key and the problem: observations, actions or rewards
    of a non-numeric dtype (byte strings, objects), a non-finite value in them (the first bad
    row), or flags (``terminals``, ``timeouts``, ...) that are not 0/1. Keys that are absent are
    not checked; shapes are ``check_arrays``' job."""
    for key in NUMERIC:
        if key in arrays:
            dtype = np.asarray(arrays[key]).dtype
            if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
                raise MalformedDataset(
                    f"{source}: {key!r} has dtype {dtype}; expected numbers (float, int or bool)"
                )
    for key in FINITE:
        x = np.asarray(arrays.get(key, ()))
        if np.issubdtype(x.dtype, np.inexact) and x.size:
            bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
            if bad.any():
                row = int(np.argmax(bad))
                raise MalformedDataset(
                    f"{source}: {key!r} has {int(bad.sum())} row(s) with NaN or inf, the first "
                    f"row {row}: {_show(x[row])}"
                )
    for key in BINARY:
        if key in arrays:
            x = np.asarray(arrays[key])
            if x.dtype == np.bool_:
                continue
            if not (np.issubdtype(x.dtype, np.number)):
                raise MalformedDataset(f"{source}: {key!r} has dtype {x.dtype}; expected 0/1 flags")
            bad = (x != 0) & (x != 1)
            if bad.any():
                row = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
                raise MalformedDataset(
                    f"{source}: {key!r} must be 0/1 (or bool) but row {row} holds {_show(x[row])}"
                )


def _show(value) -> str:
    return np.array2string(np.asarray(value), threshold=8, edgeitems=3)


def check_transitions(arrays: dict, source: str) -> None:
    """The six ``FIELDS`` as ``Dataset`` holds them: present, row-aligned, at least one
    transition, and ``check_values``; MalformedDataset otherwise."""
    check_arrays(arrays, FIELDS, source)
    if len(arrays["rewards"]) == 0:
        raise MalformedDataset(
            f"{source}: holds 0 transitions; an agent needs at least one (observation, action, "
            "reward, next observation)"
        )
    check_values(arrays, source)


def sample(dataset: Dataset, rng: jax.Array, batch_size: int) -> Dataset:
    """A batch of ``batch_size`` transitions drawn uniformly with replacement; jittable.

    ``batch_size`` must be static (a Python int), as every shape under jit.
    """
    idx = jax.random.randint(rng, (batch_size,), 0, dataset.size)
    return jax.tree.map(lambda x: x[idx], dataset)


def episode_returns(rewards, terminals, timeouts) -> np.ndarray:
    """Undiscounted return of each episode, on the host, in order.

    Episodes end where ``terminals`` or ``timeouts`` is set; transitions after the last boundary
    form an incomplete episode and are left out.
    """
    rewards = np.asarray(rewards, np.float64)
    ends = np.flatnonzero((np.asarray(terminals) > 0) | (np.asarray(timeouts) > 0))
    sums = np.cumsum(rewards)[ends]
    return np.diff(sums, prepend=0.0)
