"""Tiny runner runs shared by the runner tests: a spec, a silent printer, checkpoint contents."""

from pathlib import Path

import jax
import numpy as np

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
