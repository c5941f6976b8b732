"""What defines a run: the ``RunSpec``, resolved once (its dataset and the env the data came from).

A spec is what ``rljax train`` parses and what a Python user writes; ``resolve_spec`` fills in what
follows from it, so both behave alike: a dataset run without an env is evaluated on the env
its dataset records (with that env's make() options), and the saved ``config.yaml`` names the
env in full, so a run directory can be evaluated and its policy loaded without the dataset.
"""

import dataclasses
from pathlib import Path

import yaml

from rljax import agents, data
from rljax.runner import config as config_lib


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class RunDirectoryExists(RunError):
    """The run directory exists and --resume was not given: it is never overwritten."""


@dataclasses.dataclass
class RunSpec:
    """Everything that defines a run; saved as the run directory's config.yaml."""

    algo: str
    env: dict = dataclasses.field(default_factory=dict)  # {"name": ..., **rljax.envs.make options}
    agent: dict = dataclasses.field(default_factory=dict)  # Config fields set explicitly
    grid: dict = dataclasses.field(default_factory=dict)  # field -> list of values
    seeds: int = 1
    seed: int = 0
    chunk_updates: int | None = None  # updates per jitted chunk; default about a tenth
    dataset: str | None = None  # dataset agents: a dataset path or name (rljax.data.resolve)
    eval_episodes: int = 10  # dataset agents: evaluation episodes (per task) after each chunk

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**yaml.safe_load(Path(path).read_text())["run"])

    def differences(self, other: "RunSpec") -> str:
        """``field=mine (now theirs)`` for each field that differs."""
        mine, theirs = dataclasses.asdict(self), dataclasses.asdict(other)
        return "; ".join(
            f"{key}={mine[key]!r} (now {theirs[key]!r})" for key in mine if mine[key] != theirs[key]
        )


def resolve_spec(spec: RunSpec) -> RunSpec:
    """The spec with what follows from it filled in, checked against the agent's declaration.

    A dataset agent's env is the one its dataset's metadata records, unless the spec names
    another (which then keeps only its own options); an env agent must have no dataset.
    """
    agent = agents.declaration(spec.algo)
    if spec.seeds < 1:
        raise config_lib.FieldOutOfRange(f"seeds={spec.seeds} is out of range: it must be >= 1")
    if agent.learns_from not in (agents.ENV, agents.DATASET):
        raise config_lib.ConfigError(
            f"{spec.algo} learns from {agent.learns_from!r}, which the runner cannot train yet"
        )
    env = dict(spec.env)
    if not agent.from_dataset:
        if spec.dataset is not None:
            raise config_lib.ConfigError(
                f"{spec.algo} learns online, from its env; --dataset is for the offline agents "
                f"({', '.join(agents.names(agents.DATASET))})"
            )
    else:
        if spec.dataset is None:
            raise config_lib.ConfigError(
                f"{spec.algo} learns offline: pass --dataset PATH_OR_NAME (see `rljax data`)"
            )
        if spec.eval_episodes < 1:
            raise config_lib.FieldOutOfRange(
                f"eval_episodes={spec.eval_episodes} is out of range: it must be >= 1"
            )
        recorded = data.source_env(data.read_metadata(spec.dataset))
        if env.get("name") in (None, recorded.get("name")):  # a different env keeps its own
            env = {**recorded, **env}
    if "name" not in env:
        raise config_lib.ConfigError(
            "no environment: pass --env NAME (or a --config preset that names one)"
        )
    return dataclasses.replace(spec, env=env)


def check_directory(spec: RunSpec, out: Path, resume: bool) -> None:
    """A run directory is created once and then only resumed, with the spec it started with."""
    if out.exists() and not resume:
        raise RunDirectoryExists(
            f"run directory {out} already exists; pass --resume to continue it, "
            "or choose another --out"
        )
    saved = out / "config.yaml"
    if resume and saved.exists() and RunSpec.load(saved) != spec:
        raise RunError(
            f"cannot resume {out}: the run was started with {RunSpec.load(saved).differences(spec)}"
        )


def load_run(run_dir) -> RunSpec:
    """The spec saved in a run directory; RunError if it is none."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunError(f"{run_dir} is not a run directory (it has no config.yaml)")
    return RunSpec.load(run_dir / "config.yaml")
