"""The OGBench ``.npz`` layout (Park et al. 2025, "OGBench"), local only.

A dataset is ``<dir>/<name>.npz`` with its validation split ``<dir>/<name>-val.npz``; ``<dir>``
defaults to OGBench's ``~/.ogbench/data``. Each file holds row-aligned ``observations``,
``actions`` and ``terminals`` (plus ``qpos``, ``qvel``, ... when recorded with infos). Rows run
trajectory after trajectory, and each trajectory's last row is its final observation with a dummy
action, marked ``terminals = 1``.

``load_ogbench`` follows ``ogbench.utils.load_dataset(compact_dataset=False)``: the last row of
each trajectory is dropped and the others pair with the row after them. OGBench's trajectories
end at a time limit, never by termination, so its shifted ``terminals`` (1 on a trajectory's last
transition) become ``Dataset.timeouts`` and ``Dataset.terminals`` is zero. Goal-conditioned
datasets have no rewards; ``rewards`` is zero, and agents compute theirs from relabelled goals.

Single-task data (``pointmaze-medium-navigate-singletask-task1-v0``): OGBench publishes no
separate files for it; ``ogbench.make_env_and_datasets`` loads the goal-conditioned file and
``ogbench.relabel_utils.relabel_dataset`` adds ``rewards`` (successes minus one: 0 at the task's
goal, -1 elsewhere, for the maze tasks) and ``masks`` (0 where the task is solved, so the value
is not bootstrapped there), both computed from each transition's own state (``qpos`` kept at
the transition's row). A file that carries them (a relabelled dataset saved with
``np.savez``) is read in the layout its keys name, as OGBench's loader would have produced it:

* the rows above (no ``next_observations``, no ``valids``): ``rewards``/``masks`` per row, row
  t's values belonging to the transition from row t;
* ``compact_dataset=True``: ``valids`` marks the rows that are transitions (each pairs with the
  row after it) and ``terminals`` a trajectory's last transition;
* ``compact_dataset=False``: ``next_observations`` present, every row a transition, and
  ``terminals`` a trajectory's last transition.

There ``Dataset.rewards`` are the file's ``rewards``, ``Dataset.terminals`` is ``1 - masks`` (as
OGBench's agents bootstrap with ``masks``) and ``Dataset.timeouts`` marks trajectory ends that
are not also terminals. A success inside a trajectory is therefore a terminal although the
recorded trajectory goes on, as in OGBench. A file with ``rewards`` but no ``masks`` (or the
reverse) cannot be read right and is refused by name. The last two layouts apply without
rewards too (a goal-conditioned dataset saved after loading).

Checked against ogbench 1.2.2 (``tests/test_real_ogbench.py``): ``ogbench.utils.load_dataset``
(compact or not) reads our files as transitions equal to ours, and OGBench's own rows, loaded and
relabelled by ``relabel_dataset`` and saved in each layout above, read here as OGBench's agents
see them.

Written files carry the metadata as a JSON string under the extra key ``rljax_metadata`` (OGBench
reads only the keys it knows) and their SHA-256 in a ``<file>.sha256`` sidecar, as in
``rljax.data.d4rl``.
"""

import json
import os
from pathlib import Path

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

REQUIRED = ("observations", "actions", "terminals")
METADATA_KEY = "rljax_metadata"


def dataset_file(name, dataset_dir=None, val: bool = False) -> Path:
    """``name`` itself if it ends in ``.npz``, else ``<dataset_dir>/<name>[-val].npz``."""
    path = Path(name).expanduser()
    if path.suffix == ".npz":
        return path
    directory = Path(dataset_dir or "~/.ogbench/data").expanduser()
    return directory / f"{name}{'-val' if val else ''}.npz"


def _check(arrays: dict, source: str) -> None:
    check_arrays(arrays, [*REQUIRED, *sorted(k for k in arrays if k not in REQUIRED)], source)
    check_values(arrays, source)
    if ("rewards" in arrays) != ("masks" in arrays):
        has, lacks = ("rewards", "masks") if "rewards" in arrays else ("masks", "rewards")
        raise MalformedDataset(
            f"{source}: has {has!r} but no {lacks!r}; OGBench single-task data carries both "
            "(masks = 0 where the task is solved), and without both the transitions' rewards or "
            "terminations cannot be read right"
        )


def write_ogbench(path, arrays: dict, metadata: dict | None = None) -> str:
    """Writes ``arrays`` (OGBench keys, row-aligned) as a compressed .npz; returns its SHA-256.

    Arrays that ``read_ogbench`` would refuse are refused here. The file is written beside
    ``path`` and renamed over it, so a failed write leaves a file already at ``path`` as it was.
    """
    _check(arrays, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as f:  # a file object, so numpy does not append a second .npz
            np.savez_compressed(f, **arrays, **{METADATA_KEY: json.dumps(metadata or {})})
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return write_sidecar(path)


def read_ogbench(
    name, dataset_dir=None, val: bool = False, verify: bool = True
) -> tuple[dict[str, np.ndarray], dict]:
    """The file's raw rows and its metadata, checked like ``rljax.data.d4rl.read_d4rl``."""
    path = dataset_file(name, dataset_dir, val)
    if not path.exists():
        raise not_found(path, "OGBench dataset")
    if verify:
        verify_sidecar(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable .npz file: {e}") from None
    metadata = json.loads(str(arrays.pop(METADATA_KEY, "{}")))
    _check(arrays, str(path))
    return arrays, metadata


def transitions(arrays: dict, source: str = "ogbench.transitions") -> dict[str, np.ndarray]:
    """Rows to transitions as ``ogbench.utils.load_dataset`` does, in the layout the keys name
    (module docstring); single-task ``rewards`` and ``masks`` are kept."""
    _check(arrays, source)
    flags = np.asarray(arrays["terminals"]).astype(bool)
    obs = np.asarray(arrays["observations"])
    n = len(flags)
    if "next_observations" in arrays:  # compact_dataset=False: every row a transition
        keep = np.arange(n)
        next_obs = np.asarray(arrays["next_observations"])
        ends = flags.copy()
        ends[-1:] = True  # the end of the recorded data ends its trajectory
    else:
        if "valids" in arrays:  # compact_dataset=True: terminals marks the last transition
            keep = np.flatnonzero(np.asarray(arrays["valids"]).astype(bool))
            ends = flags[keep]
            what = "valids=1"
        else:  # the rows as OGBench writes them: terminals marks the final observation
            keep = np.flatnonzero(~flags)
            ends = flags[np.minimum(keep + 1, n - 1)]
            what = "terminals=0"
        if len(keep) and keep[-1] == n - 1:
            raise MalformedDataset(
                f"{source}: the last row ({keep[-1]}) has {what}, so the last trajectory has no "
                "final observation"
            )
        next_obs = obs[keep + 1]
    if "rewards" in arrays:
        rewards = np.asarray(arrays["rewards"], np.float32)[keep]
        terminals = ~np.asarray(arrays["masks"]).astype(bool)[keep]
    else:
        rewards = np.zeros(len(keep), np.float32)
        terminals = np.zeros(len(keep), bool)
    return {
        "observations": obs[keep],
        "actions": np.asarray(arrays["actions"])[keep],
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": ends & ~terminals,
        "next_observations": next_obs,
    }


def load_ogbench(
    name, dataset_dir=None, val: bool = False, verify: bool = True
) -> tuple[Dataset, dict]:
    """An OGBench file (a path, or a dataset name under ``dataset_dir``) as a device Dataset."""
    arrays, metadata = read_ogbench(name, dataset_dir, val, verify)
    path = dataset_file(name, dataset_dir, val)
    rows = len(arrays["terminals"])
    source = f"{path} ({rows} row{'s' if rows != 1 else ''})"
    return Dataset.from_arrays(source, **transitions(arrays, source)), metadata
