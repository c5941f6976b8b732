"""Shared by the tests: a tiny runner spec, a silent printer, checkpoint contents, and the
offline agents' tiny synthetic dataset and the Pendulum dataset their learning checks train on."""

import dataclasses
from pathlib import Path

import jax
import numpy as np

from rljax.data import Dataset
from rljax.generate import d4rl as gen
from rljax.runner.policy import restore
from rljax.runner.spec import RunSpec

# 8 updates of 4 envs x 16 steps, in chunks of 2.
TINY = {"num_envs": 4, "num_steps": 16, "num_minibatches": 2, "update_epochs": 2}
TINY["total_timesteps"] = 8 * 64


def tiny_spec(**changes) -> RunSpec:
    spec = RunSpec(algo="ppo", env={"name": "CartPole-v1"}, agent=dict(TINY), chunk_updates=2)
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def quiet(*_) -> None:
    pass


def checkpoint_leaves(run_dir: Path) -> list[np.ndarray]:
    """Every array of the run's latest checkpoint, in tree order."""
    _, state, _ = restore(run_dir)
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def pendulum_medium_replay(directory: Path) -> tuple[Path, dict]:
    """(path, metadata) of a Pendulum-v1 medium-replay dataset written in ``directory``, as
    ``rljax data generate`` makes it but with the behaviour SAC stopped at 48k steps (about
    -175): ~23k transitions from random-level play up to the medium snapshot, ~10 s. The
    offline learning checks compare each agent with BC on it."""
    recipe = gen.RECIPES["Pendulum-v1"]
    recipe = dataclasses.replace(recipe, agent={**recipe.agent, "total_timesteps": 48_000})
    written = gen.generate_all(
        "Pendulum-v1", directory, ["medium-replay"], recipe=recipe, print_fn=quiet
    )
    return written["medium-replay"]


def synthetic_dataset(n=64, obs_dim=3, action_dim=2, seed=0, action_scale=1.0) -> Dataset:
    """Random transitions in episodes of 8 steps; episode 3 terminates, the rest time out."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[7::8] = 1
    terminals[23], timeouts[23] = 1, 0
    return Dataset.from_arrays(
        observations=rng.normal(2.0, 3.0, (n, obs_dim)),
        actions=action_scale * rng.uniform(-1, 1, (n, action_dim)),
        rewards=rng.normal(size=n),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(2.0, 3.0, (n, obs_dim)),
    )
