"""A training run: sweep configs x seeds as one vmapped, sharded program, in jitted chunks.

Each chunk is ``lax.scan`` over K updates inside ``jit``; nothing crosses to the host inside it.
Between chunks the runner logs metrics, prints progress, and checkpoints. Seed s of every config
uses the key ``PRNGKey(seed + s)``, so a sweep member reproduces the single run of its config.

Offline agents (those with ``sample_batch``) train on a dataset instead of an env: an update is
one gradient step on a batch sampled inside the chunk, and each chunk ends with vectorized
evaluation episodes in the dataset's env, logged as ``episode_return`` at the chunk's last
update, with D4RL's normalized score where the dataset has reference returns.
"""

import dataclasses
import datetime
import json
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from gymnax.environments import spaces
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rljax import agents, data, envs
from rljax.data.generate import resolve_dataset
from rljax.runner import config as config_lib
from rljax.runner import evaluation, metadata, results
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.distributed import any_process, barrier, gather, is_primary, owned_members
from rljax.runner.guard import Divergence, Interrupted, StopSignals, first_failures, params_finite
from rljax.runner.sinks import (
    KEY_COLUMNS,
    CsvLog,
    TensorBoardSink,
    WandbSink,
    read_tables,
    write_table,
)

__all__ = ["Divergence", "Interrupted", "RunDirectoryExists", "RunError", "RunSpec", "train"]


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


class RunDirectoryExists(RunError):
    """The run directory exists and --resume was not given: it is never overwritten."""


@dataclasses.dataclass
class RunSpec:
    """Everything that defines a run; saved as the run directory's config.yaml."""

    algo: str
    env: dict  # {"name": ..., **options of rljax.envs.make}
    agent: dict = dataclasses.field(default_factory=dict)  # Config fields set explicitly
    grid: dict = dataclasses.field(default_factory=dict)  # field -> list of values
    seeds: int = 1
    seed: int = 0
    chunk_updates: int | None = None  # updates per jitted chunk; default about a tenth
    dataset: str | None = None  # offline agents: a dataset path or name (rljax.data.files)
    eval_episodes: int = 10  # offline agents: evaluation episodes (per task) after each chunk

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**yaml.safe_load(Path(path).read_text())["run"])


@dataclasses.dataclass
class Program:
    """A RunSpec made concrete: the agent, env, member configs and the compiled functions."""

    spec: RunSpec
    agent: object
    env: object
    env_params: object
    configs: list  # one Config per grid point
    members: list  # (config index, seed index) per vmapped member
    stacked: object  # the members' configs stacked on a leading axis
    keys: jax.Array
    sharding: NamedSharding
    dataset: data.Dataset | None = None  # offline agents only
    references: tuple | None = None  # (random, expert) returns, when the dataset has them
    traces: int = 0  # how often the chunk function was traced: once per run

    @property
    def base(self):
        return self.configs[0]

    @property
    def offline(self) -> bool:
        return self.dataset is not None

    @property
    def steps_per_update(self) -> int:
        """Env steps per update; an offline update is one gradient step."""
        return 1 if self.offline else self.base.steps_per_update

    @property
    def unit(self) -> str:
        return "gradient steps" if self.offline else "steps"

    def abstract(self, shapes):
        """Shapes and dtypes laid out over the member sharding, to compile and restore."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), shapes
        )

    def init_fn(self):
        """(configs, keys) -> states. Each device initializes its own members one at a time:
        vmapped, flax's orthogonal initializer becomes a batched LAPACK QR whose thread-pool
        fan-out can deadlock on a small CPU (jaxlib 0.10.2); one member at a time it runs inline.
        """

        def init_one(config_and_key):
            config, key = config_and_key
            if self.offline:
                return self.agent.init(config, self.dataset, key)
            return self.agent.init(config, self.env, self.env_params, key)

        def init_local(configs, keys):
            return jax.lax.map(init_one, (configs, keys))

        spec = self.sharding.spec
        # check_vma off: the env wrappers' pmean runs over a vmapped axis, not a mesh axis.
        init = jax.shard_map(
            init_local, mesh=self.sharding.mesh, in_specs=spec, out_specs=spec, check_vma=False
        )
        return jax.jit(init, out_shardings=self.sharding)

    def chunk_fn(self, num_updates: int):
        """(configs, states) -> (states, metrics, params finite), num_updates per member."""
        agent, env, env_params, dataset = self.agent, self.env, self.env_params, self.dataset

        def run_member(config, state):
            self.traces += 1  # runs while tracing only: counts compilations, not calls

            def one_update(state, _):
                if dataset is None:
                    return agent.update(config, env, env_params, state)
                rng, batch_key = jax.random.split(state.rng)
                batch = agent.sample_batch(config, dataset, batch_key)
                return agent.update(config, state.replace(rng=rng), batch)

            state, metrics = jax.lax.scan(one_update, state, None, num_updates)
            if dataset is not None:
                metrics |= self._evaluation(config, state, num_updates)
            return state, metrics, params_finite(state.params)

        return jax.jit(jax.vmap(run_member), donate_argnums=(1,), out_shardings=self.sharding)

    def _evaluation(self, config, state, num_updates: int) -> dict:
        """Deterministic evaluation episodes after a chunk, as metrics of its last update. The
        key is folded from the agent's, which it leaves as it is: training does not depend on
        how often it is evaluated."""
        key = jax.random.fold_in(state.rng, 0x5EED)
        returns = evaluation.evaluate(
            self.agent, config, state.params, self.env, self.env_params,
            self.spec.eval_episodes, key, deterministic=True,
        )  # fmt: skip
        last = np.arange(num_updates) == num_updates - 1
        return {
            "episode_return": jnp.where(last, returns.mean(), jnp.nan),
            "episodes": jnp.where(last, returns.shape[0], 0),
        }


def build(spec: RunSpec) -> Program:
    """Validates a RunSpec (unknown names and bad values raise named errors) and builds it."""
    if spec.seeds < 1:
        raise config_lib.FieldOutOfRange(f"seeds={spec.seeds} is out of range: it must be >= 1")
    agent = agents.get(spec.algo)
    config_lib.check_sweepable(agent.Config, spec.grid)
    points = config_lib.grid_points(spec.grid)
    configs = [config_lib.build(agent.Config, {**spec.agent, **point}) for point in points]
    dataset, references = _dataset(spec, agent)
    env_options = {k: v for k, v in spec.env.items() if k != "name"}
    if dataset is not None:
        env, env_params = evaluation.unnormalized_env(spec.env)
        _check_evaluation_env(spec, agent, dataset, env, env_params)
    else:
        env, env_params = envs.make(spec.env["name"], **env_options)
    if hasattr(agent, "wrap_env"):  # an agent that adds to what its env observes
        if env_options.get("normalize_obs"):
            # The saved moments would cover the env's observation, not what the agent adds.
            raise config_lib.ConfigError(
                f"{spec.algo} adds to its observations (wrap_env), so env.normalize_obs=true "
                "is not supported for it"
            )
        env, env_params = agent.wrap_env(configs[0], env, env_params)
    members = [(c, s) for c in range(len(configs)) for s in range(spec.seeds)]
    stacked = config_lib.stack([configs[c] for c, _ in members])
    keys = np.stack([jax.random.key_data(jax.random.PRNGKey(spec.seed + s)) for _, s in members])
    sharding = member_sharding(len(members))
    # Identical numpy on every process; each keeps the rows of its own devices.
    stacked, keys = jax.device_put((jax.tree.map(np.asarray, stacked), keys), sharding)
    return Program(
        spec, agent, env, env_params, configs, members, stacked, keys, sharding, dataset, references
    )


def is_offline(agent) -> bool:
    """Offline agents sample their own batches from a dataset."""
    return hasattr(agent, "sample_batch")


def _dataset(spec: RunSpec, agent) -> tuple:
    """(dataset, (random, expert) references or None) for an offline agent, else (None, None)."""
    if not is_offline(agent):
        if spec.dataset is not None:
            offline = sorted(n for n in agents.ALGORITHMS if is_offline(agents.get(n)))
            raise config_lib.ConfigError(
                f"{spec.algo} learns online, from its env; --dataset is for the offline agents "
                f"({', '.join(offline)})"
            )
        return None, None
    if spec.dataset is None:
        raise config_lib.ConfigError(
            f"{spec.algo} learns offline: pass --dataset PATH_OR_NAME (see `rljax data`)"
        )
    if spec.eval_episodes < 1:
        raise config_lib.FieldOutOfRange(
            f"eval_episodes={spec.eval_episodes} is out of range: it must be >= 1"
        )
    dataset, found = data.load(resolve_dataset(spec.dataset))
    try:
        references = data.references(found, Path(spec.dataset).stem)
    except data.NoReferenceScores:
        references = None
    return dataset, references


def _check_evaluation_env(spec: RunSpec, agent, dataset, env, env_params) -> None:
    """The env an offline agent is evaluated in must take the dataset's observations and
    actions (continuous ones in [-1, 1]) and, for a goal-conditioned agent, set goals."""
    name = spec.env["name"]
    if evaluation.is_goal_conditioned(agent) and not hasattr(env, "num_tasks"):
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
        if not (np.allclose(space.low, -1) and np.allclose(space.high, 1)):
            raise config_lib.ConfigError(
                f"{name} acts in [{np.min(space.low)}, {np.max(space.high)}] but offline agents "
                f"act in [-1, 1], as datasets store actions: set env.unit_actions=true"
            )


def member_sharding(num_members: int) -> NamedSharding:
    """Shards the member axis over the devices of every process.

    One process uses as many of its devices as divide the members evenly; several processes
    must use all devices, so the members must divide evenly over them.
    """
    devices = jax.devices()
    if jax.process_count() > 1 and num_members % len(devices):
        raise config_lib.ConfigError(
            f"{num_members} members (configs x seeds) cannot be split evenly over the "
            f"{len(devices)} devices of {jax.process_count()} processes; use a multiple of "
            f"{len(devices)} members"
        )
    count = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    return NamedSharding(Mesh(np.array(devices[:count]), ("member",)), PartitionSpec("member"))


def chunk_size(num_updates: int) -> int:
    """The largest divisor of num_updates up to a tenth of it: ~10+ chunks, one compilation."""
    limit = max(1, num_updates // 10)
    return max(d for d in range(1, limit + 1) if num_updates % d == 0)


def train(
    spec: RunSpec,
    out: Path,
    *,
    resume: bool = False,
    checkpoint_seconds: float = 60.0,
    tensorboard: bool = False,
    wandb_project: str | None = None,
    print_fn=print,
) -> dict:
    """Trains (or resumes) the run in ``out`` and returns its summary.

    Raises Divergence when every member has diverged, and Interrupted after a final checkpoint
    when SIGTERM or SIGINT arrives; the run directory then resumes with ``resume=True``.
    """
    out = Path(out)
    say = print_fn if is_primary() else _silent
    _check_directory(spec, out, resume)
    barrier("rljax: run directory checked")  # before process 0 creates it
    metadata.enable_compilation_cache()
    program = build(spec)
    num_updates = program.base.num_updates
    per_chunk = _chunk_updates(program, spec)
    source = (
        f"dataset {spec.dataset} (evaluated on {spec.env['name']})"
        if program.offline
        else spec.env["name"]
    )
    size = "" if program.offline else f" of {program.steps_per_update} steps"
    members = len(program.members)
    say(
        f"{spec.algo} on {source}: {members} member(s) x {num_updates} updates{size}, "
        "as one program"
    )

    start = time.perf_counter()
    init_jit, chunk_jit = program.init_fn(), program.chunk_fn(per_chunk)
    abstract_state = program.abstract(jax.eval_shape(init_jit, program.stacked, program.keys))
    init_fn = init_jit.lower(program.stacked, program.keys).compile()
    chunk_fn = chunk_jit.lower(program.stacked, abstract_state).compile()
    metric_names = sorted(chunk_fn.out_info[1])
    compile_seconds = time.perf_counter() - start

    checkpoints = Checkpoints(out / "checkpoints")
    done, state = checkpoints.restore_latest(abstract_state) if resume else (None, None)
    if done is None:
        done, state = 0, init_fn(program.stacked, program.keys)
    else:
        say(f"resuming {out} from update {done} of {num_updates}")
    if is_primary():
        _write_run_files(out, spec, program)
        for path in _metric_files(out):  # drop what the checkpoint does not hold
            CsvLog(path, metric_names).truncate_after(done)
    barrier("rljax: run files written")
    log = CsvLog(_own_metric_file(out), metric_names)
    owned = owned_members(program.sharding, len(program.members))
    failures = _logged_failures(out, len(program.members), done)
    sinks = _sinks(out, spec, tensorboard, wandb_project) if is_primary() else []

    steps_per_update = program.steps_per_update
    resumed_at, steps_per_second = done, None
    loop_start = last_checkpoint = time.perf_counter()
    try:
        with StopSignals() as stop:
            for first in range(done, num_updates, per_chunk):
                state, metrics, finite = chunk_fn(program.stacked, state)
                metrics, finite = gather((metrics, finite))
                updates = np.arange(first + 1, first + per_chunk + 1)
                log.append(_rows(program.members, owned, updates, steps_per_update, metrics))
                for sink in sinks:
                    sink.write(updates * steps_per_update, metrics)
                _guard(
                    program, failures, first_failures(metrics, updates, finite), checkpoints, say
                )
                done = first + per_chunk
                now = time.perf_counter()
                stopping, due = any_process(
                    np.array(
                        [stop.received is not None, now - last_checkpoint >= checkpoint_seconds]
                    )
                )
                if stopping or due or done == num_updates:
                    checkpoints.save(done, state)
                    last_checkpoint = now
                members_steps = len(program.members) * steps_per_update * (done - resumed_at)
                steps_per_second = members_steps / (now - loop_start)
                eta = (num_updates - done) * (now - loop_start) / (done - resumed_at)
                say(_progress(program, done, metrics, steps_per_second, eta))
                if stopping and done < num_updates:
                    signum = stop.received or signal.SIGTERM  # another process was signalled
                    raise Interrupted(
                        f"stopped by {signal.Signals(signum).name} after update {done} of "
                        f"{num_updates}; the checkpoint is saved: continue with --resume "
                        f"--out {out}",
                        signum,
                    )
    finally:
        checkpoints.close()
        for sink in sinks:
            sink.close()

    timing = {
        "compile_seconds": round(compile_seconds, 2),
        "train_seconds": round(time.perf_counter() - loop_start, 2),
        "steps_per_second": None if steps_per_second is None else round(steps_per_second, 1),
        "chunk_traces": program.traces,
    }
    barrier("rljax: metrics written")
    table = read_tables(_metric_files(out))
    summary = _finish(program, out, table, num_updates, timing, failures, say)
    if is_primary() and jax.process_count() > 1:
        write_table(out / "metrics.csv", table)  # the processes' shards, merged
    return summary


def _silent(*_) -> None:
    pass


def _chunk_updates(program: Program, spec: RunSpec) -> int:
    num_updates = program.base.num_updates
    if num_updates < 1:
        raise config_lib.FieldOutOfRange(
            f"total_timesteps={program.base.total_timesteps} is less than one update "
            f"({program.steps_per_update} steps)"
        )
    per_chunk = spec.chunk_updates or chunk_size(num_updates)
    if num_updates % per_chunk:
        raise config_lib.FieldOutOfRange(
            f"chunk_updates={per_chunk} must divide the number of updates ({num_updates})"
        )
    return per_chunk


def _metric_files(out: Path) -> list[Path]:
    """metrics.csv and the per-process shards of multi-process sessions, those that exist."""
    return [
        p for p in [out / "metrics.csv", *sorted(out.glob("metrics/process_*.csv"))] if p.exists()
    ]


def _own_metric_file(out: Path) -> Path:
    if jax.process_count() == 1:
        return out / "metrics.csv"
    (out / "metrics").mkdir(exist_ok=True)
    return out / "metrics" / f"process_{jax.process_index()}.csv"


def _sinks(out: Path, spec: RunSpec, tensorboard: bool, wandb_project: str | None) -> list:
    sinks = []
    if tensorboard:
        sinks.append(TensorBoardSink(out))
    if wandb_project:
        sinks.append(WandbSink(wandb_project, out, dataclasses.asdict(spec)))
    return sinks


def _guard(program: Program, failures: dict, found: dict, checkpoints, say) -> None:
    """Records members that newly diverged; raises Divergence once every member has."""
    for member, failure in found.items():
        if member not in failures:
            failures[member] = failure
            say(f"warning: {_failure_text(program, member, failure)}; marked failed")
    if len(failures) == len(program.members):
        last = checkpoints.latest_step()
        kept = (
            "no checkpoint was written"
            if last is None
            else (f"the last good checkpoint (update {last}) is kept")
        )
        raise Divergence(f"every member diverged: {_failures_text(program, failures)}; {kept}")


def _check_directory(spec: RunSpec, out: Path, resume: bool) -> None:
    if out.exists() and not resume:
        raise RunDirectoryExists(
            f"run directory {out} already exists; pass --resume to continue it, "
            "or choose another --out"
        )
    saved = out / "config.yaml"
    if resume and saved.exists() and RunSpec.load(saved) != spec:
        differences = _differences(RunSpec.load(saved), spec)
        raise RunError(f"cannot resume {out}: the run was started with {differences}")


def _write_run_files(out: Path, spec: RunSpec, program: Program) -> None:
    """config.yaml once; run_info.json gains one record per start (where and with what)."""
    out.mkdir(parents=True, exist_ok=True)  # only after compiling: a bad run leaves nothing
    saved = out / "config.yaml"
    if not saved.exists():
        record = {"run": dataclasses.asdict(spec), "resolved": config_lib.as_dict(program.base)}
        saved.write_text(yaml.safe_dump(record, sort_keys=False))
    info = out / "run_info.json"
    starts = json.loads(info.read_text())["starts"] if info.exists() else []
    info.write_text(json.dumps({"starts": [*starts, metadata.environment()]}, indent=2))


def _logged_failures(out: Path, num_members: int, done: int) -> dict:
    """Failures found again in the logged metrics of a resumed run (none for a new one)."""
    if done == 0:
        return {}
    table = read_tables(_metric_files(out))
    names = [name for name in table if name not in KEY_COLUMNS]
    metrics = {name: table[name].reshape(num_members, done) for name in names}
    return first_failures(metrics, np.arange(1, done + 1), np.ones(num_members, bool))


def _failure_text(program: Program, member: int, failure: tuple) -> str:
    config_index, seed_index = program.members[member]
    quantities, update = failure
    verb = "is" if len(quantities) == 1 else "are"
    return (
        f"member {member} (config {config_index}, seed {program.spec.seed + seed_index}): "
        f"{', '.join(quantities)} {verb} not finite at update {update}"
    )


def _failures_text(program: Program, failures: dict) -> str:
    return "; ".join(_failure_text(program, m, failures[m]) for m in sorted(failures))


def _progress(program: Program, done, metrics, steps_per_second, eta_seconds) -> str:
    fraction = done / program.base.num_updates
    bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
    line = (
        f"[{bar}] {100 * fraction:5.1f}%  {done * program.steps_per_update:,} {program.unit}/member"
    )
    line += f"  {steps_per_second:,.0f} {program.unit}/s"
    if "episode_return" in metrics:
        episodes = metrics["episodes"]
        if episodes.sum() > 0:
            mean = (np.nan_to_num(metrics["episode_return"]) * episodes).sum() / episodes.sum()
            line += f"  return {mean:.1f}"
            if program.references is not None:
                line += f"  score {float(data.normalized_score(mean, *program.references)):.1f}"
    return line + f"  ETA {datetime.timedelta(seconds=round(eta_seconds))}"


def _finish(program: Program, out, table: dict, num_updates, timing, failures, print_fn) -> dict:
    """Writes curve.png, summary.json and, for sweeps, sweep.csv; returns the summary."""
    spec, members = program.spec, program.members
    summary = {
        "algo": spec.algo,
        "env": spec.env["name"],
        "run": dataclasses.asdict(spec),
        "resolved": config_lib.as_dict(program.base),
        "environment": metadata.environment(),
        "num_updates": num_updates,
        "env_steps_per_member": None if program.offline else num_updates * program.steps_per_update,
        **timing,
        "failed": {str(m): _failure_text(program, m, f) for m, f in sorted(failures.items())},
    }
    if "episode_return" in table:
        shape = (len(members), num_updates)
        returns = table["episode_return"].reshape(shape)
        episodes = table["episodes"].reshape(shape)
        final = results.final_returns(returns, episodes)
        final[list(failures)] = np.nan
        score = _score(program)
        summary["final_returns"] = [
            {"member": m, "config": c, "seed": spec.seed + s, **_point(spec, c),
             "final_return": _number(final[m]), "failed": m in failures}
            | ({"final_score": _number(score(final[m]))} if program.references else {})
            for m, (c, s) in enumerate(members)
        ]  # fmt: skip
        steps = np.arange(1, num_updates + 1) * program.steps_per_update
        if program.offline:  # the evaluations after each chunk, unsmoothed
            evaluated = episodes[0] > 0
            steps, curves = steps[evaluated], score(returns[:, evaluated])
        else:
            curves = results.smoothed_returns(returns, episodes, max(1, num_updates // 50))
        by_config = {
            _label(spec, c): curves[[m for m, (ci, _) in enumerate(members) if ci == c]]
            for c in range(len(program.configs))
        }
        if is_primary():
            title = f"{spec.algo} on {spec.dataset or spec.env['name']}"
            ylabel = "normalized score" if program.references else "episode return"
            results.plot_curves(
                out / "curve.png", steps, by_config, title, f"{program.unit}", ylabel
            )
        name = "final normalized score" if program.references else "final return"
        summary["ranking"] = _rank(spec, members, score(final), failures, out, print_fn, name)
    if is_primary():
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_fn(f"results in {out}: summary.json, metrics.csv, curve.png, checkpoints/")
    return summary


def _score(program: Program):
    """Returns to normalized scores where the dataset has references, else unchanged."""
    if program.references is None:
        return lambda returns: returns
    return lambda returns: data.normalized_score(returns, *program.references)


def _rank(spec, members, final, failures, out: Path, print_fn, name: str) -> list[dict]:
    """Configs ranked by the IQM over seeds of their final return (or score), with a CI.

    Diverged seeds are left out of the statistics and counted in ``failed``.
    """
    header = ["config", *spec.grid, "seeds", "failed", "iqm", "ci_low", "ci_high", "mean"]
    rows = []
    for c in range(max(ci for ci, _ in members) + 1):
        own = [m for m, (ci, _) in enumerate(members) if ci == c]
        values = final[own][np.isfinite(final[own])]
        failed = sum(m in failures for m in own)
        row = {"config": c, **_point(spec, c), "seeds": len(own), "failed": failed}
        if len(values):
            low, high = results.bootstrap_ci(values, results.iqm)
            row.update(iqm=float(results.iqm(values)), ci_low=float(low), ci_high=float(high),
                       mean=float(values.mean()))  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda row: -row.get("iqm", -np.inf))
    if spec.grid and is_primary():
        lines = [",".join(header)]
        lines += [",".join(str(row.get(h, "")) for h in header) for row in rows]
        (out / "sweep.csv").write_text("\n".join(lines) + "\n")
    print_fn(f"{name} (IQM over seeds, 95% bootstrap CI):")
    for row in rows:
        point = " ".join(f"{k}={row[k]}" for k in spec.grid) or spec.algo
        failed = f"  ({row['failed']} of {row['seeds']} seeds failed)" if row["failed"] else ""
        if "iqm" in row:
            interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            print_fn(f"  {point:<36} {row['iqm']:9.2f}  {interval}{failed}")
        else:
            print_fn(f"  {point:<36} {'failed' if failed else 'no finished episodes'}{failed}")
    return rows


def _point(spec: RunSpec, config_index: int) -> dict:
    return config_lib.grid_points(spec.grid)[config_index] if spec.grid else {}


def _label(spec: RunSpec, config_index: int) -> str:
    return " ".join(f"{k}={v}" for k, v in _point(spec, config_index).items()) or spec.algo


def _number(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def _differences(saved: RunSpec, given: RunSpec) -> str:
    saved_dict, given_dict = dataclasses.asdict(saved), dataclasses.asdict(given)
    return "; ".join(
        f"{key}={saved_dict[key]!r} (now {given_dict[key]!r})"
        for key in saved_dict
        if saved_dict[key] != given_dict[key]
    )


def _rows(members, owned, updates, steps_per_update, metrics) -> list[list]:
    """metrics.csv rows of this process's members."""
    names = sorted(metrics)
    rows = []
    for m in owned:
        config_index, seed_index = members[m]
        for k, update in enumerate(updates):
            values = [float(metrics[name][m, k]) for name in names]
            rows.append([m, config_index, seed_index, int(update), int(update) * steps_per_update])
            rows[-1].extend(values)
    return rows
