"""Vectorized evaluation episodes: all in one jit, the first episode of each env counted.

Used by ``rljax eval`` and, inside the jitted chunks, by offline and goal-conditioned runs.
Goal-conditioned agents are those whose ``act`` takes a ``goal``; their envs keep the goal
observation in the env state's ``goal`` field and list ``num_tasks`` fixed evaluation tasks
(``EnvParams.task_id`` 1..num_tasks), each evaluated equally often.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from rljax import envs
from rljax.envs.wrappers import ENV_AXIS, normalize


def unnormalized_env(env_spec: dict):
    """The run's env without normalization wrappers, so returns are in the env's own units."""
    options = {k: v for k, v in env_spec.items() if k not in ("name", "normalize_obs")}
    options.pop("normalize_reward", None)
    options.pop("reward_gamma", None)
    return envs.make(env_spec["name"], **options)


def is_goal_conditioned(agent) -> bool:
    return "goal" in inspect.signature(agent.act).parameters


def goal_of(env_state):
    """The ``goal`` field of the innermost env state that has one (through the wrappers)."""
    while not hasattr(env_state, "goal"):
        env_state = env_state.env_state
    return env_state.goal


def agent_policy(agent, config, params, deterministic: bool, moments=None):
    """``policy(obs, env_state, key) -> action`` on raw observations, with frozen moments."""
    goal_conditioned = is_goal_conditioned(agent)

    def policy(obs, env_state, key):
        if moments is not None:
            obs = normalize(obs, moments)
        if goal_conditioned:
            goal = goal_of(env_state)
            return agent.act(config, params, obs, goal, key, deterministic=deterministic)
        return agent.act(config, params, obs, key, deterministic=deterministic)

    return policy


def episode_params(env, env_params, episodes: int):
    """(env params, their vmap axes, number of envs): each evaluation task of a goal-conditioned
    env ``episodes`` times, else ``episodes`` envs with the same params."""
    num_tasks = getattr(env, "num_tasks", None)
    if num_tasks is None:
        return env_params, None, episodes
    tasks = np.repeat(np.arange(1, num_tasks + 1), episodes)
    axes = jax.tree.map(lambda _: None, env_params).replace(task_id=0)
    return env_params.replace(task_id=jnp.asarray(tasks)), axes, len(tasks)


def evaluate(agent, config, params, env, env_params, episodes, key, deterministic, moments=None):
    """Returns of one agent's evaluation episodes (for goal-conditioned envs: successes)."""
    policy = agent_policy(agent, config, params, deterministic, moments)
    env_params, axes, num_envs = episode_params(env, env_params, episodes)
    return episode_returns(policy, env, env_params, num_envs, key, axes)


def episode_returns(policy, env, env_params, num_envs: int, key, params_axes=None):
    """The return of the first episode of each of ``num_envs`` vmapped envs, (num_envs,).

    ``policy(obs, env_state, key) -> action`` acts on the batch of envs; ``params_axes``
    are ``env_params``' vmap axes when they differ per env.
    """
    reset = jax.vmap(env.reset, in_axes=(0, params_axes), axis_name=ENV_AXIS)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, params_axes), axis_name=ENV_AXIS)
    key, reset_key = jax.random.split(key)
    obs, env_state = reset(jax.random.split(reset_key, num_envs), env_params)
    first = (obs, env_state, jnp.zeros(num_envs), jnp.zeros(num_envs, bool))

    def one_step(carry, key):
        obs, env_state, returns, finished = carry
        action_key, step_key = jax.random.split(key)
        action = policy(obs, env_state, action_key)
        obs, env_state, _, _, _, info = step(
            jax.random.split(step_key, num_envs), env_state, action, env_params
        )
        ended = info["returned_episode"] & ~finished
        returns = jnp.where(ended, info["returned_episode_returns"], returns)
        return (obs, env_state, returns, finished | info["returned_episode"]), None

    keys = jax.random.split(key, int(np.max(env_params.max_steps_in_episode)))
    (_, _, returns, _), _ = jax.lax.scan(one_step, first, keys)
    return returns
