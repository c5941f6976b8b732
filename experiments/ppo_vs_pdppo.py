"""PPO against PDPPO on lot sizing, with stochastic and with deterministic demand.

Does the post-decision critic help when demand is random, as the PDPPO paper claims? Both agents
are ``rljax/agents/pdppo.py`` from ``configs/pdppo/lot_sizing_15x5.yaml``, with the same
network, rollouts, seeds and budget: PDPPO with the paper's advantage max(A^x, A), PPO with
``advantage=pre`` (the pre-decision critic alone). Each (agent, demand) pair is one vmapped
run through the runner. The script prints, per demand kind, the mean episode cost over seeds
(the sampled policy over the last 5% of training, and the greedy policy on fresh episodes) with
bootstrap 95% CIs, PDPPO minus PPO with its CI, and the wall time; and saves the curves.

    python experiments/ppo_vs_pdppo.py                          # 15 x 5, 5 seeds, 240k steps
    python experiments/ppo_vs_pdppo.py --instance 5x2 --total-steps 80000
"""

import argparse
from pathlib import Path

import numpy as np
from cli_runs import train_run

from rljax.runner import policy, results

REPO = Path(__file__).resolve().parents[1]
AGENTS = {"PPO": "pre", "PDPPO": "max"}
DEMANDS = {"stochastic": "false", "deterministic": "true"}


def train(args, advantage: str, deterministic: str, out: Path) -> dict:
    argv = ["train", "pdppo", "--config", str(REPO / "configs/pdppo/lot_sizing_15x5.yaml")]
    argv += ["--env", f"rljax/LotSizing-{args.instance}", "--seeds", str(args.seeds)]
    argv += [
        "--set",
        f"advantage={advantage}",
        "--set",
        f"env.deterministic_demand={deterministic}",
    ]
    if args.total_steps:
        argv += ["--total-steps", str(args.total_steps)]
    for assignment in args.set:
        argv += ["--set", assignment]
    return train_run(argv, out)


def difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0):
    """Bootstrap 95% CI of mean(a) - mean(b), seeds resampled independently."""
    rng = np.random.default_rng(seed)
    diffs = rng.choice(a, (resamples, len(a))).mean(1) - rng.choice(b, (resamples, len(b))).mean(1)
    return np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instance", default="15x5", help="rljax/LotSizing-<instance>")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--total-steps", type=int, help="env steps per seed (default: preset's)")
    parser.add_argument("--eval-episodes", type=int, default=100, help="greedy, per seed")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for both agents")
    parser.add_argument("--out", type=Path, default=Path("runs/ppo_vs_pdppo"))
    args = parser.parse_args()

    report = []
    for demand, deterministic in DEMANDS.items():
        curves, steps = {}, None
        for agent, advantage in AGENTS.items():
            out = args.out / f"{args.instance}-{demand}-{agent.lower()}"
            summary = train(args, advantage, deterministic, out)
            final = -np.array([row["final_return"] for row in summary["final_returns"]], float)
            returns, _, _ = policy.evaluate_run(out, args.eval_episodes, deterministic=True)
            greedy = -np.asarray(returns).mean(1)
            report.append((demand, agent, final, greedy, summary))
            steps, curves[agent] = results.run_curve(out)
        plot = args.out / f"curves-{args.instance}-{demand}.png"
        title = f"lot sizing {args.instance}, {demand} demand: return = -cost, {args.seeds} seeds"
        results.plot_curves(plot, steps, curves, title)

    print(f"\nLotSizing-{args.instance}: {steps[-1]} env steps per seed, {args.seeds} seeds")
    print("mean episode cost (lower is better), bootstrap 95% CI over seeds")
    header = (
        f"{'demand':<14} {'agent':<6} {'train (last 5%)':<27} {'greedy eval':<27} {'wall s':>6}"
    )
    print(header)
    for demand, agent, final, greedy, summary in report:
        cells = []
        for costs in (final, greedy):
            low, high = results.bootstrap_ci(costs)
            cells.append(f"{costs.mean():7.1f} [{low:7.1f}, {high:7.1f}]")
        print(f"{demand:<14} {agent:<6} {cells[0]:<27} {cells[1]:<27} "
              f"{summary['wall_seconds']:6.0f}")  # fmt: skip
    print("PDPPO - PPO (negative: PDPPO cheaper)")
    for demand in DEMANDS:
        (_, _, ppo_final, ppo_greedy, _), (_, _, pd_final, pd_greedy, _) = [
            row for row in report if row[0] == demand
        ]
        cells = []
        for pd, ppo in ((pd_final, ppo_final), (pd_greedy, ppo_greedy)):
            low, high = difference_ci(pd, ppo)
            cells.append(f"{pd.mean() - ppo.mean():7.1f} [{low:7.1f}, {high:7.1f}]")
        print(f"{demand:<14} {'':<6} {cells[0]:<27} {cells[1]:<27}")
    print("per seed (train, greedy):")
    for demand, agent, final, greedy, _ in report:
        seeds = "  ".join(f"{f:.0f}/{g:.0f}" for f, g in zip(final, greedy, strict=True))
        print(f"  {demand:<14} {agent:<6} {seeds}")
    print(f"curves: {args.out}/curves-{args.instance}-*.png")


if __name__ == "__main__":
    main()
