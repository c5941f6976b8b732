"""PPO against MDPO and DPO: one loop with three policy objectives, over seeds, through the
runner.

On each environment the three agents share every setting but their objective's own fields:
CartPole-v1 and Pendulum-v1 from the presets (configs/{ppo,mdpo,dpo}/{cartpole,pendulum}.yaml;
the Pendulum settings are PPO's tuned ones for all three), and a brax environment with
PureJaxRL's brax settings scaled down to a CPU (``BRAX`` below). Each agent trains as one
vmapped program per environment. The script prints a final-return table per environment (mean,
IQM with a bootstrap 95% CI, every seed) with wall and compile times, and plots the three
agents' curves on one figure per environment.

    python experiments/ppo_variants.py                                  # all, 4 seeds
    python experiments/ppo_variants.py --envs brax --brax-env brax/hopper --brax-steps 1000000
"""

import argparse
from pathlib import Path

import numpy as np
from cli_runs import train_run

from rljax.runner import results

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("ppo", "mdpo", "dpo")
# PureJaxRL's brax settings (ppo_continuous_action.py), sized for a CPU: 32 envs x 32 steps in
# 4 minibatches (not 2048 x 10 in 32) and 64-64 networks (not 256-256).
BRAX = ["env.normalize_obs=true", "env.normalize_reward=true", "env.reward_gamma=0.99"]
BRAX += ["num_envs=32", "num_steps=32", "num_minibatches=4", "update_epochs=4"]
BRAX += ["anneal_lr=false", "lr=3e-4", "ent_coef=0.0"]
# Once solved, all 32 envs finish their 1000-step episodes together, every 1000 / 32 updates: the
# curves' moving window must span that many, or it holds no episode.
BRAX_WINDOW = 32


def train(algo, env, args, out: Path) -> dict:
    argv = ["train", algo, "--seeds", str(args.seeds)]
    if env == "brax":
        argv += ["--env", args.brax_env, "--total-steps", str(args.brax_steps)]
        argv += [arg for assignment in BRAX for arg in ("--set", assignment)]
    else:
        argv += ["--config", str(REPO / "configs" / algo / f"{env}.yaml")]
    return train_run(argv, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="cartpole,pendulum,brax", help="comma-separated")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--brax-env", default="brax/inverted_pendulum")
    parser.add_argument("--brax-steps", type=int, default=200_000, help="env steps per seed")
    parser.add_argument("--out", type=Path, default=Path("runs/ppo_variants"))
    args = parser.parse_args()

    tables = []
    for env in args.envs.split(","):
        rows, curves, steps = [], {}, None
        for algo in AGENTS:
            out = args.out / f"{algo}-{env}"
            summary = train(algo, env, args, out)
            final = np.array([row["final_return"] for row in summary["final_returns"]], float)
            low, high = results.bootstrap_ci(final, results.iqm)
            rows.append((algo, final, results.iqm(final), low, high, summary))
            steps, curves[algo] = results.run_curve(out, BRAX_WINDOW if env == "brax" else 1)
        name = args.brax_env if env == "brax" else env
        plot = args.out / f"curves-{env}.png"
        results.plot_curves(plot, steps, curves, f"PPO vs MDPO vs DPO, {name}, {args.seeds} seeds")
        tables.append((name, steps[-1], rows, plot))

    for name, env_steps, rows, plot in tables:
        print(f"\n{name}: {env_steps} env steps per seed, {args.seeds} seeds")
        header = (
            f"{'agent':<6} {'mean':>9} {'IQM':>9}  {'95% CI':<21} {'wall s':>7} {'compile s':>9}"
        )
        print(f"{header}  seeds")
        for algo, final, center, low, high, summary in rows:
            seeds = " ".join(f"{x:.1f}" for x in final)
            interval = f"[{low:.1f}, {high:.1f}]"
            print(
                f"{algo:<6} {final.mean():9.1f} {center:9.1f}  {interval:<21} "
                f"{summary['wall_seconds']:7.0f} {summary['compile_seconds']:9.0f}  {seeds}"
            )
        print(f"curves: {plot}")


if __name__ == "__main__":
    main()
