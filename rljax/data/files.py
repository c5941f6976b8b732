"""Datasets by name: a path, or a name looked up in the data directories, in any layout.

``rljax train iql --dataset pendulum-medium-replay`` finds ``pendulum-medium-replay.hdf5`` in
rljax's data directory (``$RLJAX_DATA_DIR``, default ``~/.rljax/datasets``), where ``rljax data
generate`` writes; then in D4RL's, OGBench's and Minari's own directories. The layout follows
from the file: ``.hdf5`` is D4RL, ``.npz`` is OGBench, a directory with ``metadata.json`` is
Minari.
"""

import json
import os
import re
import tempfile
from pathlib import Path

import h5py
import numpy as np

from rljax.data import d4rl, minari, ogbench
from rljax.data.dataset import (
    Dataset,
    DatasetError,
    DatasetExists,
    DatasetNotFound,
    UnwritableOutput,
)


def data_dir() -> Path:
    """``$RLJAX_DATA_DIR`` or ``~/.rljax/datasets``: where generated datasets are written."""
    return Path(os.environ.get("RLJAX_DATA_DIR", "~/.rljax/datasets")).expanduser()


# The datasets that `rljax data generate` makes, by the env they come from: D4RL-style files
# <tag>-<kind>.hdf5, and OGBench-style maze files {point,grid}maze-<layout>-<kind>-v0.npz.
GENERATED_TAGS = {
    "Pendulum-v1": "pendulum",
    "brax/hopper": "hopper",
    "brax/halfcheetah": "halfcheetah",
    "brax/walker2d": "walker2d",
}
D4RL_KINDS = ("random", "medium", "expert", "medium-replay", "medium-expert")
MAZE_KINDS = ("navigate", "stitch")
_MAZE_NAME = re.compile(rf"(point|grid)maze-(\w+)-({'|'.join(MAZE_KINDS)})-v0")


def generate_command(name) -> str | None:
    """The command that makes dataset ``name`` (``pendulum-medium-replay``, or a path to it),
    or None if it is not one that rljax generates."""
    path = Path(name)
    maze = _MAZE_NAME.fullmatch(path.name.removesuffix(".npz"))
    if maze:
        kind, layout, task = maze.groups()
        return f"rljax data generate rljax/{kind.title()}Maze-{layout} --kind {task}"
    stem = path.name.removesuffix(".hdf5")
    for env_name, tag in GENERATED_TAGS.items():
        for kind in D4RL_KINDS:
            if stem == f"{tag}-{kind}":
                command = f"rljax data generate {env_name} --kind {kind}"
                parent = path.expanduser().parent
                if path.parent != Path(".") and parent.resolve() != data_dir().resolve():
                    command += f" --out {parent}"
                return command
    return None


def source_env(metadata: dict) -> dict:
    """The env a dataset's metadata records, as ``{"name": ..., **make() options}`` (empty if
    it records none)."""
    env = metadata.get("env")
    if isinstance(env, str):
        return {"name": env}
    return dict(env) if isinstance(env, dict) and "name" in env else {}


def prepare_outputs(paths, force: bool = False) -> None:
    """Before any work that ends in writing ``paths``: refuses (DatasetExists, listing them) the
    ones that exist unless ``force``, and makes their directories and writes and deletes a probe
    file in each, so an unwritable one fails now (UnwritableOutput, naming it and the OSError)
    rather than after training."""
    paths = [Path(p) for p in paths]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        listed = ", ".join(map(str, existing))
        raise DatasetExists(
            f"{listed} already exist{'s' if len(existing) == 1 else ''}; pass --force "
            "(force=True) to replace, or choose another --out"
        )
    for directory in dict.fromkeys(p.parent for p in paths):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".rljax-probe-") as probe:
                probe.write(b"rljax")
                probe.flush()
        except OSError as error:
            raise UnwritableOutput(f"cannot write datasets to {directory}: {error}") from None


def _candidates(name: str) -> list[Path]:
    return [
        data_dir() / f"{name}.hdf5",
        data_dir() / f"{name}.npz",
        d4rl.dataset_dir() / f"{name}.hdf5",
        ogbench.dataset_file(name),
        minari.dataset_root() / name,
    ]


def resolve(name) -> Path:
    """``name`` if it is an existing file or directory, else the first data directory entry
    called ``name``; DatasetNotFound lists every place looked at and how to make the dataset."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    found = [p for p in _candidates(str(name)) if p.is_file() or (p / "metadata.json").exists()]
    if found and "/" not in str(name):
        return found[0]
    looked = [path] if "/" in str(name) else [path, *_candidates(str(name))]
    where = "\n".join(f"  {p}" for p in looked)
    command = generate_command(name)
    if command is not None:
        how = f"make it with: {command}"
    else:
        tags = ", ".join(f"{tag} ({env})" for env, tag in GENERATED_TAGS.items())
        how = (
            f"`rljax data generate ENV --kind KIND` writes <tag>-<kind>.hdf5 there; tags: {tags}; "
            f"kinds: {', '.join(D4RL_KINDS)}; or copy the dataset there"
        )
    raise DatasetNotFound(f"no dataset {name!r}; looked at:\n{where}\n{how}")


def load(name, verify: bool = True) -> tuple[Dataset, dict]:
    """The dataset (on device) and its metadata, whatever its layout."""
    path = resolve(name)
    if path.is_dir():
        return minari.load_minari(path, verify=verify)
    if path.suffix == ".npz":
        return ogbench.load_ogbench(path, verify=verify)
    return d4rl.load_d4rl(path, verify=verify)


def read_metadata(name) -> dict:
    """A dataset's metadata without reading its arrays."""
    path = resolve(name)
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
