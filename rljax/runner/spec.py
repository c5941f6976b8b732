"""What defines a run: the ``RunSpec``, resolved once (its dataset and the env the data came from).

A spec is what ``rljax train`` parses and what a Python user writes; ``resolve_spec`` fills in what
follows from it, so both behave alike: a dataset run without an env is evaluated on the env
its dataset records (with that env's make() options), and the saved ``config.yaml`` names the
env in full, so a run directory can be evaluated and its policy loaded without the dataset.
"""

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import yaml

from rljax import agents, data
from rljax.data.dataset import sha256
from rljax.runner import config as config_lib
from rljax.runner.errors import DatasetChanged, NoRunDirectory, RunDirectoryExists, RunError

# Updates, and env (or gradient) steps per member, must fit the agents' int32 step counters.
MAX_STEPS = 2**31 - 1


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
    max_episode_steps: int | None = None  # D4RL files without timeouts: the env's time limit

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**yaml.safe_load(Path(path).read_text())["run"])

    def differences(self, other: "RunSpec") -> str:
        """``field=mine (now theirs)`` for each field whose value differs, agent fields by name.

        Values are compared as parsed: agent fields and grid values after the Config's coercion
        (``lr="1e-3"`` is ``lr=0.001``), and a field set to its default equals one left unset.
        """
        mine, theirs = _parsed(self), _parsed(other)
        if mine["algo"] == theirs["algo"]:
            mine_agent, their_agent = mine.pop("agent"), theirs.pop("agent")
            mine, theirs = {**mine_agent, **mine}, {**their_agent, **theirs}
        return "; ".join(
            f"{key}={mine[key]!r} (now {theirs[key]!r})" for key in mine if mine[key] != theirs[key]
        )


def _parsed(spec: RunSpec) -> dict:
    fields = dataclasses.asdict(spec)
    try:
        config_cls = agents.declaration(spec.algo).module.Config
    except ValueError:  # an unknown algorithm: its raw fields
        return fields
    fields["agent"] = config_lib.as_dict(config_lib.make_config(config_cls, spec.agent))
    fields["grid"] = {
        name: [config_lib.as_dict(config_lib.make_config(config_cls, {name: v}))[name]
               for v in values]
        for name, values in spec.grid.items()
    }  # fmt: skip
    return fields


def resolve_spec(spec: RunSpec) -> RunSpec:
    """The spec with what follows from it filled in, checked against the agent's declaration.

    A dataset agent's env is the one its dataset's metadata records, unless the spec names
    another (which then keeps only its own options); an env agent must have no dataset.
    """
    agent = agents.declaration(spec.algo)
    check_fine_tuning(spec)
    if spec.seeds < 1:
        raise config_lib.FieldOutOfRange(f"seeds={spec.seeds} is out of range: it must be >= 1")
    env = dict(spec.env)
    if not agent.from_dataset:
        if spec.dataset is not None:
            raise config_lib.ConfigError(
                f"{spec.algo} learns online, from its env; --dataset is for the offline agents "
                f"({', '.join(agents.names(*agents.DATASET_SOURCES))})"
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
        if "name" not in env and "name" in recorded:
            # A Minari dataset names a gymnasium id; gymnax's twins (Pendulum-v1, ...) make it.
            from rljax import envs  # here only: listing brax's envs imports brax

            groups = envs.names()
            known = [n for ns in groups.values() for n in ns]
            name = recorded["name"]
            if name not in known and name.removeprefix("gymnax/") not in groups["gymnax"]:

                def stem(n: str) -> str:  # "Hopper-v5" and "brax/hopper" -> "hopper"
                    return "".join(filter(str.isalnum, n.rsplit("/", 1)[-1].split("-")[0].lower()))

                close = [n for n in known if stem(n) == stem(name)]
                raise config_lib.ConfigError(
                    f"dataset {spec.dataset} was recorded on env {name!r}, which rljax cannot "
                    "make: pass --env NAME with a compatible env"
                    + (f" (close: {', '.join(close)})" if close else "")
                    + "; `rljax envs` lists them all"
                )
        if env.get("name") in (None, recorded.get("name")):  # a different env keeps its own
            env = {**recorded, **env}
    if "name" not in env:
        raise config_lib.ConfigError(
            "no environment: pass --env NAME (or a --config preset that names one)"
        )
    return dataclasses.replace(spec, env=env, agent=_with_termination(agent, spec, env["name"]))


def _with_termination(agent: agents.Declaration, spec: RunSpec, env_name: str) -> dict:
    """A model-based agent's fields with its ``termination`` set to the env's, when its table
    has that env and neither the fields nor the grid set it."""
    if not agent.fits_model or "termination" in spec.agent or "termination" in spec.grid:
        return spec.agent
    choices = config_lib.field_choices(agent.module.Config, "termination")
    return spec.agent | ({"termination": env_name} if env_name in choices else {})


def check_fine_tuning(spec: RunSpec) -> None:
    """ConfigError for online steps asked of an agent that cannot fine-tune online, or model
    steps of one that fits no model."""
    declared = agents.declaration(spec.algo)
    if "online_steps" in spec.agent and not declared.fine_tunes:
        raise config_lib.ConfigError(
            f"{spec.algo} cannot fine-tune online (--online-steps); the agents that can: "
            f"{', '.join(agents.names(agents.DATASET_THEN_ENV))}"
        )
    if "model_updates" in spec.agent and not declared.fits_model:
        raise config_lib.ConfigError(
            f"{spec.algo} fits no dynamics model (--model-steps); the agents that do: "
            f"{', '.join(agents.names(agents.MODEL_THEN_DATASET))}"
        )


def check_budget(spec: RunSpec) -> None:
    """FieldOutOfRange for a budget whose updates or steps per member overflow int32 counters,
    before anything is built (a budget of 1e30 would otherwise hang in planning its chunks)."""
    agent = agents.declaration(spec.algo)
    config = config_lib.make_config(agent.module.Config, spec.agent)
    steps_per_update = 1 if agent.from_dataset else config.steps_per_update
    budgets = [(agent.budget_field, config.num_updates, config.num_updates * steps_per_update)]
    if agent.fine_tunes:
        budgets.append(("online_steps", config.num_online_updates, config.online_steps))
    if agent.fits_model:
        budgets.append(("model_updates", config.model_updates, config.model_updates))
    for field, updates, steps in budgets:
        if updates > MAX_STEPS or steps > MAX_STEPS:
            unit = "env steps" if field in ("total_timesteps", "online_steps") else "gradient steps"
            raise config_lib.FieldOutOfRange(
                f"{field}={getattr(config, field)} is out of range: a run takes at most "
                f"2**31 - 1 = {MAX_STEPS:,} {unit} per member (its step counters are int32); "
                "split a longer run into several, each resuming the last"
            )


def dataset_sha256(name) -> str:
    """The SHA-256 of a dataset file (its ``.sha256`` sidecar's, when it has one, which loading
    verifies); of a directory (Minari), the SHA-256 of its files' names and digests."""
    path = data.resolve(name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        lines = "".join(f"{sha256(p)}  {p.relative_to(path)}\n" for p in files)
        return hashlib.sha256(lines.encode()).hexdigest()
    sidecar = Path(f"{path}.sha256")
    recorded = sidecar.read_text().split() if sidecar.exists() else []
    return recorded[0] if recorded else sha256(path)


def check_directory(spec: RunSpec, out: Path, resume: bool, dataset_sha256: str | None = None):
    """A run directory is created once and then only resumed, with the spec (and dataset) it
    started with."""
    if out.exists() and not resume:
        raise RunDirectoryExists(
            f"run directory {out} already exists; pass --resume to continue it, "
            "or choose another --out"
        )
    if resume and not out.is_dir():
        raise NoRunDirectory(
            f"cannot resume {out}: there is no such directory (leave out --resume to start a "
            "new run there)"
        )
    saved = out / "config.yaml"
    if not (resume and saved.exists()):
        return
    record = yaml.safe_load(saved.read_text())
    differences = RunSpec(**record["run"]).differences(spec)
    if differences:
        raise RunError(f"cannot resume {out}: the run was started with {differences}")
    recorded = record.get("dataset_sha256")
    if recorded is not None and dataset_sha256 is not None and recorded != dataset_sha256:
        raise DatasetChanged(
            f"cannot resume {out}: its dataset {spec.dataset} changed since the run started "
            f"(SHA-256 {recorded}, now {dataset_sha256}); restore that file, or start a new run"
        )


def load_run(run_dir) -> RunSpec:
    """The spec saved in a run directory; RunError if it is none."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunError(f"{run_dir} is not a run directory (it has no config.yaml)")
    return RunSpec.load(run_dir / "config.yaml")


# Actions recorded in float32 after clipping to [-1, 1] may overshoot it by rounding.
ACTION_SLACK = 1e-5


def check_evaluation_env(spec: RunSpec, agent, dataset, env, env_params) -> None:
    """The env a dataset agent is evaluated in must take the dataset's observations and
    actions (continuous ones in [-1, 1]) and, for a goal-conditioned agent, set goals."""
    from gymnax.environments import spaces  # here only: the CLI checks specs before jax loads

    name = spec.env["name"]
    if agent.goal_conditioned and not hasattr(env, "num_tasks"):
        raise config_lib.ConfigError(
            f"{spec.algo} is goal-conditioned, but {name} sets no goals: evaluate it on a "
            "goal-conditioned env (rljax/PointMaze-*, rljax/GridMaze-*)"
        )
    obs_shape = tuple(env.observation_space(env_params).shape)
    if obs_shape != tuple(dataset.observations.shape[1:]):
        raise config_lib.ConfigError(
            f"{name} observes shape {obs_shape} but the dataset {spec.dataset} holds "
            f"observations of shape {tuple(dataset.observations.shape[1:])}: evaluate on the "
            "env the data came from (leave out --env to use the one its metadata records)"
        )
    space = env.action_space(env_params)
    if isinstance(space, spaces.Box):
        if tuple(space.shape) != tuple(dataset.actions.shape[1:]):
            raise config_lib.ConfigError(
                f"{name} takes actions of shape {tuple(space.shape)} but the dataset's have "
                f"shape {tuple(dataset.actions.shape[1:])}"
            )
        low, high = float(dataset.actions.min()), float(dataset.actions.max())
        if low < -1 - ACTION_SLACK or high > 1 + ACTION_SLACK:
            raise config_lib.ConfigError(
                f"the dataset {spec.dataset} holds actions in [{low:.4g}, {high:.4g}], but "
                "offline agents learn actions in [-1, 1]: rescale them from the env's bounds "
                f"with `rljax data convert {spec.dataset} OUT --rescale-actions` and train on OUT"
            )
        if not (np.allclose(space.low, -1) and np.allclose(space.high, 1)):
            raise config_lib.ConfigError(
                f"{name} acts in [{np.min(space.low)}, {np.max(space.high)}] but offline agents "
                f"act in [-1, 1], as datasets store actions: set env.unit_actions=true"
            )
