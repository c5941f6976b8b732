"""The Minari on-disk layout (Farama Minari 0.5, HDF5 backend), read and written without minari.

A dataset ``ns/env/name-v0`` is the directory ``<root>/ns/env/name-v0/`` (``root`` is
``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``, as in minari) holding two files:

* ``data/metadata.json``: ``dataset_id`` (the full id, which ``minari.list_local_datasets``
  checks against the folder), ``minari_version``, ``total_episodes``, ``total_steps``,
  ``data_format`` (``"hdf5"``), ``observation_space`` and ``action_space`` (JSON strings, as
  ``minari.serialization.serialize_space`` writes them), ``env_spec`` (a gymnasium
  ``EnvSpec.to_json()`` string) when known, ``dataset_size`` (MB) and any other keys.
* ``data/main_data.hdf5``: one group ``episode_{id}`` per episode, with attributes ``id``,
  ``total_steps`` (T) and optionally ``seed``, and datasets ``observations`` (T + 1 rows: the
  reset observation, then one per step), ``actions``, ``rewards``, ``terminations``,
  ``truncations`` (T rows), and an ``infos`` group.

Datasets that rljax wrote before it followed minari 0.5, with ``metadata.json`` beside ``data/``
rather than in it, are still read. Only flat observation and action spaces (Box, Discrete) are
read: Dict and Tuple spaces, stored as nested groups, raise MalformedDataset. Minari's Arrow
backend is not read.

The writer adds what minari needs to load and list the dataset, plus the SHA-256 of
``main_data.hdf5`` under the extra key ``rljax_sha256`` (minari ignores keys it does not know),
and marks each namespace folder with an empty ``namespace_metadata.json``, as
``minari.create_namespace`` does. Without ``observation_space``/``action_space`` in its
``metadata`` it records unbounded Box spaces of the data's shape and dtype.
"""

import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from rljax.data.dataset import (
    Dataset,
    DatasetError,
    DatasetExists,
    MalformedDataset,
    check_values,
    not_found,
    sha256,
    verify_sha256,
)

METADATA_FILE = "data/metadata.json"
OLD_METADATA_FILE = "metadata.json"  # rljax's layout before minari 0.5's
DATA_FILE = "data/main_data.hdf5"
NAMESPACE_FILE = "namespace_metadata.json"
STEP_KEYS = ("actions", "rewards", "terminations", "truncations")
# minari loads a dataset only if its minari_version is one of the exact strings it supports
# (0.4.0 to 0.5.3 in minari 0.5.3); the first 0.5 release is the one the earlier 0.5s know too.
MINARI_VERSION = "0.5.0"
# minari.dataset.minari_dataset.DATASET_ID_RE, with the version that parse_dataset_id requires.
DATASET_ID = re.compile(r"(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?-v\d+")
SPACES = ("observation_space", "action_space", "env_spec")


def dataset_root() -> Path:
    """``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")).expanduser()


def metadata_file(directory) -> Path | None:
    """The dataset directory's ``data/metadata.json``, or the older ``metadata.json`` beside
    ``data/``; None if it has neither."""
    for name in (METADATA_FILE, OLD_METADATA_FILE):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def dataset_dir(dataset, root=None) -> Path:
    """``dataset`` itself if it is a dataset directory (or its ``data/`` folder), else
    ``<root>/<dataset>``: an id, or an absolute path, which ``/`` leaves as it is."""
    path = Path(dataset).expanduser()
    if path.name == "data" and (path / "main_data.hdf5").exists():
        return path.parent
    if metadata_file(path) is not None:
        return path
    return Path(root or dataset_root()).expanduser() / path


def list_datasets(root=None) -> list[Path]:
    """The datasets under ``root`` (default ``dataset_root()``), found as
    ``minari.list_local_datasets`` finds them: a folder that has a ``data`` folder is a dataset
    and is not searched further; hidden folders (a write in progress) are skipped."""
    root = Path(root or dataset_root()).expanduser()
    found = []
    for child in sorted(root.iterdir()) if root.is_dir() else ():
        if child.is_dir() and not child.name.startswith("."):
            if (child / "data").is_dir():
                found += [child] if metadata_file(child) is not None else []
            else:
                found += list_datasets(child)
    return found


def read_metadata(dataset, root=None) -> dict:
    """A dataset's metadata (either layout) without reading its episodes."""
    directory = dataset_dir(dataset, root)
    path = metadata_file(directory)
    if path is None:
        raise not_found(directory / METADATA_FILE, "Minari dataset")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not readable JSON: {e}") from None


def box_space(low, high, shape, dtype: str = "float32") -> str:
    """Minari's JSON of a gymnasium Box with bounds ``low``, ``high`` (scalars or arrays)."""
    return json.dumps(
        {
            "type": "Box",
            "dtype": dtype,
            "shape": list(shape),
            "low": np.broadcast_to(low, shape).tolist(),
            "high": np.broadcast_to(high, shape).tolist(),
        }
    )


def _box(x: np.ndarray) -> str:
    """An unbounded Box: the data's bounds are not the env's, which are unknown here."""
    info = np.iinfo(x.dtype) if np.issubdtype(x.dtype, np.integer) else None
    low, high = (info.min, info.max) if info else (-np.inf, np.inf)
    return box_space(low, high, x.shape[1:], str(x.dtype))


def write_minari(
    dataset, episodes: list[dict], metadata: dict | None = None, root=None, force: bool = False
) -> Path:
    """Writes ``episodes`` as the dataset ``dataset`` and returns its directory.

    ``dataset`` is an id ``(namespace/)name-v(version)``, written under ``root`` (default
    ``dataset_root()``), or an absolute path. Each episode is a dict with ``observations`` (T + 1
    rows), ``actions``, ``rewards``, ``terminations``, ``truncations`` (T rows), optionally
    ``infos`` (a dict of arrays) and ``seed``; arrays keep their dtypes, so ``read_minari``
    gives them back bit for bit. ``metadata`` may hold Minari's ``observation_space``,
    ``action_space`` and ``env_spec`` (JSON strings or dicts) and any other JSON keys; the
    id, counts, version and checksum are computed. The dataset is written beside its place and
    renamed into it, so a failed write leaves nothing half-written there. An existing dataset
    is refused (DatasetExists) unless ``force``; anything else at that path is never replaced.
    """
    base = Path(root or dataset_root()).expanduser()
    target = base / Path(dataset).expanduser()
    inside = target.is_relative_to(base)
    dataset_id = target.relative_to(base).as_posix() if inside else target.name
    if inside and not DATASET_ID.fullmatch(dataset_id):
        raise DatasetError(
            f"{dataset_id!r} is not a Minari dataset id: ids are (namespace/)name-v(version), "
            "e.g. rljax/pendulum/medium-v0; give an absolute path to write a directory elsewhere"
        )
    if target.exists() and metadata_file(target) is None:
        raise DatasetExists(f"{target} already exists and is not a Minari dataset: not replaced")
    if target.exists() and not force:
        raise DatasetExists(
            f"{target} already exists; pass --force (force=True) to replace it, or choose "
            "another id"
        )
    for i, episode in enumerate(episodes):
        _check_episode(episode, f"write_minari: episode {i}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    )
    try:
        _write(partial, dataset_id, episodes, metadata or {})
        _replace(target, partial)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if inside:
        for folder in list(Path(dataset_id).parents)[:-1]:
            marker = base / folder / NAMESPACE_FILE
            if not marker.exists():
                marker.write_text("{}")
    return target


def _write(directory: Path, dataset_id: str, episodes: list[dict], metadata: dict) -> None:
    data_file = directory / DATA_FILE
    data_file.parent.mkdir()
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
    inferred = (
        {
            "observation_space": _box(np.asarray(episodes[0]["observations"])),
            "action_space": _box(np.asarray(episodes[0]["actions"])),
        }
        if episodes
        else {}
    )
    given = {
        k: v if k not in SPACES or isinstance(v, str) else json.dumps(v)
        for k, v in metadata.items()
    }
    written = {
        **inferred,
        **given,
        "dataset_id": dataset_id,
        "minari_version": MINARI_VERSION,
        "total_episodes": len(episodes),
        "total_steps": int(sum(len(e["rewards"]) for e in episodes)),
        "data_format": "hdf5",
        "dataset_size": round(data_file.stat().st_size / 1e6, 1),
        "rljax_sha256": {Path(DATA_FILE).name: sha256(data_file)},
    }
    (directory / METADATA_FILE).write_text(json.dumps(written, indent=2))


def _replace(target: Path, partial: Path) -> None:
    """Renames ``partial`` to ``target``, moving an existing ``target`` aside and deleting it
    only once the new one is in place."""
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
    if target.exists():
        target.rename(old)
    try:
        partial.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


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
    """The episodes (dicts as ``write_minari`` takes them, plus ``id``) and the metadata.

    Raises DatasetNotFound, MalformedDataset, or ChecksumMismatch when ``rljax_sha256`` is recorded
    and ``verify`` is true.
    """
    directory = dataset_dir(dataset, root)
    metadata = read_metadata(directory)
    if metadata.get("data_format", "hdf5") != "hdf5":
        raise DatasetError(
            f"{directory}: data_format {metadata['data_format']!r} is not read; only 'hdf5' is"
        )
    data_file = directory / DATA_FILE
    if not data_file.exists():
        raise not_found(data_file, "Minari data file")
    if verify:
        for name, digest in metadata.get("rljax_sha256", {}).items():
            verify_sha256(metadata_file(directory).parent / name, digest)
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
    """A Minari dataset (a directory, or an id under ``root``) as a device Dataset, and metadata.

    The metadata is the file's, so ``action_space`` (Minari's JSON string) carries the env's
    action bounds when minari recorded them.
    """
    episodes, metadata = read_minari(dataset, root, verify)
    try:
        arrays = episodes_to_arrays(episodes)
    except MalformedDataset as e:
        raise MalformedDataset(f"{dataset_dir(dataset, root)}: {e}") from None
    return Dataset.from_arrays(str(dataset_dir(dataset, root)), **arrays), metadata
