"""rljax: JAX-native reinforcement learning with single-file agents and vmapped sweeps."""

from rljax.envs import make
from rljax.runner.policy import evaluate, load_policy

__all__ = ["evaluate", "load_policy", "make"]
