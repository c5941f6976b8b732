"""Reward-scale robustness, the DSAC-T paper's claim: rewards multiplied by 0.1, 1 and 10.

For each agent, the scales x seeds form ONE vmapped sweep (``reward_scale`` is a traced field).
Agents learn from k r; returns are reported in the environment's own units (unscaled), so a
scale-robust agent scores the same in every column.

    python experiments/reward_scale.py                 # Pendulum-v1 presets, 4 seeds
    python experiments/reward_scale.py --preset pendulum --seeds 8 --scales 0.1,1,10,100
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
        if cli.main(argv) != 0:
            raise SystemExit(f"{algo} failed; see above")
        summary = json.loads((out / "summary.json").read_text())
        for scale in scales:
            final = np.array(
                [
                    row["final_return"]
                    for row in summary["final_returns"]
                    if np.isclose(float(row["reward_scale"]), scale)  # grid values are text
                ],
                float,
            )
            table[algo, scale] = (final.mean(), results.iqm(final), final.std())

    print(f"\nfinal return (unscaled), {args.preset}, {args.seeds} seeds: mean (IQM) +- std")
    print(f"{'agent':<8}" + "".join(f"{'k = ' + format(s, 'g'):>26}" for s in scales))
    for algo in AGENTS:
        cells = "".join(
            f"{f'{m:.1f} ({c:.1f}) +- {s:.1f}':>26}"
            for m, c, s in (table[algo, scale] for scale in scales)
        )
        print(f"{algo:<8}{cells}")


if __name__ == "__main__":
    main()
