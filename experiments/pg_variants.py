"""The policy-gradient variants against their baselines, each on the task its claim is about,
over seeds, through the runner (one vmapped program per row).

* Memory: MemoryChain-bsuite (the context shown at the first step decides the reward at the
  sixth), recurrent PPO (configs/ppo_rnn/memory_chain.yaml) against feed-forward PPO with the
  same rollout, budget and lr. Feed-forward can only guess (return 0 expected).
* Two optima: rljax/TwoOptima (a wide peak of reward 0.5, a narrow one of 1), PMOE-SAC
  (configs/sac_pmoe/two_optima.yaml) against SAC with the same settings
  (configs/sac/two_optima.yaml). "found" counts the seeds whose final greedy return beats the
  wide peak's top, 0.5.
* Estimators: CartPole-v1, REINFORCE, N-PG-IGT and N-HARPG from configs/harpg/cartpole.yaml
  (REINFORCE with its largest stable step, 1e-4), the same budget in env steps.
* GGD: Pendulum-v1, SAC and PPO from their presets, plain against GGD-weighted critics.

The final return is the runner's last evaluation (deterministic episodes); the table gives its
IQM over seeds with a bootstrap 95% CI and every seed.

    python experiments/pg_variants.py [--seeds 4] [--tasks memory,two_optima,estimators,ggd]
"""

import argparse
from pathlib import Path

import numpy as np
from cli_runs import train_run

from rljax.runner import results

REPO = Path(__file__).resolve().parents[1]


def preset(algo: str, name: str) -> list[str]:
    return ["--config", str(REPO / "configs" / algo / f"{name}.yaml")]


def assignments(**fields) -> list[str]:
    return [arg for key, value in fields.items() for arg in ("--set", f"{key}={value}")]


# The feed-forward baseline of configs/ppo_rnn/memory_chain.yaml: its rollout, budget and lr.
MEMORYLESS = assignments(
    num_envs=16, num_steps=24, num_minibatches=4, update_epochs=4, total_timesteps=20_000,
    lr=1e-3, hidden_sizes="[32,32]",
)  # fmt: skip

# task -> (variant, algo, arguments) rows.
TASKS = {
    "memory": [
        ("PPO (feed-forward)", "ppo", ["--env", "MemoryChain-bsuite", *MEMORYLESS]),
        ("recurrent PPO (GRU)", "ppo_rnn", preset("ppo_rnn", "memory_chain")),
    ],
    "two_optima": [
        ("SAC", "sac", preset("sac", "two_optima")),
        ("PMOE-SAC, 2 experts", "sac_pmoe", preset("sac_pmoe", "two_optima")),
    ],
    "estimators": [
        (
            "REINFORCE",
            "harpg",
            [*preset("harpg", "cartpole"), *assignments(estimator="reinforce", lr=1e-4)],
        ),
        ("N-PG-IGT", "harpg", [*preset("harpg", "cartpole"), *assignments(estimator="n_pg_igt")]),
        ("N-HARPG", "harpg", preset("harpg", "cartpole")),
    ],  # fmt: skip
    "ggd": [
        ("SAC", "sac", preset("sac", "pendulum")),
        (
            "SAC, GGD weighting",
            "sac",
            [*preset("sac", "pendulum"), *assignments(critic_weighting="ggd")],
        ),
        ("PPO", "ppo", preset("ppo", "pendulum")),
        (
            "PPO, GGD weighting",
            "ppo",
            [*preset("ppo", "pendulum"), *assignments(value_weighting="ggd")],
        ),
    ],  # fmt: skip
}
# The return above which a TwoOptima seed has found the narrow peak: the wide one's top.
WIDE_PEAK = 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/pg_variants"))
    args = parser.parse_args()

    print("| task | variant | final return, IQM [95% CI] | seeds | wall s |")
    print("|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for variant, algo, arguments in TASKS[task]:
            out = args.out / f"{task}-{variant.replace(' ', '_').replace(',', '')}"
            summary = train_run(["train", algo, *arguments, "--seeds", str(args.seeds)], out)
            final = np.array([row["final_return"] for row in summary["final_returns"]], float)
            low, high = results.bootstrap_ci(final, results.iqm)
            seeds = ", ".join(f"{x:.3g}" for x in final)
            if task == "two_optima":
                seeds += f" (found {int((final > WIDE_PEAK).sum())}/{len(final)})"
            print(
                f"| {task} | {variant} | {results.iqm(final):.3g} [{low:.3g}, {high:.3g}] | "
                f"{seeds} | {summary['wall_seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
