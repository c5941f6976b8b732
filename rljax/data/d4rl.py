"""The D4RL HDF5 layout (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven RL"), local only.

A D4RL file is one HDF5 file of flat, row-aligned arrays: ``observations`` (N, obs_dim),
``actions`` (N, act_dim), ``rewards``, ``terminals``, ``timeouts`` (N,), optionally
``next_observations`` and ``infos/*`` (``infos/qpos``, ...), and, in the published files, a
``metadata/*`` group of policy weights that is not row-aligned. Rows run episode after episode;
``terminals`` marks true termination and ``timeouts`` a time limit.

``load_d4rl`` turns the rows into transitions as ``d4rl.qlearning_dataset`` (default
``terminate_on_end=False``) does: row i pairs with row i + 1 as its next observation, a row whose
``timeouts`` is set is dropped (its successor starts the next episode, so it has no valid next
observation), and the last row is always dropped. The file's own ``next_observations``, where
present, is ignored, as qlearning_dataset ignores it. Episode boundaries that the dropped rows
would hide are kept in ``Dataset.timeouts`` (see ``rljax.data.dataset``). ``rewards``,
``terminals`` and ``timeouts`` of shape (N, 1) are read as (N,), as D4RL's ``get_dataset``
squeezes the first two.

A file without ``timeouts`` (some hand-made and older files) needs the env's time limit,
``max_episode_steps`` (``--max-episode-steps`` on the command line): the row at which an
episode reaches it is a timeout. Here an episode's steps are counted from 0 at its first row,
after a timeout or a terminal alike. D4RL's own counter differs after a terminal: it resets to
0 and then counts the terminal row, so the episode after a terminal is cut one row early (its
row ``max_episode_steps - 2``, counting from 0, is dropped as a timeout, and the real last row is
kept, paired with the next episode's first observation). rljax does not reproduce that
off-by-one; after a timeout the two agree.

What rljax writes on top of the layout, both ignored by D4RL's own reader: the dataset's metadata
(reference returns ``ref_min_score``/``ref_max_score``, how it was generated) as a JSON string in
the root attribute ``rljax_metadata``, so it travels with the file; and the file's SHA-256 in a
sidecar ``<file>.sha256`` in ``sha256sum`` format (a file cannot hold its own checksum), so
``sha256sum -c`` checks it too. Files without a sidecar (the published ones) load unverified.
"""

import json
import os
from pathlib import Path

import h5py
import numpy as np

from rljax.data.dataset import (
    Dataset,
    DatasetError,
    MalformedDataset,
    check_arrays,
    check_values,
    not_found,
    verify_sidecar,
    write_sidecar,
)

REQUIRED = ("observations", "actions", "rewards", "terminals")
ROW_ALIGNED = ("timeouts", "next_observations")
METADATA_ATTR = "rljax_metadata"


def dataset_dir() -> Path:
    """Where D4RL caches its files: ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def resolve(path) -> Path:
    """``path`` if it exists, else under ``dataset_dir()``; DatasetNotFound if neither."""
    path = Path(path).expanduser()
    if path.exists():
        return path
    cached = dataset_dir() / path
    if not path.is_absolute() and cached.exists():
        return cached
    where = path if path.is_absolute() else f"{path} (nor at {cached})"
    raise not_found(where, "D4RL HDF5 file")


def _check(arrays: dict, source: str) -> None:
    keys = [*REQUIRED, *(k for k in ROW_ALIGNED if k in arrays)]
    keys += sorted(k for k in arrays if k.startswith("infos/"))
    check_arrays(arrays, keys, source)
    check_values(arrays, source)


def write_d4rl(path, arrays: dict, metadata: dict | None = None) -> str:
    """Writes ``arrays`` (``infos/x`` keys become a group) and returns the file's SHA-256.

    Arrays are written with their dtypes unchanged, so ``read_d4rl`` gives them back bit for bit.
    Arrays that ``read_d4rl`` would refuse (``rljax.data.dataset.check_values``) are refused
    here. The file is written beside ``path`` and renamed over it, so a failed write leaves any
    file already at ``path`` as it was.
    """
    _check(arrays, f"write_d4rl({os.fspath(path)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with h5py.File(partial, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=np.asarray(value))
            f.attrs[METADATA_ATTR] = json.dumps(metadata or {}, default=_json_default)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return write_sidecar(path)


def _json_default(x):
    if isinstance(x, np.generic | np.ndarray):
        return x.tolist()
    raise TypeError(f"metadata value {x!r} is not JSON-serializable")


def read_d4rl(path, verify: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """The file's raw arrays (``infos/qpos`` style keys) and its metadata, checked, with
    (N, 1) columns squeezed (``squeeze_columns``).

    Raises DatasetNotFound, MalformedDataset (a missing key, a key whose shape disagrees, or
    values ``rljax.data.dataset.check_values`` refuses: non-numeric or non-finite observations,
    actions, rewards, flags that are not 0/1; the message names the key and the file row), or
    ChecksumMismatch when a ``.sha256`` sidecar exists and ``verify`` is true.
    """
    path = resolve(path)
    if verify:
        verify_sidecar(path)
    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda name, obj: (
                    arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
                )
            )
            metadata = json.loads(f.attrs.get(METADATA_ATTR, "{}"))
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file: {e}") from None
    arrays = squeeze_columns(arrays)
    _check(arrays, str(path))
    return arrays, metadata


def squeeze_columns(arrays: dict) -> dict:
    """``rewards``, ``terminals`` and ``timeouts`` of shape (N, 1) as (N,), as D4RL reads them."""
    return {
        k: v[:, 0] if k in ("rewards", "terminals", "timeouts") and np.ndim(v) == 2
        and np.shape(v)[1] == 1 else v
        for k, v in arrays.items()
    }  # fmt: skip


def qlearning_arrays(arrays: dict, max_episode_steps: int | None = None) -> dict[str, np.ndarray]:
    """Rows to transitions with ``d4rl.qlearning_dataset`` semantics (see the module docstring).

    ``max_episode_steps`` infers the timeouts of a file that has none (the module docstring says
    how, and where D4RL's counter differs); a file with its own ``timeouts`` refuses it.
    """
    arrays = squeeze_columns(arrays)
    _check(arrays, "qlearning_arrays")
    n = len(arrays["rewards"])
    terminals = np.asarray(arrays["terminals"]).astype(bool)
    if "timeouts" in arrays:
        if max_episode_steps is not None:
            raise MalformedDataset(
                "the file has its own 'timeouts'; max_episode_steps (--max-episode-steps) "
                "infers them only for a file without"
            )
        timeouts = np.asarray(arrays["timeouts"]).astype(bool)
    elif max_episode_steps is None:
        raise MalformedDataset(
            "missing key 'timeouts': pass the env's time limit, max_episode_steps "
            "(--max-episode-steps N), to infer them as D4RL does"
        )
    elif max_episode_steps < 1:
        raise MalformedDataset(f"max_episode_steps={max_episode_steps} must be >= 1")
    else:
        timeouts = np.zeros(n, bool)
        step = 0
        for i in range(n - 1):
            timeouts[i] = step == max_episode_steps - 1
            step = 0 if timeouts[i] or terminals[i] else step + 1
    keep = np.flatnonzero(~timeouts[:-1])  # rows 0..n-2 that are not timeouts
    # A kept row ends its episode without termination when its successor is a dropped timeout row
    # or the last row of the file.
    ends = (timeouts[keep + 1] | (keep + 1 == n - 1)) & ~terminals[keep]
    obs = np.asarray(arrays["observations"])
    return {
        "observations": obs[keep],
        "actions": np.asarray(arrays["actions"])[keep],
        "rewards": np.asarray(arrays["rewards"])[keep],
        "terminals": terminals[keep],
        "timeouts": ends,
        "next_observations": obs[keep + 1],
    }


def load_d4rl(
    path, verify: bool = True, max_episode_steps: int | None = None
) -> tuple[Dataset, dict]:
    """A D4RL file as a device ``Dataset`` with qlearning_dataset semantics, and its metadata.

    A file with fewer than two rows holds no transition: MalformedDataset ("holds 0
    transitions"), as for any file whose rows are all dropped."""
    arrays, metadata = read_d4rl(path, verify=verify)
    rows = len(arrays["rewards"])
    transitions = qlearning_arrays(arrays, max_episode_steps)
    source = f"{resolve(path)} ({rows} row{'s' if rows != 1 else ''})"
    return Dataset.from_arrays(source, **transitions), metadata
