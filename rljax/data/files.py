"""Datasets by name: a path, or a name looked up in the data directories, in any layout.

``rljax train iql --dataset pendulum-medium-replay`` finds ``pendulum-medium-replay.hdf5`` in
rljax's data directory (``$RLJAX_DATA_DIR``, default ``~/.rljax/datasets``), where ``rljax data
generate`` writes; then in D4RL's, OGBench's and Minari's own directories. The layout follows
from the file: ``.hdf5`` is D4RL, ``.npz`` is OGBench, a directory with ``metadata.json`` is
Minari.
"""

import json
import os
from pathlib import Path

import h5py
import numpy as np

from rljax.data import d4rl, minari, ogbench
from rljax.data.dataset import Dataset, DatasetError, DatasetNotFound


def data_dir() -> Path:
    """``$RLJAX_DATA_DIR`` or ``~/.rljax/datasets``: where generated datasets are written."""
    return Path(os.environ.get("RLJAX_DATA_DIR", "~/.rljax/datasets")).expanduser()


def _candidates(name: str) -> list[Path]:
    return [
        data_dir() / f"{name}.hdf5",
        data_dir() / f"{name}.npz",
        d4rl.dataset_dir() / f"{name}.hdf5",
        ogbench.dataset_file(name),
        minari.dataset_root() / name,
    ]


def resolve(name, hint: str | None = None) -> Path:
    """``name`` if it is an existing file or directory, else the first data directory entry
    called ``name``; DatasetNotFound lists every place looked at, and ``hint`` says how to make
    the dataset."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    found = [p for p in _candidates(str(name)) if p.is_file() or (p / "metadata.json").exists()]
    if found and "/" not in str(name):
        return found[0]
    looked = [path] if "/" in str(name) else [path, *_candidates(str(name))]
    where = "\n".join(f"  {p}" for p in looked)
    how = hint or "generate it with `rljax data generate ENV --kind KIND`, or copy it there"
    raise DatasetNotFound(f"no dataset {name!r}; looked at:\n{where}\n{how}")


def load(name, verify: bool = True, hint: str | None = None) -> tuple[Dataset, dict]:
    """The dataset (on device) and its metadata, whatever its layout."""
    path = resolve(name, hint)
    if path.is_dir():
        return minari.load_minari(path, verify=verify)
    if path.suffix == ".npz":
        return ogbench.load_ogbench(path, verify=verify)
    return d4rl.load_d4rl(path, verify=verify)


def metadata(name, hint: str | None = None) -> dict:
    """A dataset's metadata without reading its arrays."""
    path = resolve(name, hint)
    try:
        if path.is_dir():
            return json.loads((path / "metadata.json").read_text())
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return json.loads(str(f[ogbench.METADATA_KEY])) if ogbench.METADATA_KEY in f else {}
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs.get(d4rl.METADATA_ATTR, "{}"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable dataset: {e}") from None
