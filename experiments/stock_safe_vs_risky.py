"""Safe vs risky: the stock-augmented agent's CVaR objective learns the safe route, the
expectation objective the risky shortcut (RiskyShortcut, ``rljax/envs/risky_shortcut.py``).

Trains ``stock_dqn`` with each objective (presets ``configs/stock_dqn/risky_shortcut_*.yaml``)
on several seeds as one vmapped program, then runs many greedy evaluation episodes per seed
(the CVaR agent starts each from the initial stock it searches for). Prints, per objective, the
routes the seeds chose and the return statistics (mean, CVaR_alpha, probability of falling),
next to the exact values: those of each route's known distribution, and the optimum that
exact distributional dynamic programming (``rljax.solvers.distributional_dp.solve``) finds on the
tabular env. Saves a histogram of both policies' returns.

    python experiments/stock_safe_vs_risky.py                # 5 seeds, 10,000 episodes each
                                                             # (~4 min on 2 busy CPU cores)
    python experiments/stock_safe_vs_risky.py --seeds 2 --plot /tmp/returns.png
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from rljax import envs
from rljax.agents import stock_dqn
from rljax.envs import risky_shortcut
from rljax.runner import config as config_lib
from rljax.solvers import distributional_dp

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("mean", "cvar")
ROUTES = {0: "safe", 1: "shortcut"}  # the greedy first action: up, or right along the ledge


def load_config(objective: str, total_timesteps: int | None) -> stock_dqn.Config:
    preset = REPO / "configs" / "stock_dqn" / f"risky_shortcut_{objective}.yaml"
    agent = yaml.safe_load(preset.read_text())["agent"]
    if total_timesteps is not None:
        agent["total_timesteps"] = total_timesteps
    return config_lib.make_config(stock_dqn.Config, agent)


def evaluate(config, env, env_params, params, key, episodes: int):
    """Greedy episodes from the agent's own initial stock: (returns, fell, first action)."""
    wrapped, _ = stock_dqn.wrap_env(config, env, env_params, params)
    # Only each env's first episode counts, so later ones may start anywhere: stepping without
    # the agent's stock search (num_stock_candidates forward passes per step) is much faster.
    stepper = stock_dqn.StockAugmentation(env, config.gamma, lambda key, obs: 0.0)
    reset = jax.vmap(wrapped.reset, in_axes=(0, None), axis_name=stock_dqn.ENV_AXIS)
    step = jax.vmap(stepper.step, in_axes=(0, 0, 0, None), axis_name=stock_dqn.ENV_AXIS)
    reset_key, key = jax.random.split(key)
    obs, state = reset(jax.random.split(reset_key, episodes), env_params)
    first_action = stock_dqn.act(config, params, obs, key, deterministic=True)
    cost, penalty = env_params.step_cost, env_params.fall_penalty
    zeros = jnp.zeros(episodes)

    def one_step(carry, key):
        obs, state, returns, fell, finished = carry
        action = stock_dqn.act(config, params, obs, key, deterministic=True)
        obs, state, reward, terminated, truncated, _ = step(
            jax.random.split(key, episodes), state, action, env_params
        )
        live = ~finished
        returns = returns + jnp.where(live, reward, 0.0)
        fell = fell | (live & (reward <= -cost - penalty))
        return (obs, state, returns, fell, finished | terminated | truncated), None

    keys = jax.random.split(key, env_params.max_steps_in_episode)
    first = (obs, state, zeros, zeros.astype(bool), zeros.astype(bool))
    (_, _, returns, fell, _), _ = jax.lax.scan(one_step, first, keys)
    return returns, fell, first_action, obs[:, -1]


def statistics(returns, fell, alpha) -> dict:
    worst = np.sort(returns)[: max(1, int(round(alpha * len(returns))))]
    return {"mean": returns.mean(), "cvar": worst.mean(), "fall": fell.mean()}


def exact(outcomes: dict, alpha: float, penalty_below: float) -> dict:
    values, probs = np.array(list(outcomes)), np.array(list(outcomes.values()))
    return {
        "mean": float(values @ probs),
        "cvar": risky_shortcut.cvar(outcomes, alpha),
        "fall": float(probs[values <= penalty_below].sum()),
    }


def dynamic_programming(env_params, alpha: float) -> dict:
    """The exact optimum of each objective on the tabular env, by distributional DP."""
    P, rewards, initial = risky_shortcut.tabular(env_params)
    if not np.allclose(rewards, np.round(rewards)):
        raise ValueError("distributional_dp needs integer rewards; use integer costs")
    mdp = distributional_dp.MDP(
        P, np.round(rewards).astype(int), initial, horizon=env_params.max_steps_in_episode
    )
    solutions = {}
    for objective, target in (("mean", distributional_dp.expectation), ("cvar", None)):
        target = target or distributional_dp.CVaR(alpha)
        solution = distributional_dp.solve(mdp, target)
        law = solution.distribution
        start = int(np.argmax(initial))
        origin = int(solution.grid.origin)
        outcomes = {
            float(x): float(p) for x, p in zip(law.support, law.probs, strict=True) if p > 1e-9
        }
        action = int(solution.policy[0, start, origin])
        solutions[objective] = (ROUTES.get(action, f"action {action}"), outcomes)
    return solutions


def plot(path: Path, returns: dict, exact_routes: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.arange(-12, -2)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.4
    for i, (objective, rs) in enumerate(returns.items()):
        freq = [(np.round(rs) == v).mean() for v in values]
        ax.bar(values + (i - 0.5) * width, freq, width, label=f"{objective} objective (learned)")
    # Each route's exact law over the bars of the objective that should learn it.
    for i, outcomes in enumerate(exact_routes.values()):
        xs = np.array(list(outcomes))
        ax.scatter(xs + (i - 0.5) * width, [outcomes[x] for x in xs], marker="x", color="k",
                   s=50, zorder=3, label="exact law of the route" if i == 0 else None)  # fmt: skip
    ax.set_xlabel("episode return")
    ax.set_ylabel("fraction of episodes")
    ax.set_yscale("log")
    ax.set_title("stock_dqn on RiskyShortcut: greedy return distributions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=10_000, help="per seed")
    parser.add_argument("--total-steps", type=int, default=None, help="default: the presets'")
    parser.add_argument("--plot", type=Path, default=Path("stock_safe_vs_risky.png"))
    args = parser.parse_args()

    start = time.perf_counter()
    env, env_params = envs.make("rljax/RiskyShortcut")
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    learned, alpha = {}, None
    for objective in OBJECTIVES:
        config = load_config(objective, args.total_steps)
        alpha = float(config.alpha)
        wrapped, _ = stock_dqn.wrap_env(config, env, env_params)
        began = time.perf_counter()
        state, _ = jax.jit(
            jax.vmap(lambda k, c=config, e=wrapped: stock_dqn.train(c, e, env_params, k))
        )(keys)
        jax.block_until_ready(state.params)
        trained = time.perf_counter() - began
        run = jax.jit(
            jax.vmap(lambda p, k, c=config: evaluate(c, env, env_params, p, k, args.episodes))
        )
        returns, fell, first_action, stocks = jax.tree.map(
            np.asarray, run(state.params, jax.random.split(jax.random.PRNGKey(1), args.seeds))
        )
        learned[objective] = (returns, fell, first_action[:, 0], stocks[:, 0])
        print(f"{objective}: {args.seeds} seeds x {config.total_timesteps:,} steps trained in "
              f"{trained:.1f} s (compile included)")  # fmt: skip

    penalty_below = -env_params.fall_penalty
    routes = {
        "shortcut": risky_shortcut.route_returns(risky_shortcut.SHORTCUT, env_params),
        "safe": risky_shortcut.route_returns(risky_shortcut.SAFE, env_params),
    }
    optimum = dynamic_programming(env_params, alpha)

    header = f"{'':<26}{'route (seeds)':<24}{'mean':>9}{f'CVaR_{alpha:g}':>10}{'P(fall)':>9}"
    print("\n" + header + "\n" + "-" * len(header))
    for objective, (returns, fell, first_action, stocks) in learned.items():
        chosen = [ROUTES.get(int(a), f"action {int(a)}") for a in first_action]
        counts = ", ".join(f"{chosen.count(r)} {r}" for r in dict.fromkeys(chosen))
        s = statistics(returns.ravel(), fell.ravel(), alpha)
        name = f"stock_dqn, {objective} (learned)"
        print(f"{name:<26}{counts:<24}{s['mean']:>9.3f}{s['cvar']:>10.3f}{s['fall']:>9.4f}")
        if objective == "cvar":
            print(f"{'':<26}initial stocks c_0 searched per seed: {np.round(stocks, 2).tolist()}")
    for objective, (route, outcomes) in optimum.items():
        e = exact(outcomes, alpha, penalty_below)
        name = f"{objective}-optimal (exact DP)"
        print(f"{name:<26}{route:<24}{e['mean']:>9.3f}{e['cvar']:>10.3f}{e['fall']:>9.4f}")
    for route, outcomes in routes.items():
        e = exact(outcomes, alpha, penalty_below)
        name = f"{route} route (exact)"
        print(f"{name:<26}{route:<24}{e['mean']:>9.3f}{e['cvar']:>10.3f}{e['fall']:>9.4f}")

    plot(args.plot, {o: v[0].ravel() for o, v in learned.items()}, routes)
    print(f"\nhistogram of the learned policies' returns: {args.plot.resolve()}")
    print(f"total time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
