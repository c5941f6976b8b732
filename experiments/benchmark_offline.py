"""How fast the offline agents train: gradient steps/s, compile time, peak memory.

Each agent trains with its paper's networks and batch size (CORL's: 256x256, batch 256; CQL
and IQL as in their files) on a D4RL-sized dataset held on the device (``--rows`` transitions
of hopper's shapes, 11-d observations and 3-d actions, random numbers: speed does not depend on
the values). One seed, then ``--seeds`` seeds vmapped in one program. Each agent's ``update``
samples its batch inside the jitted scan, as in the runner. Timing and memory as in
benchmark_ppo.py.

    python experiments/benchmark_offline.py [--agents bc,td3_bc] [--updates 2000] [--rows 1000000]
"""

import argparse

import jax
import numpy as np
from benchmark_ppo import compile_fn, peak_memory, run_seconds

from rljax import agents
from rljax.data import Dataset

NAMES = ("bc", "td3_bc", "iql", "rebrac", "cql", "odice", "fdvl", "prdc", "a2pr", "riql", "edac")


def fake_dataset(rows: int, obs_dim: int = 11, action_dim: int = 3, episode: int = 1000):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(rows, obs_dim)).astype(np.float32)
    timeouts = (np.arange(rows) % episode == episode - 1).astype(np.float32)
    return Dataset.from_arrays(
        observations=obs,
        actions=rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        terminals=np.zeros(rows, np.float32),
        timeouts=timeouts,
        next_observations=np.roll(obs, -1, 0),
    )


def measure(agent, config, dataset, updates: int, seeds: int) -> dict:
    keys = jax.random.split(jax.random.key(0), seeds)

    def train_seeds(keys):
        # One member at a time for init (see rljax.runner.program: no vmapped init on CPU).
        states = jax.lax.map(lambda k: agent.init(config, dataset, k), keys)

        def one_update(state, _):
            return agent.update(config, dataset, state)  # samples its batch inside jit

        run = jax.vmap(lambda s: jax.lax.scan(one_update, s, None, updates))
        return run(states)[1]

    compiled, compile_s = compile_fn(train_seeds, keys)
    run_s = run_seconds(compiled, keys)
    return {"compile_s": compile_s, "run_s": run_s, "steps_per_s": seeds * updates / run_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(NAMES))
    parser.add_argument("--updates", type=int, default=2000, help="gradient steps per seed")
    parser.add_argument("--rows", type=int, default=1_000_000, help="dataset transitions")
    parser.add_argument("--seeds", type=int, default=4, help="vmapped seeds in the second case")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    dataset = fake_dataset(args.rows)
    print(f"dataset: {args.rows:,} transitions on device, {args.updates} gradient steps per seed")
    print(f"{'agent':<8} {'seeds':>5} {'compile s':>9} {'run s':>7} {'steps/s':>9} {'peak MiB':>9}")
    for name in args.agents.split(","):
        agent = agents.get(name)
        config = agent.Config(total_updates=args.updates)
        for seeds in (1, args.seeds):
            r = measure(agent, config, dataset, args.updates, seeds)
            print(
                f"{name:<8} {seeds:>5} {r['compile_s']:9.1f} {r['run_s']:7.2f} "
                f"{r['steps_per_s']:9,.0f} {peak_memory()[0]:9.0f}"
            )


if __name__ == "__main__":
    main()
