"""Offline-to-online fine-tuning on generated Pendulum-v1 data, against SAC from scratch.

Each fine-tuning agent trains offline on the dataset and then online in Pendulum-v1 (actions in
[-1, 1], as the data's) in one run, seeds vmapped (``rljax train ALGO --dataset D
--offline-steps N --online-steps M``); SAC learns from scratch for the same M online steps.
Printed per dataset and agent, as normalized scores (100 (return - random) / (expert - random),
the references stored with the data), mean over seeds with the seeds' spread:

* ``offline``: the evaluation at the end of the offline phase;
* ``dip``: each seed's lowest evaluation in the first quarter of the online phase (the drop
  that WSRL is about), averaged over seeds;
* ``final``: the last evaluation, after M online steps (SAC: ``--eval-episodes`` greedy
  episodes of its final policy).

Every run evaluates ``--eval-episodes`` deterministic episodes after each chunk of ``--chunk``
updates (offline gradient steps, then online env steps; ``settings`` gives the exceptions).
Writes the table (``table.json``, the markdown printed) and one curve per dataset
(``curves-KIND.png``) beside the runs; finished runs under ``--out`` are reused, interrupted
ones resumed.

    python experiments/offline_to_online.py [--agents iql,cql,calql,wsrl,famo2o,uni_o4]
        [--kinds medium,medium-replay] [--offline-steps 10000] [--online-steps 10000]
        [--seeds 4] [--data DIR] [--out DIR]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from offline_pendulum import sizes  # experiments/ is on the path of a script run there

from rljax.data import load, normalized_score, references
from rljax.generate.d4rl import RECIPES, generate_all
from rljax.runner import results
from rljax.runner.loop import train
from rljax.runner.policy import evaluate_run
from rljax.runner.sinks import read_tables
from rljax.runner.spec import RunSpec

AGENTS = ("iql", "cql", "calql", "wsrl", "famo2o", "uni_o4")
ENV = {"name": "Pendulum-v1", "unit_actions": True}
# SAC from scratch: configs/sac/pendulum.yaml's settings (about -150 after 2e4 steps).
SAC = {
    "num_envs": 4, "num_steps": 1, "utd_ratio": 1.0, "batch_size": 128, "buffer_size": 100_000,
    "learning_starts": 1000, "actor_lr": 1e-3, "critic_lr": 1e-3, "alpha_lr": 1e-3,
}  # fmt: skip


def settings(algo: str, args) -> tuple[dict, int | None]:
    """(agent fields, updates per chunk) beyond the papers' defaults, scaled to the budget:
    WSRL's warm-up is a tenth of the online steps (5000 of 500k in the paper) at batch 256;
    Uni-O4 improves for the last fifth of the offline steps, scores its OPE by model rollouts of
    100 steps (1000 overflow with a model trained this briefly; the authors' README says to
    shorten them when the OPE's Q explodes) and collects 1000 steps per PPO
    update in minibatches of 125 (the authors: 2048 in 16), evaluated after each (its online
    updates are few, so chunks hold one)."""
    if algo == "wsrl":
        return {"warmup_steps": args.online_steps // 10, "online_batch_size": 256}, args.chunk
    if algo == "uni_o4":
        fields = {"improvement_updates": args.offline_steps // 5, "rollout_steps": 100}
        return fields | {"num_steps": 1000, "num_minibatches": 8}, None
    return {}, args.chunk


def dataset(directory: Path, kind: str) -> Path:
    path = directory / f"{RECIPES['Pendulum-v1'].tag}-{kind}.hdf5"
    if not path.exists():
        generate_all("Pendulum-v1", directory, [kind])
    return path


def fine_tune(algo: str, path: Path, out: Path, args, hidden) -> dict:
    """Scores (seeds,) at the offline phase's end, the online dip and the end; the curve."""
    run = out / algo
    if not (run / "summary.json").exists():
        fields, chunk = settings(algo, args)
        spec = RunSpec(
            algo=algo, env=ENV, seeds=args.seeds, dataset=str(path),
            agent={"total_updates": args.offline_steps, "online_steps": args.online_steps,
                   **sizes(algo, hidden), **fields},
            eval_episodes=args.eval_episodes, chunk_updates=chunk,
        )  # fmt: skip
        train(spec, run, resume=run.exists(), print_fn=lambda *_: None)
    summary = json.loads((run / "summary.json").read_text())
    table = read_tables([run / "metrics.csv"])
    members, updates = args.seeds, summary["num_updates"]
    returns = table["episode_return"].reshape(members, updates)
    steps = table["env_steps"].reshape(members, updates)[0]
    evaluated = np.isfinite(returns[0])
    scores = normalized_score(returns[:, evaluated], *references(load(path)[1]))
    steps = steps[evaluated]
    boundary = summary["offline_updates"]
    online = steps > boundary
    # The first quarter of the online phase, or its first evaluation if that comes later.
    first_quarter = online & (steps <= max(boundary + args.online_steps / 4, steps[online][0]))
    return {
        "offline": scores[:, ~online][:, -1],
        "dip": scores[:, first_quarter].min(axis=1),
        "final": scores[:, -1],
        "curve": (steps, scores, boundary),
    }


def from_scratch(path: Path, out: Path, args, hidden) -> dict:
    """SAC's greedy final scores (seeds,) after the online budget, from no data."""
    run = out / "sac"
    if not (run / "summary.json").exists():
        spec = RunSpec(
            algo="sac", env=ENV, seeds=args.seeds,
            agent={**SAC, "total_timesteps": args.online_steps, "hidden_sizes": hidden},
        )  # fmt: skip
        train(spec, run, resume=run.exists(), print_fn=lambda *_: None)
    returns = evaluate_run(run, episodes=args.eval_episodes, deterministic=True)[0]
    return {"final": normalized_score(returns.mean(axis=1), *references(load(path)[1]))}


def cell(values) -> str:
    values = np.asarray(values, float)
    return f"{values.mean():.1f} ± {values.std():.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--kinds", default="medium,medium-replay")
    parser.add_argument("--offline-steps", type=int, default=10_000)
    parser.add_argument("--online-steps", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=500, help="updates between evaluations")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--hidden", default="64,64", help="hidden layer sizes of every network")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--data", type=Path, default=Path("runs/offline_to_online/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/offline_to_online"))
    args = parser.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    names = args.agents.split(",")

    rows, record = [], {}
    for kind in args.kinds.split(","):
        path = dataset(args.data, kind)
        out = args.out / kind
        found = {algo: fine_tune(algo, path, out, args, hidden) for algo in names}
        found["sac"] = from_scratch(path, out, args, hidden)
        for algo, scores in found.items():
            cells = [cell(scores[k]) if k in scores else "-" for k in ("offline", "dip", "final")]
            rows.append(f"| {kind} | {algo} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
            record[f"{kind}/{algo}"] = {k: np.asarray(v).tolist() for k, v in scores.items()
                                        if k != "curve"}  # fmt: skip
        # One step axis for every agent: each evaluated at its own steps, NaN at the others'.
        steps = np.unique(np.concatenate([found[a]["curve"][0] for a in names]))
        curves = {}
        for algo in names:
            own, scores, boundary = found[algo]["curve"]
            curves[algo] = np.full((args.seeds, len(steps)), np.nan)
            curves[algo][:, np.searchsorted(steps, own)] = scores
        results.plot_curves(
            out / f"curves-{kind}.png", steps, curves,
            f"Pendulum-v1 {kind}: offline, then online", "gradient steps, then env steps",
            "normalized score", boundary=boundary,
        )  # fmt: skip
    (args.out / "table.json").write_text(json.dumps(record, indent=2))
    print(f"\nPendulum-v1, {args.seeds} seeds, {args.offline_steps} offline gradient steps, then "
          f"{args.online_steps} env steps; normalized score, mean ± std over seeds")  # fmt: skip
    print("| dataset | agent | offline | dip (first quarter online) | final |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
