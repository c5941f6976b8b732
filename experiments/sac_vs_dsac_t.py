"""DSAC-T against SAC: learning curves and final returns over seeds, through the runner.

Each agent trains from its preset (``configs/{sac,dsac_t}/PRESET.yaml``) with the same seeds and
budget, as one vmapped program per agent. The script prints the final-return table (mean, IQM
with a bootstrap 95% CI, every seed) and the wall time, and writes both agents' curves on one
plot.

    python experiments/sac_vs_dsac_t.py                                  # Pendulum-v1, 4 seeds
    python experiments/sac_vs_dsac_t.py --preset brax_hopper --total-steps 100000 \\
        --set num_envs=16 --set utd_ratio=0.0625 --set learning_starts=5000
"""

import argparse
from pathlib import Path

import numpy as np
from cli_runs import train_run

from rljax.runner import results

REPO = Path(__file__).resolve().parents[1]
AGENTS = ("sac", "dsac_t")


def train(algo, args, out: Path) -> dict:
    argv = ["train", algo, "--config", str(REPO / "configs" / algo / f"{args.preset}.yaml")]
    argv += ["--seeds", str(args.seeds)]
    if args.total_steps:
        argv += ["--total-steps", str(args.total_steps)]
    for assignment in args.set:
        argv += ["--set", assignment]
    return train_run(argv, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pendulum", help="configs/<agent>/<preset>.yaml")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--total-steps", type=int, help="env steps per seed (default: preset's)")
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for both agents")
    parser.add_argument("--out", type=Path, default=Path("runs/sac_vs_dsac_t"))
    args = parser.parse_args()

    rows, curves, steps = [], {}, None
    for algo in AGENTS:
        out = args.out / f"{algo}-{args.preset}"
        summary = train(algo, args, out)
        final = np.array([row["final_return"] for row in summary["final_returns"]], float)
        low, high = results.bootstrap_ci(final, results.iqm)
        rows.append((algo, final, results.iqm(final), low, high, summary))
        steps, curves[algo] = results.run_curve(out)

    plot = args.out / f"curves-{args.preset}.png"
    results.plot_curves(plot, steps, curves, f"SAC vs DSAC-T, {args.preset}, {args.seeds} seeds")
    print(f"\n{args.preset}: {steps[-1]} env steps per seed, {args.seeds} seeds")
    print(f"{'agent':<8} {'mean':>9} {'IQM':>9}  {'95% CI':<21} {'wall s':>7}  seeds")
    for algo, final, center, low, high, summary in rows:
        seeds = " ".join(f"{x:.1f}" for x in final)
        interval = f"[{low:.1f}, {high:.1f}]"
        print(
            f"{algo:<8} {final.mean():9.1f} {center:9.1f}  {interval:<21} "
            f"{summary['wall_seconds']:7.0f}  {seeds}"
        )
    print(f"curves: {plot}")


if __name__ == "__main__":
    main()
