"""Every goal-conditioned agent on the point mazes: success rates next to OGBench's.

Generates OGBench-style navigate and stitch datasets with ``rljax.generate.mazes`` (OGBench's
sizes unless ``--episodes``), trains each agent on each through the runner with seeds vmapped,
and prints the mean success rate over OGBench's five evaluation tasks (``--eval-episodes``
deterministic episodes per task after the last chunk), as an IQM over seeds with a 95% bootstrap
CI, next to the published OGBench numbers (spec GC-5: 1M gradient steps, batch 1024, 3x512
networks, 8 seeds). The defaults are the README's table, scaled down to what a 2-core CPU
finishes in a few hours; ``--updates 1000000 --batch 1024 --hidden 512,512,512 --latent 512
--seeds 8`` is OGBench's own scale, a GPU job.

With ``--out``, a run that finished is read back instead of trained again and one that was
interrupted resumes, so a long table can be filled by several invocations (one per maze, side
by side) and printed whole by a last one.

    python experiments/gc_mazes.py [--mazes medium,large] [--agents qrl,hiql] [--out DIR]
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from rljax import agents as rljax_agents
from rljax.data import read_metadata
from rljax.generate import mazes
from rljax.runner import results
from rljax.runner.errors import RunError
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec, check_directory, resolve_spec
from rljax.runner.spec import dataset_sha256 as sha256

AGENTS = ("gcbc", "gcivl", "gciql", "qrl", "crl", "hiql", "ota", "smore", "hilp", "beso")
# OGBench's pointmaze overrides (impls/hyperparameters.sh, spec GC-4); on stitch datasets every
# agent's actor that is trained towards goals also takes random goals half the time (spec GC-1;
# HILP's skill actor is trained towards random skills, not goals).
OVERRIDES = {"gciql": {"alpha": 0.003}, "qrl": {"alpha": 0.0003}, "crl": {"alpha": 0.03}}
STITCH = {"actor_p_trajgoal": 0.5, "actor_p_randomgoal": 0.5}
# OGBench paper, success %, mean +- std over 8 seeds (spec GC-5); navigate datasets only.
PUBLISHED = {
    "medium-navigate": {"gcbc": 9, "gcivl": 63, "gciql": 53, "qrl": 82, "crl": 29, "hiql": 79},
    "large-navigate": {"gcbc": 29, "gcivl": 45, "gciql": 34, "qrl": 86, "crl": 39, "hiql": 58},
    "giant-navigate": {"gcbc": 1, "gcivl": 0, "gciql": 0, "qrl": 68, "crl": 27, "hiql": 46},
}


def maze_dataset(name: str, kind: str, directory: Path, episodes: int | None) -> Path:
    """The dataset's file in ``directory``, generated unless it is there with ``episodes``."""
    path = mazes.paths(name, kind, directory, val=False)[0]
    if not path.exists():
        mazes.write(name, kind, directory, episodes, val=False)
    elif episodes is not None:
        held = read_metadata(path).get("episodes", "an unrecorded number of")
        if held != episodes:
            raise SystemExit(
                f"{path} holds {held} episodes, not --episodes {episodes}; use another --out"
            )
    return path


def stitch_fields(algo: str) -> dict:
    fields = {f.name for f in dataclasses.fields(rljax_agents.get(algo).Config)}
    return {k: v for k, v in STITCH.items() if k in fields}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--mazes", default="medium,large")
    parser.add_argument("--kinds", default="navigate,stitch")
    parser.add_argument("--episodes", type=int, help="dataset trajectories (OGBench's default)")
    parser.add_argument("--updates", type=int, default=50_000, help="gradient steps per seed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", default="64,64")
    parser.add_argument("--latent", type=int, default=64, help="QRL's and CRL's latent_dim")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=50, help="per task (OGBench: 50)")
    parser.add_argument("--out", type=Path, help="datasets and runs (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rljax-gc-mazes-"))
    hidden = [int(h) for h in args.hidden.split(",")]
    agents = args.agents.split(",")

    table, per_seed = {}, {}
    for layout in args.mazes.split(","):
        for kind in args.kinds.split(","):
            name = f"rljax/PointMaze-{layout}"
            path = maze_dataset(name, kind, out / "data", args.episodes)
            for algo in agents:
                agent = {
                    "total_updates": args.updates,
                    "batch_size": args.batch,
                    "hidden_sizes": hidden,
                    **({"latent_dim": args.latent} if algo in ("qrl", "crl") else {}),
                    **OVERRIDES.get(algo, {}),
                    **(stitch_fields(algo) if kind == "stitch" else {}),
                }
                spec = RunSpec(
                    algo=algo,
                    env={"name": f"rljax/PointMaze-{layout}"},
                    agent=agent,
                    seeds=args.seeds,
                    dataset=str(path),
                    eval_episodes=args.eval_episodes,
                )
                run_dir = out / f"{algo}-{layout}-{kind}"
                if (run_dir / "summary.json").exists():  # finished: refused if its spec differs
                    try:
                        check_directory(resolve_spec(spec), run_dir, True, sha256(spec.dataset))
                    except RunError as error:
                        raise SystemExit(f"{error}; use another --out") from None
                    summary = json.loads((run_dir / "summary.json").read_text())
                else:
                    summary = train(
                        spec, run_dir, resume=run_dir.exists(), print_fn=lambda *_: None
                    )
                success = 100 * np.array([m["final_return"] for m in summary["final_returns"]])
                low, high = results.bootstrap_ci(success, results.iqm)
                row = (
                    round(float(results.iqm(success)), 1),
                    round(float(low), 1),
                    round(float(high), 1),
                )
                table[f"{layout}-{kind}", algo] = row
                per_seed[f"pointmaze-{layout}-{kind}/{algo}"] = success.round(1).tolist()
                print(
                    f"pointmaze-{layout}-{kind:<9} {algo:<6} success {row[0]:5.1f}% "
                    f"[{low:5.1f}, {high:5.1f}]  {summary['steps_per_second']:,.0f} gradient "
                    f"steps/s, compile {summary['compile_seconds']:.0f}s",
                    flush=True,
                )
    record = {"iqm_ci": {f"{d}/{a}": v for (d, a), v in table.items()}, "per_seed": per_seed}
    (out / "table.json").write_text(json.dumps(record, indent=1))

    print(
        f"\nsuccess %, IQM over {args.seeds} seeds [95% CI]; {args.updates} gradient steps, "
        f"batch {args.batch}, hidden {hidden}, QRL/CRL latents {args.latent} "
        "(OGBench: mean over 8 seeds, 1M steps)"
    )
    print("| dataset | " + " | ".join(agents) + " |")
    print("|---" * (len(agents) + 1) + "|")
    for dataset in dict.fromkeys(d for d, _ in table):
        published = PUBLISHED.get(dataset, {})
        cells = []
        for algo in agents:
            iqm, low, high = table[dataset, algo]
            paper = f" ({published[algo]})" if algo in published else ""
            cells.append(f"{iqm:.0f} [{low:.0f}, {high:.0f}]{paper}")
        print(f"| pointmaze-{dataset} | " + " | ".join(cells) + " |")
    print(f"\ndatasets and run directories in {out}")


if __name__ == "__main__":
    main()
