"""Model-based and generative offline RL on generated Pendulum-v1 data, against model-free
agents on the real data alone; the edge-of-reach diagnostic of RAVL's paper.

Each model-based agent fits its model (the dynamics ensemble, or PGD's trajectory denoiser)
and then trains its policy on the data and what the model generates, in one run, seeds vmapped
(``rljax train ALGO --dataset D --model-steps K --offline-steps N``); TD3+BC and IQL train on
the data alone for the same N gradient steps. PGD runs guided and unguided as one program (a
sweep over its traced ``guidance_coef``). Printed per dataset and agent: the final normalized
score (100 (return - random) / (expert - random), references stored with the data; the last
evaluation of ``--eval-episodes`` deterministic episodes), mean ± std over seeds.

The diagnostic (``--diagnostic``): RAVL's rollouts with Pendulum's true dynamics in place of
the model (``true_dynamics=Pendulum-v1``), so no model error is left: SAC's two critics
(``num_critics=2, eta=0``) against RAVL's ten with the diversity term. The paper's claim: with
true dynamics the first still fails, because truncated rollouts reach states that are only
bootstrapped from (the edge of reach), and the second does not.

The stitching result (``--stitching``, instead of the rest): on MBRCSL's maze and data
(``rljax.generate.mbrcsl_maze``: episodes that go to the middle and stop, and detours to the
goal; none takes the short way), MBRCSL against RCSL (the same return-conditioned policy on the
data's episodes, ``rcsl_on=dataset``) and BC, for ``--policy-steps`` steps each; scores put the
random policy at 0 and the oracle's short way at 100, and the data's groups are printed beside.
Stitching itself is measured in the true maze: of 50 deterministic episodes per seed, the share
that reach the goal, and that reach it the short way (never entering the detour's cell (1, 1)).

Adds its rows to ``table.json`` beside the runs and prints the markdown table; finished runs
under ``--out`` are reused, interrupted ones resumed.

    python experiments/model_based.py [--agents mopo,ravl,pgd,td3_bc,iql]
        [--kinds medium,medium-replay] [--model-steps 5000] [--policy-steps 10000]
        [--seeds 4] [--diagnostic] [--stitching] [--data DIR] [--out DIR]
"""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from offline_pendulum import sizes  # experiments/ is on the path of a script run there

from rljax import envs
from rljax.agents.mbrcsl import episode_starts
from rljax.data import load, normalized_score, references
from rljax.generate import mbrcsl_maze
from rljax.generate.d4rl import RECIPES, generate_all
from rljax.runner import evaluation
from rljax.runner.loop import train
from rljax.runner.policy import member_policy, restore
from rljax.runner.spec import RunSpec

MODEL_BASED = ("mopo", "ravl", "pgd")
STITCHING = {  # row -> (agent, fields): MBRCSL against RCSL (the same policy) and BC on the data
    "MBRCSL": ("mbrcsl", {}),
    "RCSL on the data": ("mbrcsl", {"rcsl_on": "dataset", "model_updates": 1}),
    "BC on the data": ("bc", {}),
}
AGENTS = (*MODEL_BASED, "td3_bc", "iql")
ENV = {"name": "Pendulum-v1", "unit_actions": True}


def settings(algo: str, args) -> tuple[dict, dict]:
    """(agent fields, sweep grid) beyond the papers' defaults, scaled to the budget: the
    dynamics ensemble's layers are the policy's (``--hidden``), with OfflineRL-Kit's decay
    schedule cut to as many layers; rollouts of ``--rollout-states`` states every 1000 policy
    steps; PGD's denoiser at ``--unet-features`` and ``--sampling-steps``, a pool of
    ``--trajectories`` windows regenerated four times in the run (the first unguided, as the
    authors'), guided at ``--guidance`` and unguided; GroupNorm groups of 16 channels (the
    authors' 8 groups have 128 at their 1024 channels; pgd.py says why groups stay large)."""
    if algo not in MODEL_BASED:
        return {}, {}
    fields = {"model_updates": args.model_steps}
    if algo in ("mopo", "ravl"):
        layers = len(args.hidden.split(","))
        decay = [2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4][:layers] + [1e-4]
        fields |= {"model_weight_decay": decay, "rollout_batch_size": args.rollout_states}
        return fields, {}
    fields |= {
        "unet_features": args.unet_features, "num_sampling_steps": args.sampling_steps,
        "unet_groups": max(args.unet_features // 16, 1),
        "num_synthetic_trajectories": args.trajectories,
        "regenerate_every": max(1, args.policy_steps // 4),
    }  # fmt: skip
    return fields, {"guidance_coef": [0.0, args.guidance]}


def dataset(directory: Path, kind: str) -> Path:
    path = directory / f"{RECIPES['Pendulum-v1'].tag}-{kind}.hdf5"
    if not path.exists():
        generate_all("Pendulum-v1", directory, [kind])
    return path


def run(algo: str, path: Path, out: Path, args, fields: dict, grid: dict, env=ENV) -> dict:
    """The run's summary (trained now, resumed, or read back)."""
    if not (out / "summary.json").exists():
        hidden = [int(h) for h in args.hidden.split(",")]
        spec = RunSpec(
            algo=algo, env=env, seeds=args.seeds, dataset=str(path), grid=grid,
            agent={"total_updates": args.policy_steps, **sizes(algo, hidden), **fields},
            eval_episodes=args.eval_episodes,
        )  # fmt: skip
        train(spec, out, resume=out.exists(), print_fn=lambda *_: None)
    return json.loads((out / "summary.json").read_text())


def stitching(args, record: dict) -> list[str]:
    """MBRCSL against RCSL and BC on its stitching maze (``rljax.generate.mbrcsl_maze``): rows
    of the table, and the data's own scores for reference."""
    path = mbrcsl_maze.path(args.data)
    if not path.exists():
        mbrcsl_maze.write(args.data)
    dataset, metadata = load(path)
    horizon = int(np.diff(episode_starts(dataset)).max())  # 199 transitions an episode
    score = lambda r: normalized_score(r, *references(metadata))  # noqa: E731
    rows = [f"| data: {name} | {score(g['mean_return']):.1f} (best {score(g['best_return']):.1f})"
            " | | | | |" for name, g in metadata["groups"].items()]  # fmt: skip
    for name, (algo, fields) in STITCHING.items():
        if algo == "mbrcsl":
            fields = settings("mopo", args)[0] | fields | {
                "horizon": horizon, "max_rounds": args.max_rounds, "rollout_batch_size": 200
            }  # fmt: skip
        summary = run(algo, path, args.out / "stitching" / algo_dir(name), args, fields, {},
                      mbrcsl_maze.ENV)  # fmt: skip
        values = scores(summary)[""]
        seconds = summary["compile_seconds"] + summary["train_seconds"]
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        reached, short = goal_reaching(args.out / "stitching" / algo_dir(name))
        record[f"stitching/{name}"] = {
            "score": values.tolist(), "reached": reached.tolist(), "short_way": short.tolist()
        }  # fmt: skip
        rows.append(
            f"| {name} | {cell(values)} | {per_seed} | {cell(100 * reached)} | "
            f"{cell(100 * short)} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    return rows


def goal_reaching(run_dir: Path, episodes: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, the share of ``episodes`` deterministic episodes in the true maze that reach
    the goal (within its radius), and the share that do so the short way (never entering the
    detour's cell (1, 1) first)."""
    program, state, _ = restore(run_dir)
    found = []
    for member in range(len(program.members)):
        policy = member_policy(program, state, member, deterministic=True)
        env, env_params = envs.make(**envs.without_normalization(program.spec.env))
        if program.agent.wraps_env:  # MBRCSL's policy reads the return so far
            config, params = jax.tree.map(lambda x, m=member: x[m], (program.stacked, state.params))
            env, env_params = program.agent.module.wrap_env(config, env, env_params, params)
        found.append(member_reaching(policy, env, env_params, episodes, jax.random.PRNGKey(member)))
    return tuple(np.asarray(column) for column in zip(*found, strict=True))


def member_reaching(policy, env, env_params, episodes: int, key) -> tuple[float, float]:
    """goal_reaching's two shares for one policy, its episodes run by the runner's rollout."""
    env_params, axes, num_envs = evaluation.episode_params(env, env_params, episodes)
    steps = int(np.max(env_params.max_steps_in_episode))
    maze, _ = mbrcsl_maze.make_env()
    detour_cell = 1 * maze.cols + 1

    def act(obs, env_state, key):
        return policy(obs, key)

    def keep(obs, action, reward, terminated, truncated, info):
        return info["success"], maze.cell(obs[..., :2]) == detour_cell

    run = jax.jit(
        lambda key: evaluation.rollout(act, env, env_params, num_envs, steps, key, keep, axes)
    )
    success, detour = map(np.asarray, run(key))  # (steps, envs) each
    short = success & ~(np.cumsum(detour, 0) > 0)
    return float(success.any(0).mean()), float(short.any(0).mean())


def algo_dir(name: str) -> str:
    return name.lower().replace(" ", "-")


def scores(summary: dict) -> dict[str, np.ndarray]:
    """Final normalized scores (seeds,) per configuration label ("" without a sweep)."""
    found = {}
    for row in summary["final_returns"]:
        label = ",".join(f"{k}={row[k]}" for k in summary["run"]["grid"])
        found.setdefault(label, []).append(row["final_score"])
    return {label: np.asarray(values, float) for label, values in found.items()}


def cell(values) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--kinds", default="medium,medium-replay")
    parser.add_argument("--model-steps", type=int, default=5_000)
    parser.add_argument("--policy-steps", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--hidden", default="64,64", help="hidden layer sizes of every network")
    parser.add_argument("--rollout-states", type=int, default=5_000)
    parser.add_argument("--unet-features", type=int, default=32)
    parser.add_argument("--trajectories", type=int, default=1024, help="PGD's pool of windows")
    parser.add_argument("--sampling-steps", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=0.1)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--diagnostic", action="store_true", help="the edge-of-reach runs too")
    parser.add_argument("--stitching", action="store_true", help="MBRCSL's maze only")
    parser.add_argument("--max-rounds", type=int, default=50, help="MBRCSL's rollout rounds")
    parser.add_argument("--data", type=Path, default=Path("runs/model_based/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/model_based"))
    args = parser.parse_args()
    table = args.out / "table.json"  # every invocation adds its rows to the runs' table
    rows, record = [], json.loads(table.read_text()) if table.exists() else {}
    if args.stitching:
        print(
            f"MBRCSL's maze, {args.seeds} seeds; final normalized score (0 random, 100 the "
            "oracle's short way); % of 50 episodes a seed that reach the goal, and that reach "
            "it the short way\n"
            "| agent | final score | per seed | reached % | short way % | seconds |\n"
            "|---|---|---|---|---|---|"
        )
        print("\n".join(stitching(args, record)))
        table.write_text(json.dumps(record, indent=2))
        return

    for kind in args.kinds.split(","):
        path = dataset(args.data, kind)
        runs = [(algo, algo, *settings(algo, args)) for algo in args.agents.split(",")]
        if args.diagnostic:
            true = {**settings("ravl", args)[0], "true_dynamics": "Pendulum-v1"}
            runs += [
                ("ravl", "sac-true-dynamics", true | {"num_critics": 2, "eta": 0.0}, {}),
                ("ravl", "ravl-true-dynamics", true, {}),
            ]
        for algo, name, fields, grid in runs:
            summary = run(algo, path, args.out / kind / name, args, fields, grid)
            seconds = summary["compile_seconds"] + summary["train_seconds"]
            for label, values in scores(summary).items():
                shown = f"{name} ({label})" if label else name
                rows.append(f"| {kind} | {shown} | {cell(values)} | {seconds:.0f} |")
                print(rows[-1], flush=True)
                record[f"{kind}/{shown}"] = values.tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    table.write_text(json.dumps(record, indent=2))
    print(f"\nPendulum-v1, {args.seeds} seeds, {args.model_steps} model steps (model-based "
          f"agents), then {args.policy_steps} policy gradient steps; final normalized score, "
          "mean ± std over seeds; seconds: compile and training of all seeds")  # fmt: skip
    print("| dataset | agent | final score | seconds |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
