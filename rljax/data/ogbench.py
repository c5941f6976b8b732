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
Single-task files (with ``rewards`` and ``masks``) are not handled here yet.

Written files carry the metadata as a JSON string under the extra key ``rljax_metadata`` (OGBench
reads only the keys it knows) and their SHA-256 in a ``<file>.sha256`` sidecar, as in
``rljax.data.d4rl``.
"""

import json
from pathlib import Path

import numpy as np

from rljax.data.dataset import (
    Dataset,
    DatasetError,
    check_arrays,
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


def write_ogbench(path, arrays: dict, metadata: dict | None = None) -> str:
    """Writes ``arrays`` (OGBench keys, row-aligned) as a compressed .npz; returns its SHA-256."""
    check_arrays(arrays, [*REQUIRED, *sorted(k for k in arrays if k not in REQUIRED)], str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object, so numpy does not append a second .npz
        np.savez_compressed(f, **arrays, **{METADATA_KEY: json.dumps(metadata or {})})
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
    check_arrays(arrays, [*REQUIRED, *sorted(k for k in arrays if k not in REQUIRED)], str(path))
    return arrays, metadata


def transitions(arrays: dict) -> dict[str, np.ndarray]:
    """Rows to transitions as ``ogbench.utils.load_dataset(compact_dataset=False)`` does."""
    check_arrays(arrays, REQUIRED, "ogbench.transitions")
    ends = np.asarray(arrays["terminals"]).astype(bool)
    keep = np.flatnonzero(~ends)
    if len(keep) and keep[-1] == len(ends) - 1:
        raise DatasetError(
            f"ogbench.transitions: the last row ({keep[-1]}) has terminals=0, so the last "
            "trajectory has no final observation"
        )
    obs = np.asarray(arrays["observations"])
    return {
        "observations": obs[keep],
        "actions": np.asarray(arrays["actions"])[keep],
        "rewards": np.zeros(len(keep), np.float32),
        "terminals": np.zeros(len(keep), bool),
        "timeouts": ends[keep + 1],
        "next_observations": obs[keep + 1],
    }


def load_ogbench(
    name, dataset_dir=None, val: bool = False, verify: bool = True
) -> tuple[Dataset, dict]:
    """An OGBench file (a path, or a dataset name under ``dataset_dir``) as a device Dataset."""
    arrays, metadata = read_ogbench(name, dataset_dir, val, verify)
    return Dataset.from_arrays(**transitions(arrays)), metadata
