"""A training run: sweep configs x seeds as one vmapped, sharded program, in jitted chunks.

Each chunk is ``lax.scan`` over K updates inside ``jit``; nothing crosses to the host inside it.
Between chunks the runner logs metrics, prints progress, and checkpoints. Seed s of every config
uses the key ``PRNGKey(seed + s)``, so a sweep member reproduces the single run of its config.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rljax import agents, envs
from rljax.runner import config as config_lib
from rljax.runner import results
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.sinks import CsvLog, TensorBoardSink, WandbSink

VERSIONED = ["jax", "jaxlib", "flax", "optax", "chex", "distrax", "gymnax", "brax"]
VERSIONED += ["orbax-checkpoint", "numpy", "rljax"]


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

    @property
    def base(self):
        return self.configs[0]

    def abstract(self, shapes):
        """Shapes and dtypes laid out over the member sharding, to compile and restore."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), shapes
        )

    def init_fn(self):
        def init(configs, keys):
            return jax.vmap(lambda c, k: self.agent.init(c, self.env, self.env_params, k))(
                configs, keys
            )

        return jax.jit(init, out_shardings=self.sharding)

    def chunk_fn(self, num_updates: int):
        agent, env, env_params = self.agent, self.env, self.env_params

        def run_member(config, state):
            def one_update(state, _):
                return agent.update(config, env, env_params, state)

            return jax.lax.scan(one_update, state, None, num_updates)

        return jax.jit(jax.vmap(run_member), donate_argnums=(1,), out_shardings=self.sharding)


def build(spec: RunSpec) -> Program:
    """Validates a RunSpec (unknown names and bad values raise named errors) and builds it."""
    if spec.seeds < 1:
        raise config_lib.FieldOutOfRange(f"seeds={spec.seeds} is out of range: it must be >= 1")
    agent = agents.get(spec.algo)
    config_lib.build(agent.Config, spec.agent)
    config_lib.check_sweepable(agent.Config, spec.grid)
    points = config_lib.grid_points(spec.grid)
    configs = [config_lib.build(agent.Config, {**spec.agent, **point}) for point in points]
    env_options = {k: v for k, v in spec.env.items() if k != "name"}
    env, env_params = envs.make(spec.env["name"], **env_options)
    members = [(c, s) for c in range(len(configs)) for s in range(spec.seeds)]
    stacked = config_lib.stack([configs[c] for c, _ in members])
    keys = jax.numpy.stack([jax.random.PRNGKey(spec.seed + s) for _, s in members])
    sharding = member_sharding(len(members))
    stacked, keys = jax.device_put((stacked, keys), sharding)
    return Program(spec, agent, env, env_params, configs, members, stacked, keys, sharding)


def member_sharding(num_members: int) -> NamedSharding:
    """Shards the member axis over as many local devices as divide it evenly."""
    devices = jax.local_devices()
    count = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    return NamedSharding(Mesh(np.array(devices[:count]), ("member",)), PartitionSpec("member"))


def chunk_size(num_updates: int) -> int:
    """The largest divisor of num_updates up to a tenth of it: ~10+ chunks, one compilation."""
    limit = max(1, num_updates // 10)
    return max(d for d in range(1, limit + 1) if num_updates % d == 0)


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def devices() -> dict:
    local = jax.local_devices()
    return {"backend": jax.default_backend(), "kind": local[0].device_kind, "count": len(local)}


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
    """Trains (or resumes) the run in ``out`` and returns its summary."""
    out = Path(out)
    saved = out / "config.yaml"
    if out.exists() and not resume:
        raise RunDirectoryExists(
            f"run directory {out} already exists; pass --resume to continue it, "
            "or choose another --out"
        )
    if resume and saved.exists() and RunSpec.load(saved) != spec:
        differences = _differences(RunSpec.load(saved), spec)
        raise RunError(f"cannot resume {out}: the run was started with {differences}")

    program = build(spec)
    num_updates = program.base.num_updates
    if num_updates < 1:
        raise config_lib.FieldOutOfRange(
            f"total_timesteps={program.base.total_timesteps} is less than one update "
            f"({program.base.steps_per_update} steps)"
        )
    per_chunk = spec.chunk_updates or chunk_size(num_updates)
    if num_updates % per_chunk:
        raise config_lib.FieldOutOfRange(
            f"chunk_updates={per_chunk} must divide the number of updates ({num_updates})"
        )

    print_fn(
        f"{spec.algo} on {spec.env['name']}: {len(program.members)} member(s) "
        f"x {num_updates} updates of {program.base.steps_per_update} steps, as one program"
    )
    start = time.perf_counter()
    init_jit, chunk_jit = program.init_fn(), program.chunk_fn(per_chunk)
    abstract_state = program.abstract(jax.eval_shape(init_jit, program.stacked, program.keys))
    metric_names = sorted(jax.eval_shape(chunk_jit, program.stacked, abstract_state)[1])
    init_fn = init_jit.lower(program.stacked, program.keys).compile()
    chunk_fn = chunk_jit.lower(program.stacked, abstract_state).compile()
    compile_seconds = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)  # only now: a run that cannot start leaves nothing
    if not saved.exists():
        record = {"run": dataclasses.asdict(spec), "resolved": config_lib.as_dict(program.base)}
        saved.write_text(yaml.safe_dump(record, sort_keys=False))

    checkpoints = Checkpoints(out / "checkpoints")
    log = CsvLog(out / "metrics.csv", metric_names)
    done = checkpoints.latest_step() if resume else None
    if done is None:
        done, state = 0, init_fn(program.stacked, program.keys)
    else:
        state = checkpoints.restore(done, abstract_state)
        print_fn(f"resuming {out} from update {done} of {num_updates}")
    log.truncate_after(done)

    sinks = []
    if tensorboard:
        sinks.append(TensorBoardSink(out))
    if wandb_project:
        sinks.append(WandbSink(wandb_project, out, dataclasses.asdict(spec)))

    steps_per_update = program.base.steps_per_update
    resumed_at = done
    loop_start = last_checkpoint = time.perf_counter()
    for first in range(done, num_updates, per_chunk):
        state, metrics = chunk_fn(program.stacked, state)
        metrics = {name: np.asarray(value) for name, value in jax.device_get(metrics).items()}
        updates = np.arange(first + 1, first + per_chunk + 1)
        log.append(_rows(program.members, updates, steps_per_update, metrics))
        for sink in sinks:
            sink.write(updates * steps_per_update, metrics)
        done = first + per_chunk
        now = time.perf_counter()
        if now - last_checkpoint >= checkpoint_seconds or done == num_updates:
            checkpoints.save(done, state)
            last_checkpoint = now
        steps_per_second = (
            len(program.members) * steps_per_update * (done - resumed_at) / (now - loop_start)
        )
        eta = (num_updates - done) * (now - loop_start) / (done - resumed_at)
        print_fn(_progress(done, num_updates, steps_per_update, metrics, steps_per_second, eta))
    checkpoints.close()
    for sink in sinks:
        sink.close()

    timing = {
        "compile_seconds": round(compile_seconds, 2),
        "train_seconds": round(time.perf_counter() - loop_start, 2),
        "steps_per_second": round(steps_per_second, 1) if done > resumed_at else None,
    }
    return _finish(program, out, log.read(), num_updates, timing, print_fn)


def _progress(done, total, steps_per_update, metrics, steps_per_second, eta_seconds) -> str:
    fraction = done / total
    bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
    line = f"[{bar}] {100 * fraction:5.1f}%  {done * steps_per_update:,} steps/member"
    line += f"  {steps_per_second:,.0f} steps/s"
    if "episode_return" in metrics:
        episodes = metrics["episodes"]
        if episodes.sum() > 0:
            mean = (np.nan_to_num(metrics["episode_return"]) * episodes).sum() / episodes.sum()
            line += f"  return {mean:.1f}"
    return line + f"  ETA {datetime.timedelta(seconds=round(eta_seconds))}"


def _finish(program: Program, out: Path, table: dict, num_updates, timing, print_fn) -> dict:
    """Writes curve.png, summary.json and, for sweeps, sweep.csv; returns the summary."""
    spec, members = program.spec, program.members
    summary = {
        "algo": spec.algo,
        "env": spec.env["name"],
        "run": dataclasses.asdict(spec),
        "resolved": config_lib.as_dict(program.base),
        "versions": versions(),
        "devices": devices(),
        "num_updates": num_updates,
        "env_steps_per_member": num_updates * program.base.steps_per_update,
        **timing,
    }
    if "episode_return" in table:
        shape = (len(members), num_updates)
        returns = table["episode_return"].reshape(shape)
        episodes = table["episodes"].reshape(shape)
        final = results.final_returns(returns, episodes)
        summary["final_returns"] = [
            {"member": m, "config": c, "seed": spec.seed + s, **_point(spec, c),
             "final_return": _number(final[m])}
            for m, (c, s) in enumerate(members)
        ]  # fmt: skip
        window = max(1, num_updates // 50)
        curves = results.smoothed_returns(returns, episodes, window)
        env_steps = np.arange(1, num_updates + 1) * program.base.steps_per_update
        by_config = {
            _label(spec, c): curves[[m for m, (ci, _) in enumerate(members) if ci == c]]
            for c in range(len(program.configs))
        }
        results.plot_curves(
            out / "curve.png", env_steps, by_config, f"{spec.algo} on {spec.env['name']}"
        )
        summary["ranking"] = _rank(spec, members, final, out, print_fn)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_fn(f"results in {out}: summary.json, metrics.csv, curve.png, checkpoints/")
    return summary


def _rank(spec, members, final, out: Path, print_fn) -> list[dict]:
    """Configs ranked by the IQM over seeds of their final return, with a bootstrap CI."""
    rows = []
    for c in range(max(ci for ci, _ in members) + 1):
        values = final[[m for m, (ci, _) in enumerate(members) if ci == c]]
        values = values[np.isfinite(values)]
        row = {"config": c, **_point(spec, c), "seeds": len(values)}
        if len(values):
            low, high = results.bootstrap_ci(values, results.iqm)
            row.update(iqm=float(results.iqm(values)), ci_low=float(low), ci_high=float(high),
                       mean=float(values.mean()))  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda row: -row.get("iqm", -np.inf))
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(row.get(h, "")) for h in header) for row in rows]
    if spec.grid:
        (out / "sweep.csv").write_text("\n".join(lines) + "\n")
    print_fn("final return (IQM over seeds, 95% bootstrap CI):")
    for row in rows:
        point = " ".join(f"{k}={row[k]}" for k in spec.grid) or spec.algo
        if "iqm" in row:
            print_fn(
                f"  {point:<36} {row['iqm']:9.2f}  [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            )
        else:
            print_fn(f"  {point:<36} no finished episodes")
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


def _rows(members, updates, steps_per_update, metrics) -> list[list]:
    names = sorted(metrics)
    rows = []
    for m, (config_index, seed_index) in enumerate(members):
        for k, update in enumerate(updates):
            values = [float(metrics[name][m, k]) for name in names]
            rows.append([m, config_index, seed_index, int(update), int(update) * steps_per_update])
            rows[-1].extend(values)
    return rows
