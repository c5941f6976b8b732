"""Brax environments behind the gymnax 1.0 step API.

Brax's own EpisodeWrapper folds the time limit into ``done`` and AutoResetWrapper restarts every
episode from the same cached first state. Here the time limit is gymnax's ``truncated``
(``time >= max_steps_in_episode``), ``terminated`` is brax's own ``done`` (a fallen hopper), and
every reset draws a fresh initial state.
"""

import contextlib
import io
from typing import Any

import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class BraxEnvState(environment.EnvState):
    brax_state: Any
    time: int


@struct.dataclass
class BraxEnvParams(environment.EnvParams):
    max_steps_in_episode: int = 1000


class BraxEnv(environment.Environment):
    """A brax environment (``brax.envs.get_environment(name, backend=...)``) as a gymnax one."""

    def __init__(self, name: str, backend: str = "positional"):
        super().__init__()
        self.brax_name = name
        self._env = _brax_envs().get_environment(name, backend=backend)

    @property
    def default_params(self) -> BraxEnvParams:
        return BraxEnvParams()

    def reset_env(self, key, params):
        brax_state = self._env.reset(key)
        return brax_state.obs, BraxEnvState(brax_state=brax_state, time=0)

    def step_env(self, key, state, action, params):
        brax_state = self._env.step(state.brax_state, action)
        state = BraxEnvState(brax_state=brax_state, time=state.time + 1)
        terminated = brax_state.done.astype(bool)
        return brax_state.obs, state, brax_state.reward, terminated, {}

    @property
    def name(self) -> str:
        return f"brax/{self.brax_name}"

    @property
    def num_actions(self) -> int:
        return self._env.action_size

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self._env.action_size,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self._env.observation_size,), jnp.float32)


def _brax_envs():
    """brax.envs, imported on first use (it is slow), without the 'Failed to import warp'
    lines that mujoco prints to stdout when the optional warp package is absent."""
    with contextlib.redirect_stdout(io.StringIO()):
        from brax import envs
    return envs


def names() -> list[str]:
    return sorted(_brax_envs()._envs)  # brax keeps its registry private; it has no public listing
