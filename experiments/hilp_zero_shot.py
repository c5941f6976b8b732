"""HILP's zero-shot claim on a point maze: one representation and skill policy, prompted.

Park, Rybkin, Levine (ICML 2024) train a Hilbert representation phi and a skill policy
pi(a | s, z) on a reward-free dataset once, then prompt the policy at test time: with
z = (phi(g) - phi(s)) / ||.|| for a goal g, and with z = lstsq(phi(s), r) for a reward function
r. This script trains HILP once on rljax/PointMaze-medium's navigate dataset (generated with
``rljax.generate.mazes``, as ``experiments/gc_mazes.py``) through the runner, seeds vmapped, and
compares it with goal-conditioned agents (GCIQL, HIQL; OGBench's pointmaze settings) trained on
the same data at the same budget:

(a) goals: success rate on the maze's five evaluation tasks (the runner's evaluation after the
    last update), HILP prompted with each goal, and with test-time planning (HILP-Plan,
    ``--planning`` midpoint refinements) as a second evaluation of the same params;
(b) reward functions: reward 1 while the point is in a maze cell (``--regions``), 0 elsewhere.
    HILP gets z from ``hilp.reward_prompt`` on ``--prompt-samples`` dataset rows and their
    rewards, then runs ``act_with_skill`` from uniformly random start positions for 1000 steps
    (no termination). The goal-conditioned agents, and HILP for comparison, are instead told
    the cell's centre as a goal. Reported: the fraction of episodes that enter the region, and
    the return (steps spent in it, out of 1000).

Every number is an IQM over seeds with a 95% bootstrap CI. ``--updates``, ``--batch``,
``--hidden`` and ``--episodes`` scale it; at the end a markdown table is printed.

    python experiments/hilp_zero_shot.py [--updates 20000] [--seeds 4] [--baselines gciql,hiql]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rljax import agents, envs
from rljax.agents import hilp
from rljax.generate import mazes
from rljax.runner import evaluation, results
from rljax.runner.loop import train
from rljax.runner.policy import restore
from rljax.runner.spec import RunSpec

# OGBench's pointmaze overrides (impls/hyperparameters.sh, spec GC-4).
OVERRIDES = {"gciql": {"alpha": 0.003}}
EPISODE_STEPS = 1000  # OGBench's pointmaze time limit


def summarize(values) -> tuple[float, float, float]:
    """IQM over seeds and its 95% bootstrap CI."""
    values = np.asarray(values, np.float64)
    low, high = results.bootstrap_ci(values, results.iqm)
    return float(results.iqm(values)), float(low), float(high)


def cell(text: str) -> tuple[int, int]:
    row, col = (int(x) for x in text.split(","))
    return row, col


def region_rollouts(env, act, region: int, starts, steps: int):
    """(entered, steps inside) per start: the point moved by ``act(obs) -> action`` for
    ``steps`` steps from each start, never reset; inside = in the maze cell ``region``."""

    def step(pos, _):
        pos = jax.vmap(env.move)(pos, act(pos))
        return pos, env.cell(pos) == region

    _, inside = jax.lax.scan(step, starts, None, steps)
    return inside.any(0), inside.sum(0)


def random_starts(env, key, count: int, region: int):
    """``count`` start positions as the env draws them for task_id 0 (a uniform free cell, plus
    noise), outside the cell ``region``."""
    keys = jax.random.split(key, 20 * count)
    starts = np.asarray(jax.vmap(lambda k: env.reset_env(k, env.default_params)[1].pos)(keys))
    return jnp.asarray(starts[np.asarray(env.cell(starts)) != region][:count])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maze", default="medium")
    parser.add_argument("--episodes", type=int, help="dataset trajectories (OGBench's: 1000)")
    parser.add_argument("--updates", type=int, default=20_000, help="gradient steps per seed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", default="256,256,256")
    parser.add_argument("--skill-dim", type=int, default=32, help="HILP's skill_dim (paper: 32)")
    parser.add_argument(
        "--baselines", default="gciql", help="goal-conditioned agents, comma-separated"
    )
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=10, help="per evaluation task")
    parser.add_argument("--planning", type=int, default=3, help="HILP-Plan recursions (0: skip)")
    parser.add_argument("--planning-states", type=int, default=2000, help="states HILP keeps")
    parser.add_argument("--regions", default="2,5;5,3;4,5", help="maze cells ROW,COL;ROW,COL")
    parser.add_argument("--prompt-samples", type=int, default=10_000, help="rows for lstsq")
    parser.add_argument("--region-episodes", type=int, default=50, help="random starts per seed")
    parser.add_argument("--out", type=Path, help="datasets and runs (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rljax-hilp-zero-shot-"))
    hidden = [int(h) for h in args.hidden.split(",")]
    env_name = f"rljax/PointMaze-{args.maze}"
    env = mazes.make_env(env_name)
    regions = [cell(text) for text in args.regions.split(";")]
    for row, col in regions:
        if not (0 <= row < env.rows and 0 <= col < env.cols) or env.walls[row, col]:
            raise SystemExit(f"--regions: cell ({row}, {col}) is not a free cell of {env_name}")
    region_ids = [row * env.cols + col for row, col in regions]
    start = time.time()

    path = mazes.write(env_name, "navigate", out / "data", args.episodes, val=False)[0]
    data = np.load(path)
    observations = data["observations"][data["terminals"] == 0]  # rows with a next observation
    print(f"dataset {path.name}: {len(observations):,} transitions ({time.time() - start:.0f}s)")

    # --- Training: HILP once, each baseline once, at the same budget ---
    algos = ["hilp", *args.baselines.split(",")]
    runs, goal_success, speed = {}, {}, {}
    for algo in algos:
        agent = {"total_updates": args.updates, "batch_size": args.batch, "hidden_sizes": hidden}
        if algo == "hilp":
            agent |= {"skill_dim": args.skill_dim, "planning_num_states": args.planning_states}
        agent |= OVERRIDES.get(algo, {})
        spec = RunSpec(
            algo=algo, env={"name": env_name}, agent=agent, seeds=args.seeds,
            dataset=str(path), eval_episodes=args.eval_episodes, chunk_updates=args.updates,
        )  # fmt: skip
        runs[algo] = out / f"{algo}-{args.maze}"
        summary = train(spec, runs[algo], print_fn=lambda *_: None)
        goal_success[algo] = 100 * np.array([m["final_return"] for m in summary["final_returns"]])
        speed[algo] = summary["steps_per_second"]
        print(
            f"{algo:<6} trained: goal success {summarize(goal_success[algo])[0]:5.1f}% "
            f"(seeds {np.round(goal_success[algo]).astype(int).tolist()}), "
            f"{speed[algo] or float('nan'):,.0f} gradient steps/s over {args.seeds} seeds, "
            f"compile {summary['compile_seconds']:.0f}s ({time.time() - start:.0f}s so far)",
            flush=True,
        )

    # --- (a) HILP-Plan: the same params, prompted through planned subgoals ---
    trained = {algo: restore(runs[algo]) for algo in algos}  # (program, state, update)
    configs, params = trained["hilp"][0].stacked, trained["hilp"][1].params
    eval_env, eval_params = envs.make(env_name)
    declared = agents.declaration("hilp")
    if args.planning > 0:
        planned = configs.replace(planning_num_recursions=args.planning)
        hilp.check(jax.tree.map(lambda x: x[0], planned))

        def planned_success(config, member_params, key):
            policy = evaluation.agent_policy(declared, config, member_params, True)
            returns = evaluation.evaluate_policy(
                policy, eval_env, eval_params, args.eval_episodes, key
            )
            return returns.mean()

        keys = jax.random.split(jax.random.PRNGKey(1), args.seeds)
        success = jax.jit(jax.vmap(planned_success))(planned, params, keys)
        goal_success["hilp-plan"] = 100 * np.asarray(success)
        row = summarize(goal_success["hilp-plan"])
        print(f"hilp-plan ({args.planning} recursions): goal success {row[0]:5.1f}% "
              f"({time.time() - start:.0f}s)")  # fmt: skip

    # --- (b) Reward functions: 1 in a maze cell ---
    rng = np.random.default_rng(0)
    samples = observations[rng.choice(len(observations), args.prompt_samples, replace=False)]
    sample_cells = np.asarray(env.cell(jnp.asarray(samples)))
    centres = np.asarray(env.centres)
    region_scores = {}  # (method, region) -> (% of episodes that enter, mean return), per seed

    def score(method, region, act_fn, stacked_configs, stacked_params, prompt):
        starts = random_starts(env, jax.random.PRNGKey(region), args.region_episodes, region)

        def member(config, member_params, member_prompt):
            return region_rollouts(
                env, lambda pos: act_fn(config, member_params, pos, member_prompt), region,
                starts, EPISODE_STEPS,
            )  # fmt: skip

        entered, inside = jax.jit(jax.vmap(member))(stacked_configs, stacked_params, prompt)
        region_scores[method, region] = (
            100 * np.asarray(entered).mean(-1),
            np.asarray(inside).mean(-1),
        )

    for region in region_ids:
        rewards = (sample_cells == region).astype(np.float32)
        prompt = jax.vmap(hilp.reward_prompt, in_axes=(0, 0, None, None))
        z = jax.jit(prompt)(configs, params, samples, rewards)
        score(
            "hilp", region, lambda c, p, pos, z: hilp.act_with_skill(c, p, pos, z, None, True),
            configs, params, z,
        )  # fmt: skip
        # The control: a skill drawn at random, as in training, instead of the prompt.
        random_z = hilp.sample_skills(jax.random.PRNGKey(region), (args.seeds,), args.skill_dim)
        score(
            "hilp-random", region,
            lambda c, p, pos, z: hilp.act_with_skill(c, p, pos, z, None, True),
            configs, params, random_z,
        )  # fmt: skip
        goal = jnp.broadcast_to(jnp.asarray(centres[region]), (args.seeds, 2))
        for algo in algos:
            algo_program, algo_state, _ = trained[algo]
            module = algo_program.agent.module

            def goal_act(c, p, pos, g, module=module):
                return module.act(c, p, pos, jnp.broadcast_to(g, pos.shape), None, True)

            score(f"{algo}-goal", region, goal_act, algo_program.stacked, algo_state.params, goal)
        print(f"region {divmod(region, env.cols)} scored ({time.time() - start:.0f}s)", flush=True)

    # --- The table ---
    def cell_text(values):
        return "{:.0f} [{:.0f}, {:.0f}]".format(*summarize(values))

    def region_cells(method):
        entered = np.mean([region_scores[method, r][0] for r in region_ids], 0)
        returns = np.mean([region_scores[method, r][1] for r in region_ids], 0)
        return [cell_text(entered), cell_text(returns)], entered, returns

    rows = [("HILP, prompted with the goal / the region's centre", "hilp", "hilp-goal")]
    rows.append(("HILP, prompted with the reward (reward_prompt)", None, "hilp"))
    rows.append(("HILP, a random skill (control)", None, "hilp-random"))
    if "hilp-plan" in goal_success:
        rows.append((f"HILP-Plan ({args.planning} recursions), goal prompt", "hilp-plan", None))
    rows += [(f"{a.upper()}, trained for goals; goal / region's centre", a, f"{a}-goal")
             for a in algos[1:]]  # fmt: skip
    print(
        f"\nrljax/PointMaze-{args.maze} navigate ({len(observations):,} transitions); "
        f"{args.updates} gradient steps, batch {args.batch}, hidden {hidden}, {args.seeds} seeds; "
        f"IQM over seeds [95% CI]. Goals: success % over the 5 evaluation tasks, "
        f"{args.eval_episodes} episodes each. Regions (maze cells {regions}, reward 1 inside): % "
        f"of {args.region_episodes} episodes per seed (random starts outside the cell) that "
        f"enter it within {EPISODE_STEPS} steps, and the return (steps inside), averaged over "
        "the regions\n"
    )
    print("| method | goals: success % | regions: entered % | regions: return |")
    print("|---|---|---|---|")
    table = {}
    for label, goal_key, region_key in rows:
        cells = [cell_text(goal_success[goal_key]) if goal_key else "-"]
        entry = {"goal_success": goal_success[goal_key].tolist() if goal_key else None}
        if region_key:
            texts, entered, returns = region_cells(region_key)
            cells += texts
            entry |= {"entered": entered.tolist(), "return": returns.tolist()}
        else:
            cells += ["-", "-"]
        table[label] = entry
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nper region, entered % / return (IQM over seeds):")
    for region in region_ids:
        line = "; ".join(
            f"{method} {summarize(region_scores[method, region][0])[0]:.0f}% / "
            f"{summarize(region_scores[method, region][1])[0]:.0f}"
            for method, r in region_scores
            if r == region
        )
        print(f"  cell {divmod(region, env.cols)}: {line}")
    (out / "table.json").write_text(json.dumps(table, indent=1))
    print(f"\nruns in {out}; {time.time() - start:.0f}s in all; gradient steps/s {speed}")


if __name__ == "__main__":
    main()
