"""The rljax command line: train, sweep, evaluate, export; list agents, fields, envs and data.

Bad input (unknown names, out-of-range fields, an existing run directory) ends with one line
naming the problem and exit status 2, never a traceback.
"""

import argparse
import atexit
import datetime
import os
import sys
import threading
from pathlib import Path

import yaml

PRESET_KEYS = {"algo", "env", "agent", "seeds", "seed"}


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("algo", help="algorithm name, e.g. ppo (see 'rljax agents')")
    parser.add_argument("--env", help="environment name (see 'rljax envs')")
    parser.add_argument("--config", type=Path, help="a YAML preset, e.g. configs/ppo/cartpole.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="set a config field (lr=3e-4; see 'rljax fields ALGO') or an env option "
        "(env.normalize_obs=true)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, help="number of seeds, vmapped (default 1)")
    parser.add_argument("--seed", type=int, help="first seed (default 0)")
    parser.add_argument(
        "--total-steps", type=float,
        help="environment steps per member (gradient steps for offline agents)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset",
        help="offline agents: a dataset file, or a name in the data directories (see 'rljax "
        "data list')",
    )
    parser.add_argument(
        "--offline-steps", type=float, help="offline agents: gradient steps on the dataset"
    )
    parser.add_argument(
        "--model-steps", type=float,
        help="model-based agents: gradient steps of the dynamics model, before the policy's",
    )  # fmt: skip
    parser.add_argument(
        "--online-steps", type=float,
        help="fine-tuning agents: env steps online after the offline phase, in the dataset's env",
    )  # fmt: skip
    parser.add_argument(
        "--max-episode-steps", type=int, metavar="N",
        help="offline agents: the env's time limit, to infer the episode ends of a D4RL file "
        "that has no timeouts",
    )  # fmt: skip
    parser.add_argument(
        "--eval-episodes", type=int,
        help="offline agents: evaluation episodes (per task) after each chunk (default 10)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="run directory (default runs/ALGO-ENV-TIME)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--chunk-updates", type=int, help="updates per jitted chunk")
    parser.add_argument(
        "--checkpoint-seconds", type=float, default=60.0, help="least seconds between checkpoints"
    )
    parser.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    parser.add_argument("--wandb", metavar="PROJECT", help="also log to this W&B project")
    hosts = parser.add_argument_group("multi-process runs (the same command on every process)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    hosts.add_argument("--num-processes", type=int, help="number of processes")
    hosts.add_argument("--process-id", type=int, help="this process's index, from 0")
    hosts.add_argument(
        "--distributed", action="store_true",
        help="join a multi-process run described by the cluster's environment (SLURM, MPI, ...)",
    )  # fmt: skip


def _spec(args, grid: dict):
    """The RunSpec the arguments describe; the runner resolves the rest (``runner.spec``)."""
    from rljax import agents
    from rljax.runner.config import ConfigError, parse_assignments
    from rljax.runner.spec import RunSpec

    try:
        preset = yaml.safe_load(args.config.read_text()) if args.config else {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{args.config} is not valid YAML: {error}") from None
    if not isinstance(preset, dict):
        raise ConfigError(f"{args.config} must be a YAML mapping with keys {sorted(PRESET_KEYS)}")
    unknown = sorted(set(preset) - PRESET_KEYS)
    if unknown:
        raise ConfigError(
            f"{args.config} has unknown key(s) {', '.join(unknown)}; "
            f"a preset has {', '.join(sorted(PRESET_KEYS))}"
        )
    if preset.get("algo", args.algo) != args.algo:
        raise ConfigError(f"{args.config} is a preset for {preset['algo']}, not {args.algo}")
    env = dict(preset.get("env", {}))
    agent = dict(preset.get("agent", {}))
    for key, value in parse_assignments(args.set).items():
        if key.startswith("env."):
            env[key.removeprefix("env.")] = yaml.safe_load(value)
        else:
            agent[key] = value
    if args.env:
        env["name"] = args.env
    declared = agents.declaration(args.algo)
    if args.total_steps is not None:
        agent[declared.budget_field] = int(args.total_steps)
    if args.offline_steps is not None:
        if not declared.from_dataset:
            raise ConfigError(f"{args.algo} learns online, from its env: --offline-steps is for "
                              "the offline agents (see 'rljax agents')")  # fmt: skip
        agent["total_updates"] = int(args.offline_steps)
    if args.online_steps is not None:
        agent["online_steps"] = int(args.online_steps)
    if args.model_steps is not None:
        agent["model_updates"] = int(args.model_steps)
    options = {"dataset": args.dataset, "max_episode_steps": args.max_episode_steps}
    if args.eval_episodes is not None:
        options["eval_episodes"] = args.eval_episodes
    return RunSpec(
        algo=args.algo,
        env=env,
        agent=agent,
        grid=grid,
        seeds=args.seeds if args.seeds is not None else preset.get("seeds", 1),
        seed=args.seed if args.seed is not None else preset.get("seed", 0),
        chunk_updates=args.chunk_updates,
        **options,
    )


def _train(args, grid: dict) -> None:
    import math
    import secrets

    from rljax import agents

    agents.check_name(args.algo)  # before JAX imports: an unknown name fails at once
    from rljax.runner.config import FieldOutOfRange, member_configs
    from rljax.runner.errors import RunError
    from rljax.runner.spec import check_fine_tuning

    for flag in ("total_steps", "offline_steps", "online_steps", "model_steps"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            name = "--" + flag.replace("_", "-")
            raise FieldOutOfRange(f"{name}={value} is not a finite number")
    spec = _spec(args, grid)
    check_fine_tuning(spec)
    # The fields, checked before the runner (and gymnax, brax) import: a typo fails fast.
    member_configs(agents.declaration(spec.algo), spec.agent, spec.grid)
    out = args.out
    if out is None:
        if args.coordinator or args.distributed:  # each process would name its own directory
            raise RunError("a multi-process run needs --out, the same on every process")
        if args.resume:
            raise RunError("--resume needs --out, the run directory to continue")
        # The time names the run; the random suffix keeps runs started in one second apart.
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        source = Path(spec.dataset).stem if spec.dataset else spec.env.get("name", "env")
        source = source.replace("/", "_")
        out = Path("runs") / f"{spec.algo}-{source}-{stamp}-{secrets.token_hex(3)}"
    from rljax.runner.loop import train

    train(
        spec, out, resume=args.resume, checkpoint_seconds=args.checkpoint_seconds,
        tensorboard=args.tensorboard, wandb_project=args.wandb,
    )  # fmt: skip


def _sweep(args) -> None:
    from rljax.runner.config import parse_grid

    _train(args, parse_grid(args.grid))


def _eval(args) -> None:
    from rljax.runner import report
    from rljax.runner.policy import evaluate_run

    returns, program, step = evaluate_run(
        args.run_dir, args.episodes, args.deterministic, args.seed
    )
    options = {"episodes": args.episodes, "deterministic": args.deterministic, "seed": args.seed}
    result = report.evaluation(args.run_dir, program, returns, step, options)
    print("\n".join(report.evaluation_text(result, args.members)))
    out = args.out or args.run_dir / "eval.json"
    report.write_json(out, result)
    print(f"wrote {out}")


def _agents(args) -> None:
    from rljax.runner import describe

    print("\n".join(describe.agents_text()))


def _fields(args) -> None:
    from rljax import agents

    agents.check_name(args.algo)  # before JAX imports: an unknown name fails at once
    from rljax.runner import describe

    print("\n".join(describe.fields_text(args.algo)))


def _list(args) -> None:
    from rljax.runner import describe

    print("\n".join(describe.datasets_text()))


def _envs(args) -> None:
    from rljax import envs

    for source, names in envs.names().items():
        if names:
            print(f"{source}:")
            print("\n".join(f"  {name}" for name in names))


def _export(args) -> None:
    from rljax.runner.policy import export_policy

    signature = export_policy(args.run_dir, args.out, args.member, not args.stochastic)
    inputs = ", ".join(f"{x['name']} {x['dtype']}{x['shape']}" for x in signature["inputs"])
    print(f"wrote {args.out} (update {signature['update']}, {inputs}) and {args.out}.json")


def _generate(args) -> None:
    from rljax.data import data_dir, prepare_outputs
    from rljax.generate import d4rl, mazes, mbrcsl_maze
    from rljax.runner.errors import RunError

    if args.env.removeprefix("rljax/").lower() == "pointmaze-mbrcsl":
        if args.kind or args.steps is not None:
            raise RunError("MBRCSL's maze has one dataset of 200-step episodes: no --kind, --steps")
        path = mbrcsl_maze.write(
            args.out or data_dir(), seed=args.seed, episodes=args.episodes or 1000, force=args.force
        )
        print(f"wrote {path}")
        return
    if args.env.removeprefix("rljax/").lower().startswith(("pointmaze", "gridmaze")):
        kinds, out = args.kind or mazes.KINDS, args.out or data_dir()
        # Every kind's files are checked before the first is generated.
        prepare_outputs([p for kind in kinds for p in mazes.paths(args.env, kind, out)], args.force)
        for kind in kinds:
            paths = mazes.write(
                args.env, kind, out, args.episodes, args.steps, seed=args.seed, force=args.force
            )
            print("wrote " + ", ".join(map(str, paths)))
        return
    if args.episodes is not None or args.steps is not None:
        raise RunError("--episodes and --steps size the maze datasets only")
    try:
        d4rl.generate_all(args.env, args.out, args.kind or d4rl.KINDS, args.seed, force=args.force)
    except d4rl.BehaviourFailed as error:
        raise RunError(str(error)) from None


def _info(args) -> None:
    import numpy as np

    from rljax import data

    path = data.resolve(args.dataset)
    dataset, metadata = data.load(path, max_episode_steps=args.max_episode_steps)
    returns = data.episode_returns(dataset.rewards, dataset.terminals, dataset.timeouts)
    print(f"{path}")
    print(f"  transitions {dataset.size:,}, episodes {len(returns):,}")
    print(f"  observations {dataset.observations.shape[1:]}, actions {dataset.actions.shape[1:]}")
    if len(returns) and bool(dataset.rewards.any()):  # goal-conditioned data has no rewards
        line = f"  episode return mean {returns.mean():.2f}"
        line += f" (min {returns.min():.2f}, max {returns.max():.2f})"
        try:
            random, expert = data.references(metadata, path.stem)
            score = float(np.mean(data.normalized_score(returns, random, expert)))
            line += f", normalized score {score:.1f} (random {random:.1f}, expert {expert:.1f})"
        except data.NoReferenceScores:
            pass
        print(line)
    for key in ("env", "kind", "policy", "seed", "actions_rescaled_from", "converted_from"):
        if key in metadata:
            print(f"  {key}: {metadata[key]}")
    if "corruption" in metadata:
        record = metadata["corruption"]
        shown = ("what", "mode", "rate", "range", "seed", "count", "source")
        print("  corruption: " + ", ".join(f"{k} {record[k]}" for k in shown if k in record))
    if "env" not in metadata and data.source_env(metadata):  # from a Minari env_spec
        print(f"  env: {data.source_env(metadata)['name']} (from its env_spec)")


def _convert(args) -> None:
    from rljax import data
    from rljax.data import convert

    bounds = None
    if args.rescale_actions:
        metadata = data.read_metadata(args.dataset)
        env = {"name": args.env} if args.env else data.source_env(metadata)
        bounds = _action_bounds(env, metadata, args.dataset)
    written = convert.convert(
        args.dataset, _output(args.out), layout=args.to, action_bounds=bounds,
        env={"name": args.env} if args.env else None,
        max_episode_steps=args.max_episode_steps, force=args.force,
    )  # fmt: skip
    rescaled = f", actions rescaled from [{bounds[0]}, {bounds[1]}]" if bounds else ""
    print(f"wrote {written}{rescaled}")


def _corrupt(args) -> None:
    from rljax.generate.corrupt import attack_dataset

    written = attack_dataset(
        args.dataset, _output(args.out), args.what, args.mode, args.rate, args.range, args.seed,
        critic=args.critic, member=args.member, layout=args.to, force=args.force,
    )  # fmt: skip
    print(f"wrote {written}")


def _output(out: str) -> str:
    """A Minari output given as a path (./name, ~/name, /abs) rather than an id, made absolute."""
    from rljax.data import convert

    if convert.layout_of(out) == "minari" and out.startswith((".", "~", "/")):
        return str(Path(out).expanduser().resolve())
    return out


def _action_bounds(env: dict, metadata: dict, dataset: str) -> tuple:
    """The action bounds of the env a dataset records (made without unit_actions), else of the
    Box action space a Minari dataset records."""
    import numpy as np

    from rljax import envs
    from rljax.data import MalformedDataset, convert

    if env and env["name"] in {n for names in envs.names().values() for n in names}:
        options = {k: v for k, v in env.items() if k not in ("name", "unit_actions")}
        made, params = envs.make(env["name"], **envs.without_normalization(options))
        space = made.action_space(params)
        return np.asarray(space.low).tolist(), np.asarray(space.high).tolist()
    bounds = convert.recorded_bounds(metadata)
    if bounds is None:
        raise MalformedDataset(
            f"{dataset} records neither an env rljax can make nor a Box action space: pass "
            "--env NAME, the env whose action bounds its actions are in (see 'rljax envs')"
        )
    return bounds


def _version() -> str:
    """``rljax X (jax Y)`` from the installed packages' metadata, without importing JAX."""
    from importlib.metadata import version

    return f"rljax {version('rljax')} (jax {version('jax')})"


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="rljax", description=__doc__.splitlines()[0])
    main.add_argument(
        "--version", action="version", version=_version(), help="print rljax's and jax's versions"
    )
    commands = main.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    train = commands.add_parser("train", help="train an agent over one or more seeds")
    _run_options(train)
    train.set_defaults(handler=lambda args: _train(args, {}))
    sweep = commands.add_parser("sweep", help="train a grid of configs x seeds as one program")
    _run_options(sweep)
    sweep.add_argument(
        "--grid", action="append", required=True, metavar="FIELD=V1,V2,...",
        help="values of a traced config field; repeat for a Cartesian product",
    )  # fmt: skip
    sweep.set_defaults(handler=_sweep)
    evaluate = commands.add_parser(
        "eval",
        help="evaluate the latest checkpoint of a run: IQM and CI per config, into eval.json",
    )
    evaluate.add_argument("run_dir", type=Path, help="the run directory")
    evaluate.add_argument(
        "--episodes", type=int, default=16,
        help="episodes per member, per task for goal-conditioned envs (default 16)",
    )  # fmt: skip
    evaluate.add_argument(
        "--deterministic", action="store_true", help="act greedily (default: sample actions)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    evaluate.add_argument(
        "--members", action="store_true", help="also print one line per member (config, seed)"
    )
    evaluate.add_argument(
        "--out", type=Path, help="where to write the results (default RUN_DIR/eval.json)"
    )
    evaluate.set_defaults(handler=_eval)
    export = commands.add_parser(
        "export", help="write a run's policy as a jax.export artifact that needs jax alone"
    )
    export.add_argument("run_dir", type=Path, help="the run directory")
    export.add_argument("out", type=Path, help="the artifact; its signature goes to OUT.json")
    export.add_argument("--member", type=int, default=0, help="which member (default 0)")
    export.add_argument(
        "--stochastic", action="store_true", help="sample actions (default: deterministic)"
    )
    export.set_defaults(handler=_export)
    listing = commands.add_parser("envs", help="list every environment name")
    listing.set_defaults(handler=_envs)
    agents = commands.add_parser(
        "agents", help="list every agent by what it learns from, with its paper"
    )
    agents.set_defaults(handler=_agents)
    fields = commands.add_parser(
        "fields", help="an agent's config fields: defaults, allowed values, traced or static"
    )
    fields.add_argument("algo", help="algorithm name, e.g. iql (see 'rljax agents')")
    fields.set_defaults(handler=_fields)
    datasets = commands.add_parser("data", help="generate, list and inspect offline datasets")
    data_commands = datasets.add_subparsers(
        title="commands", dest="data_command", required=True, metavar="COMMAND"
    )
    generate = data_commands.add_parser(
        "generate", help="train a behaviour agent and write its datasets (D4RL layout)"
    )
    generate.add_argument(
        "env",
        help="an env with a recipe (Pendulum-v1, brax/hopper, ...), a maze "
        "(rljax/PointMaze-medium, ...) or MBRCSL's stitching maze (rljax/PointMaze-mbrcsl)",
    )
    generate.add_argument(
        "--kind", action="append", metavar="KIND",
        help="random, medium, expert, medium-replay or medium-expert; for mazes navigate or "
        "stitch; repeat (default: all)",
    )  # fmt: skip
    generate.add_argument("--episodes", type=int, help="mazes: trajectories (OGBench's default)")
    generate.add_argument("--steps", type=int, help="mazes: steps per trajectory")
    generate.add_argument("--out", type=Path, help="directory (default $RLJAX_DATA_DIR)")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    generate.add_argument(
        "--force", action="store_true", help="replace dataset files that already exist"
    )
    generate.set_defaults(handler=_generate)
    listing = data_commands.add_parser(
        "list", help="the datasets in the data directories: name, layout, size, env, kind"
    )
    listing.set_defaults(handler=_list)
    info = data_commands.add_parser("info", help="what a dataset holds")
    info.add_argument("dataset", help="a dataset file, or a name in the data directories")
    info.add_argument(
        "--max-episode-steps", type=int, metavar="N",
        help="the env's time limit, for a D4RL file without timeouts",
    )  # fmt: skip
    info.set_defaults(handler=_info)
    conversion = data_commands.add_parser(
        "convert",
        help="write a dataset in another layout (D4RL, OGBench, Minari), or with its actions "
        "rescaled to [-1, 1]",
    )
    conversion.add_argument("dataset", help="a dataset file, or a name in the data directories")
    conversion.add_argument(
        "out",
        help="the output: X.hdf5 (D4RL), X.npz (OGBench), or a Minari id (ns/name-v0, under "
        "$MINARI_DATASETS_PATH) or directory (./name, an absolute path)",
    )
    conversion.add_argument(
        "--to", choices=("d4rl", "ogbench", "minari"), help="the layout (default: from OUT)"
    )
    conversion.add_argument(
        "--rescale-actions", action="store_true",
        help="map actions from the env's bounds onto [-1, 1], as offline agents learn them "
        "(the bounds are recorded, so the policy acts in the env's units)",
    )  # fmt: skip
    conversion.add_argument(
        "--env",
        help="the env the data came from, when the metadata records none or one rljax cannot "
        "make (see 'rljax envs')",
    )
    conversion.add_argument(
        "--max-episode-steps", type=int, metavar="N",
        help="the env's time limit, for a D4RL file without timeouts",
    )  # fmt: skip
    conversion.add_argument("--force", action="store_true", help="replace an existing OUT")
    conversion.set_defaults(handler=_convert)
    corruption = data_commands.add_parser(
        "corrupt",
        help="write a copy of a dataset with a fraction of its transitions corrupted (RIQL's "
        "protocol), the corrupted indices in its metadata",
    )
    corruption.add_argument("dataset", help="a dataset file, or a name in the data directories")
    corruption.add_argument(
        "out", help="the output (its layout from the suffix, else the source's; see 'convert')"
    )
    corruption.add_argument(
        "--what", required=True,
        help="observations, actions, rewards or next_observations",
    )  # fmt: skip
    corruption.add_argument(
        "--mode", default="random",
        help="random (uniform noise scaled by each feature's std) or adversarial (a gradient "
        "attack on a trained EDAC critic, --critic; for rewards, -range * r) (default random)",
    )  # fmt: skip
    corruption.add_argument(
        "--rate", type=float, default=0.3, help="fraction of transitions corrupted (default 0.3)"
    )
    corruption.add_argument(
        "--range", type=float, default=1.0,
        help="noise scale, in feature standard deviations (default 1.0)",
    )  # fmt: skip
    corruption.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    corruption.add_argument(
        "--critic", metavar="RUN_DIR", help="adversarial mode: a trained edac run to attack"
    )
    corruption.add_argument(
        "--member", type=int, default=0, help="which member of the critic run (default 0)"
    )
    corruption.add_argument(
        "--to", choices=("d4rl", "ogbench", "minari"), help="the layout (default: from OUT)"
    )
    corruption.add_argument("--force", action="store_true", help="replace an existing OUT")
    corruption.set_defaults(handler=_corrupt)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if getattr(args, "coordinator", None) or getattr(args, "distributed", False):
            from rljax.runner.distributed import initialize  # before anything starts JAX

            initialize(args.coordinator, args.num_processes, args.process_id, args.distributed)
    except ValueError as error:
        print(f"rljax: error: {error}", file=sys.stderr)
        return 2
    from rljax.runner.errors import Divergence, Interrupted, RunError

    try:
        args.handler(args)
    except Interrupted as stop:  # checkpointed; the conventional status of a signalled process
        print(f"rljax: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except Divergence as error:
        print(f"rljax: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, RunError, FileNotFoundError, ImportError) as error:
        print(f"rljax: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the run's own writes arrive as RunError; these name their path
        path = f" {error.filename}" if error.filename is not None else ""
        cause = f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error)
        print(f"rljax: error: cannot access{path}: {cause}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The ``rljax`` command: ``main``, then the exit handlers, then an exit that skips the
    interpreter's teardown. Every file is written and closed by then; what is skipped is
    freeing the compiled programs and modules object by object (0.15-0.6 s after a CartPole
    run), which the operating system does at once. Under a profiler or a coverage tracer, which
    write their data at the normal exit, it exits normally. Its output is line-buffered, so a
    run's progress reaches a pipe (``| tee``, a job's log) line by line, not 8 kB at a time."""
    sys.stdout.reconfigure(line_buffering=True)
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    for thread in threading.enumerate():
        if not thread.daemon and thread is not threading.current_thread():
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
