"""How fast rljax's PPO trains: env steps per second, compile time and peak memory.

Cases:
  a  PureJaxRL's CartPole config (``ppo.Config()``: 4 envs x 128 steps, 5e5 steps), one seed.
  b  CartPole with many envs (2048 x 16 steps by default, 2**21 steps).
  c  a 16-member sweep over lr x clip_eps on CartPole (1e5 steps each): one vmapped program
     against the same 16 runs one after another through one compiled function.
  d  brax hopper with normalized observations and rewards, a short run (slow to compile on CPU).
  r  recurrent PPO (``ppo_rnn.Config()``: PureJaxRL's ppo_rnn, a GRU of 128) on CartPole with
     case a's rollout and hyperparameters, one seed: its steps/s beside case a's (at --scale 1
     case a's budget too).

Compilation is timed alone (``jax.jit(f).lower(...).compile()``); steps/s time the compiled call
until ``jax.block_until_ready``. Peak memory is the device's ``peak_bytes_in_use`` where the
backend reports it, else the process's max RSS; both are peaks since the process started, so a
case's figure covers the cases before it too.

    python experiments/benchmark_ppo.py                      # all cases, CPU-sized budgets
    python experiments/benchmark_ppo.py --cases a,b --scale 10 --num-envs 8192 --json out.json
    python experiments/benchmark_ppo.py --cases a,r               # feed-forward vs recurrent
"""

import argparse
import itertools
import json
import resource
import time

import jax

from rljax import envs
from rljax.agents import ppo, ppo_rnn
from rljax.runner.config import stack

SWEEP_LRS = (1e-4, 2.5e-4, 5e-4, 1e-3)
SWEEP_CLIP_EPS = (0.1, 0.2, 0.3, 0.4)


def compile_fn(fn, *args):
    """(compiled fn, seconds to lower and compile it)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def run_seconds(compiled, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def peak_memory() -> tuple[float, str]:
    """(MiB, what it measures)."""
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "process max RSS"


def result(case, what, steps, compile_s, run_s) -> dict:
    print(f"  {case}: {what}, {compile_s:.1f} s compile + {run_s:.1f} s run", flush=True)
    memory_mib, memory_kind = peak_memory()
    return {
        "case": case,
        "what": what,
        "env_steps": steps,
        "compile_s": compile_s,
        "run_s": run_s,
        "total_s": compile_s + run_s,
        "steps_per_s": steps / run_s,
        "peak_mib": memory_mib,
        "memory": memory_kind,
    }


def single_run(case, what, config, env, env_params, seed, agent=ppo) -> dict:
    key = jax.random.key(seed)
    compiled, compile_s = compile_fn(lambda k: agent.train(config, env, env_params, k), key)
    run_s = run_seconds(compiled, key)
    return result(case, what, config.num_updates * config.steps_per_update, compile_s, run_s)


def sweep(config, env, env_params, seed) -> list[dict]:
    """16 (lr, clip_eps) members: one vmapped program, then one after another."""
    configs = [
        config.replace(lr=lr, clip_eps=eps)
        for lr, eps in itertools.product(SWEEP_LRS, SWEEP_CLIP_EPS)
    ]
    keys = jax.random.split(jax.random.key(seed), len(configs))
    steps = len(configs) * config.num_updates * config.steps_per_update

    def train(c, k):
        return ppo.train(c, env, env_params, k)

    def train_all(configs, keys):
        # Members initialized in turn, as the runner does: a vmapped orthogonal init is a
        # batched LAPACK QR that can deadlock on a small CPU (jaxlib 0.10.2).
        states = jax.lax.map(lambda ck: ppo.init(ck[0], env, env_params, ck[1]), (configs, keys))

        def run(c, state):
            return jax.lax.scan(
                lambda s, _: ppo.update(c, env, env_params, s), state, None, c.num_updates
            )

        return jax.vmap(run)(configs, states)

    stacked = stack(configs)
    compiled, compile_s = compile_fn(train_all, stacked, keys)
    run_s = run_seconds(compiled, stacked, keys)
    vmapped = result("c", f"sweep x{len(configs)}, vmapped", steps, compile_s, run_s)

    # The config is an argument, not a constant, so its traced lr and clip_eps reuse one program.
    compiled, compile_s = compile_fn(train, configs[0], keys[0])
    run_s = sum(run_seconds(compiled, c, k) for c, k in zip(configs, keys, strict=True))
    sequential = result("c", f"sweep x{len(configs)}, sequential", steps, compile_s, run_s)
    return [vmapped, sequential]


def print_table(results: list[dict]):
    header = ("case", "what", "env steps", "compile s", "run s", "total s", "steps/s", "peak MiB")
    rows = [
        (
            r["case"],
            r["what"],
            f"{r['env_steps']:,}",
            f"{r['compile_s']:.1f}",
            f"{r['run_s']:.1f}",
            f"{r['total_s']:.1f}",
            f"{r['steps_per_s']:,.0f}",
            f"{r['peak_mib']:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print()
    for row in (header, *rows):
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,c,d,r", help="comma-separated subset of a,b,c,d,r")
    parser.add_argument("--skip-brax", action="store_true", help="drop case d")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the step budgets of cases b, c, d, r"
    )
    parser.add_argument("--num-envs", type=int, default=2048, help="envs in case b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    cases = set(args.cases.split(",")) - ({"d"} if args.skip_brax else set())
    if not cases <= set("abcdr"):
        parser.error(f"unknown cases: {sorted(cases - set('abcdr'))}")

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
        f"(x{jax.device_count()})"
    )
    cartpole = envs.make("CartPole-v1")
    results = []
    if "a" in cases:
        config = ppo.Config()
        results.append(single_run("a", "CartPole, PureJaxRL config", config, *cartpole, args.seed))
    if "r" in cases:
        config = ppo_rnn.Config(total_timesteps=int(5e5 * args.scale))
        what = f"CartPole, recurrent ({config.cell.upper()} {config.cell_size})"
        results.append(single_run("r", what, config, *cartpole, args.seed, agent=ppo_rnn))
    if "b" in cases:
        config = ppo.Config(
            num_envs=args.num_envs,
            num_steps=16,
            num_minibatches=32,
            total_timesteps=int(2**21 * args.scale),
        )
        what = f"CartPole, {config.num_envs} envs x {config.num_steps}"
        results.append(single_run("b", what, config, *cartpole, args.seed))
    if "c" in cases:
        config = ppo.Config(total_timesteps=int(1e5 * args.scale))
        results.extend(sweep(config, *cartpole, args.seed))
    if "d" in cases:
        hopper = envs.make("brax/hopper", normalize_obs=True, normalize_reward=True)
        config = ppo.Config(
            num_envs=64,
            num_steps=10,
            num_minibatches=4,
            update_epochs=4,
            hidden_sizes=(256, 256),
            lr=3e-4,
            ent_coef=0.0,
            anneal_lr=False,
            total_timesteps=int(2**15 * args.scale),
        )
        what = f"brax hopper, {config.num_envs} envs x {config.num_steps}"
        results.append(single_run("d", what, config, *hopper, args.seed))

    print_table(results)
    print()
    summary = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(device)}
    if "c" in cases:
        vmapped, sequential = (r for r in results if r["case"] == "c")
        summary["sweep_speedup_total"] = sequential["total_s"] / vmapped["total_s"]
        summary["sweep_speedup_run"] = sequential["run_s"] / vmapped["run_s"]
        print(
            f"sweep speed-up (sequential time / vmapped time): "
            f"{summary['sweep_speedup_total']:.1f}x in total time with compile, "
            f"{summary['sweep_speedup_run']:.1f}x in run time"
        )
    if results:
        print(f"peak MiB: {results[0]['memory']}, since the process started")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
