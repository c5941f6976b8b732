"""How fast SAC and DSAC-T train: gradient updates/s, env steps/s, compile time, peak memory.

Cases, each one seed:
  pendulum  the Pendulum presets (4 envs, one gradient step per env step, 64x64, batch 128)
  paper     Pendulum with each paper's networks (SAC 256x256 ReLU, DSAC-T 256x3 GELU),
            batch 256, one gradient step per env step
  hopper    brax hopper, 16 envs and one gradient step per 16 env steps, paper networks
            (slow to compile on a CPU; --skip-brax drops it)

The budget is counted in iterations after warm-up (``learning_starts=0``), so every iteration
takes its gradient steps. Timing and memory as in benchmark_ppo.py.

    python experiments/benchmark_off_policy.py [--cases pendulum,paper] [--iterations 2000]
"""

import argparse

import jax
from benchmark_ppo import compile_fn, peak_memory, run_seconds

from rljax import envs
from rljax.agents import dsac_t, sac

AGENTS = {"sac": sac, "dsac_t": dsac_t}
PAPER = {"sac": dict(hidden_sizes=(256, 256)), "dsac_t": dict(hidden_sizes=(256, 256, 256))}
PRESET = dict(num_envs=4, utd_ratio=1.0, hidden_sizes=(64, 64), batch_size=128)


def measure(agent, config, env, env_params, iterations, seed=0) -> dict:
    key = jax.random.key(seed)
    compiled, compile_s = compile_fn(
        lambda k: agent.train(config, env, env_params, k, iterations), key
    )
    run_s = run_seconds(compiled, key)
    return {
        "compile_s": compile_s,
        "run_s": run_s,
        "env_steps_per_s": iterations * config.steps_per_update / run_s,
        "updates_per_s": iterations * config.gradient_steps / run_s,
        "peak_mib": peak_memory()[0],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="pendulum,paper,hopper")
    parser.add_argument("--skip-brax", action="store_true", help="drop the hopper case")
    parser.add_argument("--iterations", type=int, default=2000, help="iterations per case")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if not (args.skip_brax and c == "hopper")]

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    header = f"{'case':<9} {'agent':<7} {'compile s':>9} {'run s':>7} {'updates/s':>10}"
    rows = [header + f" {'env steps/s':>12} {'peak MiB':>9}"]
    for case in cases:
        env_name = "brax/hopper" if case == "hopper" else "Pendulum-v1"
        env, env_params = envs.make(env_name, normalize_obs=case == "hopper")
        for name, agent in AGENTS.items():
            fields = {"pendulum": PRESET, "paper": {**PRESET, **PAPER[name], "batch_size": 256}}
            fields["hopper"] = {**PAPER[name], "num_envs": 16, "utd_ratio": 1 / 16}
            config = agent.Config(**fields[case], learning_starts=0, buffer_size=100_000)
            r = measure(agent, config, env, env_params, args.iterations)
            rows.append(
                f"{case:<9} {name:<7} {r['compile_s']:9.1f} {r['run_s']:7.1f} "
                f"{r['updates_per_s']:10,.0f} {r['env_steps_per_s']:12,.0f} {r['peak_mib']:9,.0f}"
            )
            print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
