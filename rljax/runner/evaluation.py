"""Policies in vectorized envs: one rollout function, and evaluation episodes built on it.

``rollout`` steps a batch of envs under a policy and keeps what a caller asks of each step;
a policy with memory (a recurrent agent's, ``MemoryPolicy``) carries it from step to step;
evaluation keeps the episode statistics (the first episode of each env counts), and dataset
generation keeps whole transitions. Goal-conditioned envs keep the goal in the env state's
``goal`` field and list ``num_tasks`` fixed evaluation tasks (``EnvParams.task_id``
1..num_tasks), each evaluated equally often.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rljax.envs.wrappers import ENV_AXIS, normalize


def goal_of(env_state):
    """The ``goal`` field of the innermost env state that has one (through the wrappers)."""
    while not hasattr(env_state, "goal"):
        env_state = env_state.env_state
    return env_state.goal


class MemoryPolicy(NamedTuple):
    """A policy that remembers: ``step(memory, obs, first, env_state, key) -> (memory, action)``,
    where ``first`` marks the observations that start an episode, from ``initial(num_envs)``."""

    initial: Callable[[int], Any]
    step: Callable


def agent_policy(agent, config, params, deterministic: bool, moments=None):
    """``policy(obs, env_state, key) -> action`` of a declared agent (``rljax.agents.
    declaration``) on raw observations, with frozen normalization moments; a ``MemoryPolicy``
    for a recurrent agent."""
    if agent.recurrent:
        module = agent.module

        def step(memory, obs, first, env_state, key):
            if moments is not None:
                obs = normalize(obs, moments)
            return module.act_step(config, params, memory, obs, first, key, deterministic)

        return MemoryPolicy(lambda num_envs: module.initial_hidden(config, (num_envs,)), step)

    def policy(obs, env_state, key):
        if moments is not None:
            obs = normalize(obs, moments)
        if agent.goal_conditioned:
            goal = goal_of(env_state)
            return agent.module.act(config, params, obs, goal, key, deterministic=deterministic)
        return agent.module.act(config, params, obs, key, deterministic=deterministic)

    return policy


def rollout(policy, env, env_params, num_envs: int, num_steps: int, key, keep, params_axes=None):
    """``num_steps`` steps of ``policy`` in ``num_envs`` vmapped envs, time-major.

    ``policy(obs, env_state, key) -> action`` acts on the batch (or a ``MemoryPolicy``, whose
    memory starts each episode afresh); ``keep(obs, action, reward, terminated, truncated,
    info)`` says what to stack of each step (``obs`` is the observation the action answers);
    ``params_axes`` are ``env_params``' vmap axes when they differ per env.
    """
    if not isinstance(policy, MemoryPolicy):
        act = policy
        policy = MemoryPolicy(lambda _: (), lambda m, obs, first, s, k: (m, act(obs, s, k)))
    reset = jax.vmap(env.reset, in_axes=(0, params_axes), axis_name=ENV_AXIS)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, params_axes), axis_name=ENV_AXIS)
    key, reset_key = jax.random.split(key)
    obs, env_state = reset(jax.random.split(reset_key, num_envs), env_params)
    start = (obs, env_state, policy.initial(num_envs), jnp.ones(num_envs, bool))

    def one_step(carry, key):
        obs, env_state, memory, first = carry
        action_key, step_key = jax.random.split(key)
        memory, action = policy.step(memory, obs, first, env_state, action_key)
        next_obs, env_state, reward, terminated, truncated, info = step(
            jax.random.split(step_key, num_envs), env_state, action, env_params
        )
        done = jnp.logical_or(terminated, truncated)
        kept = keep(obs, action, reward, terminated, truncated, info)
        return (next_obs, env_state, memory, done), kept

    return jax.lax.scan(one_step, start, jax.random.split(key, num_steps))[1]


def first_episode_returns(policy, env, env_params, num_envs: int, key, params_axes=None):
    """The return of the first episode of each of ``num_envs`` vmapped envs, (num_envs,); 0
    for an env whose first episode does not end within ``max_steps_in_episode`` steps."""

    def keep(obs, action, reward, terminated, truncated, info):
        return info["returned_episode"], info["returned_episode_returns"]

    num_steps = int(np.max(env_params.max_steps_in_episode))
    ended, returns = rollout(policy, env, env_params, num_envs, num_steps, key, keep, params_axes)
    first = jnp.argmax(ended, axis=0)
    returns = jnp.take_along_axis(returns, first[None], axis=0)[0]
    return jnp.where(ended.any(0), returns, 0.0)


def episode_params(env, env_params, episodes: int):
    """(env params, their vmap axes, number of envs): each evaluation task of a goal-conditioned
    env ``episodes`` times, else ``episodes`` envs with the same params."""
    num_tasks = getattr(env, "num_tasks", None)
    if num_tasks is None:
        return env_params, None, episodes
    tasks = np.repeat(np.arange(1, num_tasks + 1), episodes)
    axes = jax.tree.map(lambda _: None, env_params).replace(task_id=0)
    return env_params.replace(task_id=jnp.asarray(tasks)), axes, len(tasks)


def task_means(returns, env) -> np.ndarray:
    """Per-task means, (..., num_tasks), of returns (..., num_tasks x episodes) laid out as
    ``episode_params`` lays out a goal-conditioned env's evaluation episodes: task by task."""
    returns = np.asarray(returns)
    return returns.reshape(*returns.shape[:-1], env.num_tasks, -1).mean(axis=-1)


def evaluate_policy(policy, env, env_params, episodes: int, key):
    """Returns of ``episodes`` episodes of ``policy`` (per task, for goal-conditioned envs,
    whose returns are successes)."""
    env_params, axes, num_envs = episode_params(env, env_params, episodes)
    return first_episode_returns(policy, env, env_params, num_envs, key, axes)
