"""Reward-scale robustness, the DSAC-T paper's claim: rewards multiplied by 0.1, 1 and 10.

For each agent, the scales x seeds form ONE vmapped sweep (``reward_scale`` is a traced field).
Agents learn from k r; each final policy is then evaluated greedily (``rljax eval``) and its
return reported in the environment's own units (unscaled), so a scale-robust agent scores the
same in every column.

    python experiments/reward_scale.py                 # Pendulum-v1 presets, 4 seeds
    python experiments/reward_scale.py --preset pendulum --seeds 8 --scales 0.1,1,10,100

Finished runs under ``--out`` are reused. The table is printed, and a plot of final return
against the scale is written beside the runs.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from rljax import cli
from rljax.runner import results

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("sac", "dsac_t")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pendulum", help="configs/<agent>/<preset>.yaml")
    parser.add_argument("--scales", default="0.1,1,10")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--total-steps", type=int, help="env steps per seed (default: preset's)")
    parser.add_argument("--out", type=Path, default=Path("runs/reward_scale"))
    parser.add_argument("--eval-episodes", type=int, default=10, help="greedy, per member")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    table = {}
    for algo in AGENTS:
        out = args.out / f"{algo}-{args.preset}"
        argv = ["sweep", algo, "--config", str(REPO / "configs" / algo / f"{args.preset}.yaml")]
        argv += ["--grid", f"reward_scale={args.scales}", "--seeds", str(args.seeds)]
        argv += ["--out", str(out)]
        if args.total_steps:
            argv += ["--total-steps", str(args.total_steps)]
        if (out / "summary.json").exists():
            print(f"{algo}: reusing the finished run in {out}")
        elif cli.main(argv) != 0:
            raise SystemExit(f"{algo} failed; see above")
        if not (out / "eval.json").exists():  # the final policies, greedy, in the env's units
            episodes = ["--episodes", str(args.eval_episodes), "--deterministic"]
            if cli.main(["eval", str(out), *episodes]) != 0:
                raise SystemExit(f"evaluating {algo} failed; see above")
        members = json.loads((out / "eval.json").read_text())["members"]
        for scale in scales:
            final = np.array(
                [
                    row["return"]
                    for row in members
                    if np.isclose(float(row["reward_scale"]), scale)  # grid values are text
                ],
                float,
            )
            table[algo, scale] = (final.mean(), results.iqm(final), final.std())

    print(
        f"\nreturn of the final greedy policy (unscaled, {args.eval_episodes} episodes each), "
        f"{args.preset}, {args.seeds} seeds: mean (IQM) +- std"
    )
    print(f"{'agent':<8}" + "".join(f"{'k = ' + format(s, 'g'):>26}" for s in scales))
    for algo in AGENTS:
        cells = "".join(
            f"{f'{m:.1f} ({c:.1f}) +- {s:.1f}':>26}"
            for m, c, s in (table[algo, scale] for scale in scales)
        )
        print(f"{algo:<8}{cells}")
    plot(table, scales, args.out / f"final_return_vs_scale-{args.preset}.png", args)


def plot(table, scales, path: Path, args):
    """Final return (mean +- std over seeds) against the reward scale, one line per agent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for algo in AGENTS:
        mean, _, std = np.array([table[algo, scale] for scale in scales]).T
        ax.errorbar(scales, mean, yerr=std, marker="o", capsize=3, label=algo)
    ax.set(xscale="log", xlabel="reward scale k (agents learn from k r)")
    ax.set(ylabel="final return (unscaled)", title=f"{args.preset}, {args.seeds} seeds")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
