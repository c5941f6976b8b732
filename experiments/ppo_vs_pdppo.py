"""PPO against PDPPO on lot sizing, under rljax's protocol and under the PDPPO authors'.

Does the post-decision critic help when demand is random, as the PDPPO paper claims ("on
average, PDPPO outperforms PPO in environments with a stochastic component")? Every agent is
``rljax/agents/pdppo.py``: PDPPO with the paper's advantage max(A^x, A), PDPPO-min with the
authors' other code version's G - min(V, V^x), and PPO with ``advantage=pre`` (the pre-decision
critic alone: one critic against two), with one network, rollouts, seeds and budget per arm.

Arms (``--arms``), each a preset and overrides:
  ours           configs/pdppo/lot_sizing_15x5.yaml: GAE, 4 epochs of 4 minibatches, one Adam,
                 an update every 1600 steps, 2.4e5 steps
  authors        configs/pdppo/authors_15x5.yaml: Monte-Carlo returns, 60 full-batch epochs,
                 one Adam per network, an update every 4000 steps, 5e5 steps (5000 episodes)
  authors-gae    the authors' protocol with GAE (lambda 0.95): GAE against Monte-Carlo
  ours+mc, ours+optimizers, ours+epochs, ours+interval, ours+budget
                 ours with one of the authors' ingredients, to find the one that matters

Instances (``--instances``): the authors' 15x5, 20x10 and 25x10 (items x machines; matrices
drawn from their generator, rljax/envs/lot_sizing.py), 5x2 for quick runs, or the path of one of
the authors' own setting files (leokan92/pdppo, code/Lot-sizing/cfg_env/setting_*.json; their
20x10 file is a smaller-scale problem than the 20x10 drawn here); demand
(``--demands``) binomial or its mean. Each (instance, demand, arm, agent) is one vmapped run of
``--seeds`` seeds through the runner; a run whose directory holds a summary is reused, so an
interrupted reproduction continues where it stopped. Every final policy is tested on
``--eval-episodes`` fresh episodes twice: greedy (ours) and sampling its actions (the authors'
test: 100 episodes of the trained policy's samples). The script prints, per instance and
demand, the mean episode cost over seeds with bootstrap 95% CIs (over the whole run, which is
the area under the learning curve; training's last 5%; greedy; sampled), the differences
PDPPO - PPO, PDPPO-min - PDPPO and GAE - Monte-Carlo with their CIs, and the wall times; it
saves the curves and ``results.json``.

    python experiments/ppo_vs_pdppo.py            # the reproduction: 3 instances x 2 demands x
                                                  # 3 arms x 3 agents, 10 seeds: about a
                                                  # day on a 2-core CPU (13-59 min per
                                                  # authors'-protocol run, 36 of them)
    python experiments/ppo_vs_pdppo.py --instances 15x5 --demands stochastic --seeds 5 \\
        --arms ours,authors --agents PPO,PDPPO    # the headline comparison alone
    python experiments/ppo_vs_pdppo.py --instances 5x2 --demands stochastic --seeds 2 \\
        --arms authors --agents PPO,PDPPO --budget-scale 0.004 --eval-episodes 4 \\
        --set num_envs=4 --set update_epochs=3 --out /tmp/ppo_vs_pdppo   # a smoke test
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from cli_runs import train_run

from rljax.runner import policy, results

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "pdppo"
# name -> (preset, overrides): a protocol, or ours with one of the authors' ingredients.
ARMS = {
    "ours": ("lot_sizing_15x5.yaml", {}),
    "authors": ("authors_15x5.yaml", {}),
    "authors-gae": ("authors_15x5.yaml", {"advantage_estimator": "gae"}),
    "ours+mc": ("lot_sizing_15x5.yaml", {"advantage_estimator": "monte_carlo"}),
    "ours+optimizers": (
        "lot_sizing_15x5.yaml",
        {"separate_optimizers": "true", "lr": "5.5e-4", "critic_lr": "1e-3"},
    ),
    "ours+epochs": ("lot_sizing_15x5.yaml", {"num_minibatches": "1", "update_epochs": "60"}),
    "ours+interval": ("lot_sizing_15x5.yaml", {"num_envs": "40"}),
    "ours+budget": ("lot_sizing_15x5.yaml", {"total_timesteps": "500000"}),
}
AGENTS = {"PPO": "pre", "PDPPO": "max", "PDPPO-min": "min"}
DEMANDS = {"stochastic": "false", "deterministic": "true"}
INSTANCES = ("15x5", "20x10", "25x10")
# (label, (arm, agent) minus (arm, agent)): the differences the script prints, where both ran.
DIFFERENCES = [
    *[(f"PDPPO - PPO, {arm}", (arm, "PDPPO"), (arm, "PPO")) for arm in ARMS],
    *[(f"PDPPO-min - PDPPO, {arm}", (arm, "PDPPO-min"), (arm, "PDPPO")) for arm in ARMS],
    *[(f"GAE - MC, {agent}", ("authors-gae", agent), ("authors", agent)) for agent in AGENTS],
]


def total_steps(arm: str, scale: float) -> int:
    """The arm's budget in env steps per seed, times scale."""
    preset, overrides = ARMS[arm]
    agent = yaml.safe_load((PRESETS / preset).read_text())["agent"]
    return max(1, round(int(overrides.get("total_timesteps", agent["total_timesteps"])) * scale))


def env_name(instance: str) -> str:
    """A named instance's env, or an authors' setting file's."""
    if instance.endswith(".json"):
        return f"rljax/LotSizing:{Path(instance).resolve()}"
    return f"rljax/LotSizing-{instance}"


def label(instance: str) -> str:
    return Path(instance).stem if instance.endswith(".json") else instance


def run_dir(args, instance, demand, arm, agent) -> Path:
    return args.out / f"{label(instance)}-{demand}-{arm}-{agent.lower()}"


def train(args, instance, demand, arm, agent, out: Path) -> dict:
    """One vmapped run of args.seeds seeds; the summary of one that finished before, or the
    rest of one that stopped (the wall time then counts this process's part only)."""
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        wall = out / "wall_seconds.json"
        summary["wall_seconds"] = json.loads(wall.read_text()) if wall.exists() else np.nan
        return summary
    preset, overrides = ARMS[arm]
    argv = ["train", "pdppo", "--config", str(PRESETS / preset), "--seeds", str(args.seeds)]
    argv += ["--env", env_name(instance), "--set", f"advantage={AGENTS[agent]}"]
    argv += ["--set", f"env.deterministic_demand={DEMANDS[demand]}"]
    for field, value in overrides.items():
        argv += ["--set", f"{field}={value}"]
    for assignment in args.set:
        argv += ["--set", assignment]
    argv += ["--total-steps", str(total_steps(arm, args.budget_scale))]
    summary = train_run([*argv, "--resume"] if out.exists() else argv, out)
    (out / "wall_seconds.json").write_text(json.dumps(summary["wall_seconds"]))
    return summary


def evaluate(out: Path, episodes: int) -> dict:
    """Mean episode cost per seed of the final policy: greedy, and sampling its actions."""
    costs = {}
    for name, deterministic in (("greedy", True), ("sampled", False)):
        returns, _, _ = policy.evaluate_run(out, episodes, deterministic=deterministic)
        costs[name] = (-np.asarray(returns).mean(1)).tolist()
    return costs


def training_costs(out: Path) -> list[float]:
    """Mean episode cost per seed over the whole run (the area under its learning curve over
    the budget): where final costs agree, it shows which agent learned faster."""
    _, curve = results.run_curve(out)
    return (-np.nanmean(curve, axis=1)).tolist()


def difference_ci(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0):
    """Bootstrap 95% CI of mean(a) - mean(b), seeds resampled independently."""
    rng = np.random.default_rng(seed)
    diffs = rng.choice(a, (resamples, len(a))).mean(1) - rng.choice(b, (resamples, len(b))).mean(1)
    return np.percentile(diffs, 2.5), np.percentile(diffs, 97.5)


def cell(costs) -> str:
    costs = np.asarray(costs, float)
    low, high = results.bootstrap_ci(costs)
    return f"{costs.mean():7.1f} [{low:7.1f}, {high:7.1f}]"


def report(args, rows: list[dict]) -> None:
    measures = ("whole run", "train", "greedy", "sampled")
    for instance in args.instances:
        for demand in args.demands:
            mine = {(r["arm"], r["agent"]): r for r in rows
                    if (r["instance"], r["demand"]) == (instance, demand)}  # fmt: skip
            print(f"\nLotSizing-{label(instance)}, {demand} demand, {args.seeds} seeds: mean "
                  "episode cost (lower is better), bootstrap 95% CI over seeds")  # fmt: skip
            print(f"{'arm':<16} {'agent':<10} {'steps':>7} {'whole run':<27} "
                  f"{'train (last 5%)':<27} {'greedy test':<27} {'sampled test':<27} "
                  f"{'wall s':>7}")  # fmt: skip
            for (arm, agent), r in mine.items():
                cells = " ".join(f"{cell(r[m]):<27}" for m in measures)
                print(f"{arm:<16} {agent:<10} {r['steps']:>7} {cells} {r['wall_seconds']:7.0f}")
            print("differences (negative: the first is cheaper)")
            for name, first, second in DIFFERENCES:
                if first in mine and second in mine:
                    cells = []
                    for m in measures:
                        a, b = np.asarray(mine[first][m]), np.asarray(mine[second][m])
                        low, high = difference_ci(a, b)
                        cells.append(f"{a.mean() - b.mean():7.1f} [{low:7.1f}, {high:7.1f}]")
                    print(f"{name:<27} {' '.join(f'{c:<27}' for c in cells)}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--instances",
        default=",".join(INSTANCES),
        help="comma-separated rljax/LotSizing-<instance> (5x2 for quick runs) or setting files",
    )
    parser.add_argument("--demands", default=",".join(DEMANDS), help="stochastic,deterministic")
    parser.add_argument(
        "--arms", default="ours,authors,authors-gae", help=f"comma-separated, of {', '.join(ARMS)}"
    )
    parser.add_argument("--agents", default=",".join(AGENTS), help=", ".join(AGENTS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiplies each arm's budget (ours 2.4e5, the authors' 5e5 steps)",
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=100, help="test episodes per seed, greedy and sampled"
    )
    parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE for every run")
    parser.add_argument("--out", type=Path, default=Path("runs/ppo_vs_pdppo"))
    args = parser.parse_args()
    for name, known in (("instances", None), ("demands", DEMANDS), ("arms", ARMS),
                        ("agents", AGENTS)):  # fmt: skip
        setattr(args, name, getattr(args, name).split(","))
        unknown = [x for x in getattr(args, name) if known is not None and x not in known]
        if unknown:
            parser.error(f"--{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")

    rows = []
    for instance in args.instances:
        for demand in args.demands:
            for arm in args.arms:
                curves, steps = {}, None
                for agent in args.agents:
                    out = run_dir(args, instance, demand, arm, agent)
                    summary = train(args, instance, demand, arm, agent, out)
                    row = {"instance": instance, "demand": demand, "arm": arm, "agent": agent}
                    row["steps"] = summary["env_steps_per_member"]
                    row["train"] = [-r["final_return"] for r in summary["final_returns"]]
                    row["whole run"] = training_costs(out)
                    row["wall_seconds"] = summary["wall_seconds"]
                    rows.append(row | evaluate(out, args.eval_episodes))
                for agent in AGENTS:  # every agent of the arm that has finished, asked or not
                    out = run_dir(args, instance, demand, arm, agent)
                    if (out / "summary.json").exists():
                        steps, curves[agent] = results.run_curve(out)
                title = f"lot sizing {label(instance)}, {arm}\n"
                title += f"{demand} demand, {args.seeds} seeds; return = -cost"
                plot = args.out / f"curves-{label(instance)}-{demand}-{arm}.png"
                results.plot_curves(plot, steps, curves, title)
    record = {"command": " ".join(sys.argv), "rows": rows}
    (args.out / "results.json").write_text(json.dumps(record, indent=1))
    report(args, rows)
    print(f"\ncurves: {args.out}/curves-*.png; every number: {args.out}/results.json")


if __name__ == "__main__":
    main()
