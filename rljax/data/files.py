"""Datasets by name: a path, or a name looked up in the data directories, in any layout.

``rljax train iql --dataset pendulum-medium-replay`` finds ``pendulum-medium-replay.hdf5`` in
rljax's data directory (``$RLJAX_DATA_DIR``, default ``~/.rljax/datasets``), where ``rljax data
generate`` writes; then ``<name>.npz`` there, ``<name>.hdf5`` in D4RL's directory
(``$D4RL_DATASET_DIR``, default ``~/.d4rl/datasets``), ``<name>.npz`` in OGBench's
(``~/.ogbench/data``) and the Minari dataset ``<name>`` under ``$MINARI_DATASETS_PATH`` (default
``~/.minari/datasets``). A name with a ``/`` (``mujoco/hopper/medium-v0``) is a Minari id and
is looked up there only. The layout follows from what is found: ``.hdf5`` is D4RL, ``.npz`` is
OGBench, a directory is Minari (``rljax.data.minari``). Only metadata is read to list datasets
(``local_datasets``) or to find the env they were recorded on (``source_env``).
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
    MalformedDataset,
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
MBRCSL_MAZE = "pointmaze-mbrcsl-v0"  # MBRCSL's stitching data: rljax.generate.mbrcsl_maze
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
    if stem == MBRCSL_MAZE:
        return "rljax data generate rljax/PointMaze-mbrcsl"
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
    it records none): rljax's own ``env`` key, else the id in Minari's ``env_spec`` (gymnasium's
    ``EnvSpec`` as a JSON string or a dict), which rljax may or may not be able to make."""
    env = metadata.get("env")
    if isinstance(env, str):
        return {"name": env}
    if isinstance(env, dict) and "name" in env:
        return dict(env)
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as e:
            raise MalformedDataset(f"the metadata's env_spec is not JSON: {e}") from None
    return (
        {"name": spec["id"]} if isinstance(spec, dict) and isinstance(spec.get("id"), str) else {}
    )


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
    if "/" in name:  # a Minari id: the other layouts keep flat directories
        return [minari.dataset_root() / name]
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
    candidates = _candidates(str(name))
    found = [p for p in candidates if p.is_file() or minari.metadata_file(p) is not None]
    if found:
        return found[0]
    where = "\n".join(f"  {p}" for p in dict.fromkeys([path, *candidates]))
    command = generate_command(name)
    if command is not None:
        how = f"make it with: {command}"
    elif minari.DATASET_ID.fullmatch(str(name)) and "/" in str(name):
        how = (
            f"a Minari id is read from {minari.dataset_root()}/<id>/data/ "
            "($MINARI_DATASETS_PATH): `minari download <id>` puts it there"
        )
    else:
        tags = ", ".join(f"{tag} ({env})" for env, tag in GENERATED_TAGS.items())
        how = (
            f"`rljax data generate ENV --kind KIND` writes <tag>-<kind>.hdf5 there; tags: {tags}; "
            f"kinds: {', '.join(D4RL_KINDS)}; or copy the dataset there"
        )
    raise DatasetNotFound(f"no dataset {name!r}; looked at:\n{where}\n{how}")


def load(name, verify: bool = True, max_episode_steps: int | None = None) -> tuple[Dataset, dict]:
    """The dataset (on device) and its metadata, whatever its layout.

    ``max_episode_steps`` infers the timeouts of a D4RL file that has none
    (``rljax.data.d4rl.qlearning_arrays``); the other layouts record every episode's end.
    """
    path = resolve(name)
    if max_episode_steps is not None and (path.is_dir() or path.suffix == ".npz"):
        raise DatasetError(
            f"{path}: max_episode_steps (--max-episode-steps) is for D4RL files without "
            "timeouts; this dataset records where each episode ends"
        )
    if path.is_dir():
        return minari.load_minari(path, verify=verify)
    if path.suffix == ".npz":
        return ogbench.load_ogbench(path, verify=verify)
    return d4rl.load_d4rl(path, verify=verify, max_episode_steps=max_episode_steps)


def read_metadata(name) -> dict:
    """A dataset's metadata without reading its arrays."""
    path = resolve(name)
    if path.is_dir():
        return minari.read_metadata(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return json.loads(str(f[ogbench.METADATA_KEY])) if ogbench.METADATA_KEY in f else {}
        with h5py.File(path, "r") as f:
            return json.loads(f.attrs.get(d4rl.METADATA_ATTR, "{}"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable dataset: {e}") from None


def dataset_dirs() -> list[Path]:
    """Where ``resolve`` looks for names, in its order: rljax's data directory, D4RL's,
    OGBench's and the Minari root."""
    ogbench_dir = ogbench.dataset_file("name").parent
    return [data_dir(), d4rl.dataset_dir(), ogbench_dir, minari.dataset_root()]


def local_datasets() -> list[dict]:
    """Every dataset in the data directories, in ``resolve``'s order, as dicts: ``name`` (what
    ``--dataset`` takes: the short name, or the path where an earlier one has that name),
    ``path``, ``layout`` (``"d4rl"``, ``"ogbench"`` or ``"minari"``), ``bytes`` on disk, and
    ``env`` (its name, from ``source_env``) and ``kind`` from its metadata, None where it records
    none or is unreadable. Arrays are not read; OGBench's ``-val`` splits and hidden files are
    left out."""

    def files(directory: Path, suffix: str) -> list[Path]:
        paths = sorted(directory.glob(f"*{suffix}")) if directory.is_dir() else []
        return [
            p
            for p in paths
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith("-val.npz")
        ]

    rljax_dir, d4rl_dir, ogbench_dir, minari_root = dataset_dirs()
    found = {
        **{p: ("d4rl", p.stem) for p in files(rljax_dir, ".hdf5")},
        **{p: ("ogbench", p.stem) for p in files(rljax_dir, ".npz")},
        **{p: ("d4rl", p.stem) for p in files(d4rl_dir, ".hdf5")},
        **{p: ("ogbench", p.stem) for p in files(ogbench_dir, ".npz")},
        **{p: ("minari", p.relative_to(minari_root).as_posix())
           for p in minari.list_datasets(minari_root)},
    }  # fmt: skip
    listed = []
    for path, (layout, short) in found.items():
        try:
            metadata = read_metadata(path)
            env = source_env(metadata).get("name")
        except DatasetError:
            metadata, env = {}, None
        on_disk = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        listed.append(
            {
                "name": short if resolve(short) == path else str(path),
                "path": str(path),
                "layout": layout,
                "bytes": sum(p.stat().st_size for p in on_disk),
                "env": env,
                "kind": metadata.get("kind"),
            }
        )
    return listed
