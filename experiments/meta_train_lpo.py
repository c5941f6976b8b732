"""Meta-trains LPO's drift network with OpenAI-ES, starting from PPO's drift.

Each generation trains a population of LPO agents from scratch, one drift network each, as one
jitted program (members initialized in turn with ``lax.map``, then the update scan vmapped over
the drift weights); a member's fitness is the mean return of the episodes that finished in the
last 10% of its training. Antithetic pairs share seeds. After the last generation the learned
drift (the ES mean) and PPO's drift (zero weights) each train agents on the same held-out seeds.

Writes to --out: fitness.csv (per generation: mean, max, min of the population's fitness),
drift.npz (the learned weights w1, w2; ``python rljax/agents/lpo.py CartPole-v1 drift.npz``
trains with them), summary.json, fitness.png (the fitness curve, PPO's held-out return as a
line) and drift.png (D(ratio, A) against ratio for A = +1 and A = -1, learned and PPO's; for
TA-LPO at training progress 0, 0.5 and 1).

    python experiments/meta_train_lpo.py                       # CPU: about 10-15 minutes
    python experiments/meta_train_lpo.py --ta-lpo --generations 8 --population 8

The CPU defaults are tiny: population 16, 16 generations, CartPole with PureJaxRL's PPO config
cut to 2**17 steps per member (where PPO has not yet converged, so there is room to improve).
The papers' scale, for a GPU:
  LPO (Lu et al. 2022, ``main_drift_brax.py``): evosax OpenES, population 32, Adam, 1025
    generations, one rollout (seed) per member, fitness the final evaluation return, z-scored;
    each member a Brax PPO on Ant: 3e7 steps, 2048 envs, unroll 5, 32 minibatches, 4 epochs,
    gamma 0.97, lr 3e-4, entropy 1e-2, reward scale 10. Drift network 8 -> 128 -> 1, tanh.
  TA-LPO (Jackson et al. 2024): the same drift with training progress n/N as an input,
    meta-trained on MinAtar and Brax. Their code (groove) ships ES for TA-LPG only: OpenES,
    population 2 x num_agents, Adam lr 1e-2 (decay 0.999, floor 1e-5), sigma 0.1, antithetic
    task sampling; this script's ES uses those settings. TA-LPO's own population and
    generation counts were not found.
  A GPU run in that spirit: --population 64 --generations 512 --env Breakout-MinAtar
    --set num_envs=64 --set total_timesteps=10000000 --ta-lpo
"""

import argparse
import csv
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from rljax import envs
from rljax.agents import lpo
from rljax.meta import es
from rljax.runner import config as config_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def make_fitness(config: lpo.Config, env, env_params, population_size: int):
    """fitness(drift_params, rng) -> (population_size,) final returns, jitted. Member i and
    i + population_size / 2 (an antithetic pair, or PPO and LPO in the final comparison)
    train with the same seed."""
    last = max(1, config.num_updates // 10)

    def train_population(drift_params, keys):
        states = jax.lax.map(lambda key: lpo.init(config, env, env_params, key), keys)

        def run(params, state):
            member = config.replace(drift_params=params)
            return jax.lax.scan(
                lambda s, _: lpo.update(member, env, env_params, s), state, None,
                config.num_updates,
            )[1]  # fmt: skip

        returns = jax.vmap(run)(drift_params, states)["episode_return"][:, -last:]
        return jnp.nan_to_num(jnp.nanmean(returns, axis=1))

    def fitness(drift_params, rng):
        keys = jax.random.split(rng, population_size // 2)
        return train_population(drift_params, jnp.concatenate([keys, keys]))

    return jax.jit(fitness)


def plot_fitness(path: Path, history: np.ndarray, ppo_return: float, lpo_return: float, title):
    generations = np.arange(1, len(history) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(generations, history.mean(1), label="population mean")
    ax.fill_between(generations, history.min(1), history.max(1), alpha=0.2, label="min to max")
    ax.axhline(ppo_return, color="k", ls="--", label=f"PPO drift, held-out seeds: {ppo_return:.0f}")
    ax.axhline(lpo_return, color="C3", ls=":", label=f"learned, held-out seeds: {lpo_return:.0f}")
    ax.set(xlabel="generation", ylabel="final return", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_drift(path: Path, config: lpo.Config, learned: dict, title: str):
    ratio = jnp.linspace(0.2, 2.0, 400)
    ppo = lpo.init_drift(config)
    progresses = (0.0, 0.5, 1.0) if config.ta_lpo else (0.0,)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, advantage in zip(axes, (1.0, -1.0), strict=True):
        a = jnp.full_like(ratio, advantage)
        ax.plot(ratio, lpo.drift(ratio, a, 0.0, ppo, config), "k--", label="PPO (clip 0.2)")
        for p in progresses:
            label = f"learned, n/N = {p}" if config.ta_lpo else "learned"
            ax.plot(ratio, lpo.drift(ratio, a, p, learned, config), label=label)
        ax.axvline(1.0, color="gray", lw=0.5)
        ax.set(xlabel="ratio pi / pi_old", title=f"A = {advantage:+.0f}")
    axes[0].set_ylabel("drift D(ratio, A)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=16)
    parser.add_argument("--total-steps", type=int, default=2**17, help="env steps per member")
    parser.add_argument("--ta-lpo", action="store_true", help="training progress as an input")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an lpo.Config field, e.g. num_envs=64")  # fmt: skip
    parser.add_argument("--lr", type=float, default=1e-2, help="the ES's Adam learning rate")
    parser.add_argument("--sigma", type=float, default=0.1, help="the ES's noise scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/meta_train_lpo"))
    args = parser.parse_args()

    overrides = {"total_timesteps": args.total_steps, "ta_lpo": args.ta_lpo}
    config = config_lib.make_config(
        lpo.Config, {**overrides, **config_lib.parse_assignments(args.set)}
    )
    env, env_params = envs.make(
        args.env, **({"flatten_obs": True} if "MinAtar" in args.env else {})
    )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "TA-LPO" if config.ta_lpo else "LPO"
    steps = config.num_updates * config.steps_per_update
    print(
        f"{name} on {args.env}: population {args.population}, {args.generations} generations, "
        f"{steps:,} env steps per member; jax {jax.__version__} on {jax.default_backend()}",
        flush=True,
    )

    fitness = make_fitness(config, env, env_params, args.population)
    key, heldout_key, lower_key = jax.random.split(jax.random.key(args.seed), 3)
    mean = lpo.init_drift(config)
    population = jax.tree.map(lambda x: jnp.stack([x] * args.population), mean)
    start = time.perf_counter()
    fitness = fitness.lower(population, lower_key).compile()
    compile_s = time.perf_counter() - start
    print(f"compiled one generation's program in {compile_s:.1f} s", flush=True)

    generation_s = []

    def log(i, fit, _):
        generation_s.append(time.perf_counter() - clock[0])
        clock[0] = time.perf_counter()
        print(
            f"  generation {i + 1:3d}  fitness mean {fit.mean():6.1f}  max {fit.max():6.1f}  "
            f"min {fit.min():6.1f}  ({generation_s[-1]:.1f} s)",
            flush=True,
        )

    clock = [time.perf_counter()]
    learned, history = es.evolve(
        fitness, mean, key, args.generations, args.population, log, lr=args.lr, sigma=args.sigma
    )

    # Held-out seeds: the first half of the members runs PPO's drift, the second half the
    # learned one, pairwise on the same seeds.
    half = args.population // 2
    both = jax.tree.map(lambda ppo, new: jnp.stack([ppo] * half + [new] * half), mean, learned)
    final = np.asarray(fitness(both, heldout_key))
    ppo_final, lpo_final = final[:half], final[half:]
    total_s = time.perf_counter() - start
    print(
        f"held-out seeds ({half}): PPO drift {ppo_final.mean():.1f} +- {ppo_final.std():.1f}, "
        f"learned drift {lpo_final.mean():.1f} +- {lpo_final.std():.1f}, paired difference "
        f"{(lpo_final - ppo_final).mean():+.1f}"
    )
    print(
        f"time: {compile_s:.1f} s compile, {np.mean(generation_s):.1f} s per generation "
        f"({args.population * steps / np.mean(generation_s):,.0f} env steps/s), "
        f"{total_s:.1f} s in all"
    )

    with open(args.out / "fitness.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["generation", "mean", "max", "min"])
        for i, fit in enumerate(history):
            writer.writerow([i + 1, fit.mean(), fit.max(), fit.min()])
    np.savez(args.out / "drift.npz", **{k: np.asarray(v) for k, v in learned.items()})
    summary = {
        "algorithm": name,
        "env": args.env,
        "population": args.population,
        "generations": args.generations,
        "env_steps_per_member": steps,
        "es": {"lr": args.lr, "sigma": args.sigma},
        "fitness_mean_per_generation": history.mean(1).tolist(),
        "heldout_ppo_returns": ppo_final.tolist(),
        "heldout_learned_returns": lpo_final.tolist(),
        "compile_s": compile_s,
        "seconds_per_generation": float(np.mean(generation_s)),
        "total_s": total_s,
        "config": {k: v for k, v in config_lib.as_dict(config).items() if k != "drift_params"},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    title = f"{name} on {args.env}, population {args.population}"
    plot_fitness(args.out / "fitness.png", history, ppo_final.mean(), lpo_final.mean(), title)
    plot_drift(args.out / "drift.png", config, learned, f"{name}: learned drift vs PPO's")
    print(f"wrote {args.out}/fitness.csv, drift.npz, summary.json, fitness.png, drift.png")


if __name__ == "__main__":
    main()
