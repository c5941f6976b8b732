"""The Minari on-disk layout (Farama Minari 0.5, HDF5 backend), read and written without minari.

A dataset is a directory ``<root>/<dataset_id>/`` (an id ``ns/env/name-v0`` is nested
directories) with ``metadata.json`` and ``data/main_data.hdf5``. The HDF5 file holds one group
``episode_{id}`` per episode, with attributes ``id``, ``total_steps`` (T) and optionally ``seed``,
and datasets ``observations`` (T + 1 rows: the reset observation, then one per step),
``actions``, ``rewards``, ``terminations``, ``truncations`` (T rows), and an ``infos`` group.
``root`` is ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``, as in minari.

Only flat observation and action spaces (Box, Discrete) are read: Dict and Tuple spaces, stored as
nested groups, raise MalformedDataset. Minari's Arrow backend is not read.

The writer records the SHA-256 of ``data/main_data.hdf5`` under the extra metadata key
``rljax_sha256`` (minari ignores keys it does not know), and the reference returns, when given,
under Minari's own ``ref_min_score``/``ref_max_score``. It does not know the environment's
spaces: pass ``observation_space``/``action_space``/``env_spec`` (Minari's JSON strings) in
``metadata`` to record them; otherwise unbounded Box spaces of the right shape are written.
"""

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from rljax.data.dataset import (
    Dataset,
    DatasetError,
    MalformedDataset,
    check_values,
    not_found,
    sha256,
    verify_sha256,
)

DATA_FILE = "data/main_data.hdf5"
STEP_KEYS = ("actions", "rewards", "terminations", "truncations")


def dataset_root() -> Path:
    """``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")).expanduser()


def dataset_dir(dataset, root=None) -> Path:
    """``dataset`` itself if it is a dataset directory, else ``<root>/<dataset>`` (an id)."""
    path = Path(dataset).expanduser()
    if (path / "metadata.json").exists():
        return path
    return Path(root).expanduser() / dataset if root is not None else dataset_root() / dataset


def _box(x: np.ndarray) -> str:
    shape = list(x.shape[1:])
    low, high = np.full(shape, -np.inf).tolist(), np.full(shape, np.inf).tolist()
    return json.dumps(
        {"type": "Box", "dtype": str(x.dtype), "shape": shape, "low": low, "high": high}
    )


def write_minari(directory, episodes: list[dict], metadata: dict | None = None) -> dict:
    """Writes ``episodes`` as the dataset directory ``directory``; returns the metadata written.

    Each episode is a dict with ``observations`` (T + 1 rows), ``actions``, ``rewards``,
    ``terminations``, ``truncations`` (T rows), optionally ``infos`` (a dict of arrays) and
    ``seed``. Arrays keep their dtypes, so ``read_minari`` gives them back bit for bit.
    """
    directory = Path(directory)
    for i, episode in enumerate(episodes):
        _check_episode(episode, f"write_minari: episode {i}")
    data_file = directory / DATA_FILE
    data_file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(data_file, "w", track_order=True) as f:
        for i, episode in enumerate(episodes):
            group = f.create_group(f"episode_{i}")
            group.attrs["id"] = i
            group.attrs["total_steps"] = len(episode["rewards"])
            if episode.get("seed") is not None:
                group.attrs["seed"] = episode["seed"]
            for key in ("observations", *STEP_KEYS):
                group.create_dataset(key, data=np.asarray(episode[key]))
            infos = group.create_group("infos")
            for key, value in (episode.get("infos") or {}).items():
                infos.create_dataset(key, data=np.asarray(value))
    first = episodes[0] if episodes else None
    written = {
        "dataset_id": directory.name,
        "total_episodes": len(episodes),
        "total_steps": int(sum(len(e["rewards"]) for e in episodes)),
        "data_format": "hdf5",
        **(
            {
                "observation_space": _box(np.asarray(first["observations"])),
                "action_space": _box(np.asarray(first["actions"])),
            }
            if first is not None
            else {}
        ),
        **(metadata or {}),
        "rljax_sha256": {DATA_FILE: sha256(data_file)},
    }
    (directory / "metadata.json").write_text(json.dumps(written, indent=2))
    return written


def _check_episode(episode: dict, source: str) -> None:
    for key in ("observations", *STEP_KEYS):
        if key not in episode:
            raise MalformedDataset(f"{source}: missing key {key!r} (has {sorted(episode)})")
    shapes = {k: np.shape(episode[k]) for k in ("observations", *STEP_KEYS)}
    for key in ("rewards", "terminations", "truncations"):
        if len(shapes[key]) != 1:
            raise MalformedDataset(f"{source}: {key!r} has shape {shapes[key]}; expected 1-D")
    if len(shapes["observations"]) == 0 or len(shapes["actions"]) == 0:
        raise MalformedDataset(f"{source}: observations/actions must be at least 1-D, got {shapes}")
    steps = shapes["rewards"][0]
    for key in ("actions", "terminations", "truncations"):
        if shapes[key][0] != steps:
            raise MalformedDataset(
                f"{source}: {key!r} has {shapes[key][0]} rows (shape {shapes[key]}) but "
                f"'rewards' has {steps} (shape {shapes['rewards']})"
            )
    if shapes["observations"][0] != steps + 1:
        raise MalformedDataset(
            f"{source}: 'observations' has {shapes['observations'][0]} rows (shape "
            f"{shapes['observations']}); expected {steps + 1}, one more than 'rewards' "
            f"(shape {shapes['rewards']}), for the reset observation"
        )
    check_values(episode, source)


def read_minari(dataset, root=None, verify: bool = True) -> tuple[list[dict], dict]:
    """The episodes (dicts as ``write_minari`` takes them, plus ``id``) and ``metadata.json``.

    Raises DatasetNotFound, MalformedDataset, or ChecksumMismatch when ``rljax_sha256`` is recorded
    and ``verify`` is true.
    """
    directory = dataset_dir(dataset, root)
    if not (directory / "metadata.json").exists():
        raise not_found(directory / "metadata.json", "Minari dataset")
    metadata = json.loads((directory / "metadata.json").read_text())
    if metadata.get("data_format", "hdf5") != "hdf5":
        raise DatasetError(
            f"{directory}: data_format {metadata['data_format']!r} is not read; only 'hdf5' is"
        )
    data_file = directory / DATA_FILE
    if not data_file.exists():
        raise not_found(data_file, "Minari data file")
    if verify:
        for name, digest in metadata.get("rljax_sha256", {}).items():
            verify_sha256(directory / name, digest)
    episodes = []
    with h5py.File(data_file, "r") as f:
        names = sorted(
            f, key=lambda n: int(m[1]) if (m := re.fullmatch(r"episode_(\d+)", n)) else -1
        )
        for name in names:
            group = f[name]
            source = f"{data_file}: {name}"
            if not isinstance(group, h5py.Group) or not name.startswith("episode_"):
                raise MalformedDataset(f"{source}: expected only groups named episode_{{id}}")
            episode = {"id": int(group.attrs.get("id", name.removeprefix("episode_")))}
            for key in ("observations", *STEP_KEYS):
                if isinstance(group.get(key), h5py.Group):
                    raise MalformedDataset(
                        f"{source}: {key!r} is a group (a Dict or Tuple space); rljax reads "
                        "flat Box and Discrete spaces only"
                    )
                if key in group:
                    episode[key] = group[key][()]
            _check_episode(episode, source)
            total = group.attrs.get("total_steps")
            if total is not None and int(total) != len(episode["rewards"]):
                raise MalformedDataset(
                    f"{source}: attribute total_steps={int(total)} but 'rewards' has shape "
                    f"{episode['rewards'].shape}"
                )
            if "seed" in group.attrs:
                episode["seed"] = int(group.attrs["seed"])
            infos = group.get("infos")
            if isinstance(infos, h5py.Group):
                episode["infos"] = {
                    k: v[()] for k, v in infos.items() if isinstance(v, h5py.Dataset)
                }
            episodes.append(episode)
    return episodes, metadata


def episodes_to_arrays(episodes: list[dict]) -> dict[str, np.ndarray]:
    """Flat transitions; ``next_observations`` are each episode's observations shifted by one.

    ``terminals`` are Minari's ``terminations``; ``timeouts`` are its ``truncations`` where the
    step did not also terminate, and the last step of an episode that ends with neither flag (an
    unfinished recording), so every episode boundary stays visible.
    """
    parts = []
    for episode in episodes:
        obs = np.asarray(episode["observations"])
        terminals = np.asarray(episode["terminations"]).astype(bool)
        timeouts = np.asarray(episode["truncations"]).astype(bool) & ~terminals
        if len(timeouts):
            timeouts[-1] |= not terminals[-1]
        parts.append(
            {
                "observations": obs[:-1],
                "actions": np.asarray(episode["actions"]),
                "rewards": np.asarray(episode["rewards"]),
                "terminals": terminals,
                "timeouts": timeouts,
                "next_observations": obs[1:],
            }
        )
    if not parts:
        raise MalformedDataset("holds 0 transitions (no episodes)")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_minari(dataset, root=None, verify: bool = True) -> tuple[Dataset, dict]:
    """A Minari dataset (a directory, or an id under ``root``) as a device Dataset, and metadata."""
    episodes, metadata = read_minari(dataset, root, verify)
    try:
        arrays = episodes_to_arrays(episodes)
    except MalformedDataset as e:
        raise MalformedDataset(f"{dataset_dir(dataset, root)}: {e}") from None
    return Dataset.from_arrays(str(dataset_dir(dataset, root)), **arrays), metadata
