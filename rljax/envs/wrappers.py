"""Pure wrappers over gymnax-style environments.

Every wrapper keeps the gymnax 1.0 step API,
``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``,
and is stateful only through its state pytree, so normalization statistics travel with the
train state into checkpoints.

Agents vmap ``reset`` and ``step`` over their parallel environments with
``axis_name=ENV_AXIS``. The normalization wrappers reduce their statistics over that axis, so
all environments of one run share one set of statistics (as a VecNormalize would) while the
members of a vmapped sweep keep theirs apart. Without that axis (one unvmapped environment)
each environment keeps its own statistics.

Episode statistics come from gymnax's ``LogWrapper``; its info keys
(``returned_episode_returns``, ``returned_episode_lengths``, ``returned_episode``) are the
ones agents read, so an agent file also reports returns on a plain gymnax env.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces
from gymnax.wrappers.purerl import FlattenObservationWrapper, GymnaxWrapper, LogWrapper

ENV_AXIS = "env"

__all__ = [
    "ENV_AXIS",
    "ClipAction",
    "FlattenObservationWrapper",
    "GymnaxWrapper",
    "LogWrapper",
    "NormalizeObservation",
    "RunningMoments",
    "ScaleReward",
    "env_action",
    "find_state",
    "normalize",
]


@struct.dataclass
class RunningMoments:
    """Running mean and variance, merged batch by batch (Chan et al.'s parallel update)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape) -> "RunningMoments":
        # A tiny prior count (as in PureJaxRL and gym) keeps the first division finite.
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, x: jax.Array) -> "RunningMoments":
        """Adds one sample per environment, pooled over ENV_AXIS when it is bound."""
        x = x.astype(jnp.float32)
        batch_mean, batch_count = x, jnp.asarray(1.0)
        try:
            batch_mean = jax.lax.pmean(x, ENV_AXIS)
            batch_var = jax.lax.pmean(jnp.square(x - batch_mean), ENV_AXIS)
            batch_count = jax.lax.psum(batch_count, ENV_AXIS)
        except NameError:  # not vmapped over ENV_AXIS: a single environment's stream
            batch_var = jnp.zeros_like(x)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        m2 = m2 + jnp.square(delta) * self.count * batch_count / total
        return RunningMoments(mean, m2 / total, total)


def normalize(obs: jax.Array, moments: RunningMoments) -> jax.Array:
    """The observation normalization used in training; apply it to act on raw observations."""
    return (obs - moments.mean) / jnp.sqrt(moments.var + 1e-8)


def find_state(env_state: Any, state_type: type) -> Any:
    """The first wrapper state of ``state_type`` in a nest of wrapper states, or None."""
    while env_state is not None:
        if isinstance(env_state, state_type):
            return env_state
        env_state = getattr(env_state, "env_state", None)
    return None


def env_action(env, action, params=None):
    """The action that the innermost env executes when ``action`` is given to ``env``: each
    action wrapper's map (``UnitActions``' scaling, ``ClipAction``'s clip), outside in. A policy
    that acts through the wrappers leaves the library in the env's own units this way."""
    while isinstance(env, GymnaxWrapper):
        if isinstance(env, ClipAction | UnitActions):
            action = env.action(action, params)
        env = env._env
    return action


class ClipAction(GymnaxWrapper):
    """Clips continuous actions to the action space's bounds before the env sees them.

    Agents compute log-probabilities on the unclipped sample, as PureJaxRL does.
    """

    def action(self, action, params=None):
        space = self._env.action_space(params)
        return jnp.clip(action, space.low, space.high)

    def step(self, key, state, action, params=None):
        return self._env.step(key, state, self.action(action, params), params)


class UnitActions(GymnaxWrapper):
    """Takes actions in [-1, 1] and maps them affinely onto the action space's bounds.

    The D4RL and brax convention: offline datasets store actions in [-1, 1] whatever the
    env's torque limits, so a policy learned from them acts through this wrapper.
    """

    def action_space(self, params=None):
        space = self._env.action_space(params)
        return spaces.Box(-1.0, 1.0, space.shape, space.dtype)

    def action(self, action, params=None):
        space = self._env.action_space(params)
        return space.low + (jnp.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (space.high - space.low)

    def step(self, key, state, action, params=None):
        return self._env.step(key, state, self.action(action, params), params)


@struct.dataclass
class NormalizeObservationState:
    env_state: Any
    moments: RunningMoments


class NormalizeObservation(GymnaxWrapper):
    """Normalizes observations (and ``info["final_observation"]``) by running moments."""

    def observation_space(self, params) -> spaces.Box:
        inner = self._env.observation_space(params)
        return spaces.Box(-jnp.inf, jnp.inf, inner.shape, jnp.float32)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        moments = RunningMoments.create(obs.shape).update(obs)
        return normalize(obs, moments), NormalizeObservationState(env_state, moments)

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        moments = state.moments.update(obs)
        info = {**info, "final_observation": normalize(info["final_observation"], moments)}
        state = NormalizeObservationState(env_state, moments)
        return normalize(obs, moments), state, reward, terminated, truncated, info


@struct.dataclass
class ScaleRewardState:
    env_state: Any
    discounted_return: jax.Array
    moments: RunningMoments


class ScaleReward(GymnaxWrapper):
    """Divides rewards by the running std of the discounted return (no mean subtraction).

    As gym's NormalizeReward and PureJaxRL's NormalizeVecReward: it rescales the reward without
    shifting it, so the sign of every reward and the optimal policy are unchanged.
    """

    def __init__(self, env, gamma: float):
        super().__init__(env)
        self.gamma = gamma

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return obs, ScaleRewardState(env_state, jnp.zeros(()), RunningMoments.create(()))

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        discounted_return = state.discounted_return * self.gamma + reward
        moments = state.moments.update(discounted_return)
        done = jnp.logical_or(terminated, truncated)
        state = ScaleRewardState(env_state, jnp.where(done, 0.0, discounted_return), moments)
        reward = reward / jnp.sqrt(moments.var + 1e-8)
        return obs, state, reward, terminated, truncated, info
