"""Every offline agent on every generated Pendulum-v1 dataset kind: a normalized-score table.

Generates the five datasets once (``rljax data generate Pendulum-v1``; reused from ``--data``
when they are there), then trains each agent on each kind through the runner, seeds vmapped,
and prints the IQM over seeds of the final normalized score (100 * (return - random) /
(expert - random), references stored with the data) with a 95% bootstrap CI, next to the
score of the data itself. The final score is the last evaluation (``--eval-episodes``
deterministic episodes after the last chunk), as D4RL reports.

    python experiments/offline_pendulum.py [--updates 10000] [--seeds 4] [--data DIR] [--out DIR]

The agents use their papers' hyperparameters with smaller networks (``--hidden``, default
64x64, so the table fits a CPU: Pendulum's 3-d observations need no more).
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from rljax import agents
from rljax.data import load, normalized_score, references
from rljax.generate.d4rl import KINDS, RECIPES, generate_all
from rljax.runner import results
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

AGENTS = ("bc", "td3_bc", "iql", "rebrac", "cql", "odice", "fdvl", "prdc", "a2pr", "riql", "edac")


def datasets(directory: Path) -> dict[str, Path]:
    tag = RECIPES["Pendulum-v1"].tag
    paths = {kind: directory / f"{tag}-{kind}.hdf5" for kind in KINDS}
    missing = [kind for kind, path in paths.items() if not path.exists()]
    if missing:
        generate_all("Pendulum-v1", directory, missing)
    return paths


def sizes(algo: str, hidden: list[int]) -> dict:
    """``hidden`` for every network of the agent, each sized by a ``*hidden_sizes`` field
    (A2PR's VAE and Uni-O4's networks have fields of their own)."""
    fields = {f.name for f in dataclasses.fields(agents.get(algo).Config)}
    return {name: hidden for name in fields if name.endswith("hidden_sizes")}


def data_score(path: Path) -> float:
    """The normalized score of the data's whole episodes (recorded when it was generated)."""
    _, metadata = load(path)
    return float(normalized_score(metadata["returns"]["mean"], *references(metadata)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--updates", type=int, default=10_000, help="gradient steps per seed")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--hidden", default="64,64", help="hidden layer sizes of every network")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--data", type=Path, help="dataset directory (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="run directories (default: a temporary one)")
    args = parser.parse_args()
    data_dir = args.data or Path(tempfile.mkdtemp(prefix="rljax-pendulum-data-"))
    out = args.out or Path(tempfile.mkdtemp(prefix="rljax-offline-pendulum-"))
    paths = datasets(data_dir)
    hidden = [int(h) for h in args.hidden.split(",")]

    table = {}
    for kind in args.kinds.split(","):
        for algo in args.agents.split(","):
            spec = RunSpec(
                algo=algo,
                env={"name": "Pendulum-v1", "unit_actions": True},
                agent={"total_updates": args.updates, **sizes(algo, hidden)},
                seeds=args.seeds,
                dataset=str(paths[kind]),
                eval_episodes=args.eval_episodes,
            )
            summary = train(spec, out / f"{algo}-{kind}", print_fn=lambda *_: None)
            scores = np.array([m["final_score"] for m in summary["final_returns"]], float)
            low, high = results.bootstrap_ci(scores, results.iqm)
            table[kind, algo] = (float(results.iqm(scores)), low, high)
            seconds = summary["compile_seconds"] + summary["train_seconds"]
            print(
                f"{kind:<14} {algo:<7} IQM {table[kind, algo][0]:6.1f} [{low:6.1f}, {high:6.1f}]"
                f"  ({summary['steps_per_second']:,.0f} gradient steps/s, {seconds:.0f}s)",
                flush=True,
            )
    (out / "table.json").write_text(json.dumps({f"{k}/{a}": v for (k, a), v in table.items()}))

    names = args.agents.split(",")
    print(f"\nPendulum-v1, {args.seeds} seeds x {args.updates} gradient steps, hidden {hidden}:")
    print("final normalized score, IQM over seeds [95% bootstrap CI]")
    print("| dataset | data | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for kind in args.kinds.split(","):
        cells = [
            f"{table[kind, a][0]:.1f} [{table[kind, a][1]:.0f}, {table[kind, a][2]:.0f}]"
            for a in names
        ]
        print(f"| {kind} | {data_score(paths[kind]):.1f} | " + " | ".join(cells) + " |")
    print(f"\nrun directories in {out}")


if __name__ == "__main__":
    main()
