"""Trained agents back from a run directory: ``load_policy`` and vectorized evaluation.

A policy acts on raw observations: it applies the observation normalization saved with the
run, frozen, and evaluation runs on the environment without normalization wrappers, so returns
are in the environment's own reward units.
"""

from pathlib import Path

import jax
import jax.numpy as jnp

from rljax import envs
from rljax.envs.wrappers import ENV_AXIS, NormalizeObservationState, find_state, normalize
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.run import Program, RunError, RunSpec, build


def restore(run_dir) -> tuple[Program, object, int]:
    """The run's program, its latest checkpointed train state (all members), and its update."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise RunError(f"{run_dir} is not a run directory (it has no config.yaml)")
    program = build(RunSpec.load(run_dir / "config.yaml"))
    checkpoints = Checkpoints(run_dir / "checkpoints")
    step = checkpoints.latest_step()
    if step is None:
        raise RunError(f"{run_dir} has no finished checkpoint yet")
    shapes = jax.eval_shape(program.init_fn(), program.stacked, program.keys)
    state = checkpoints.restore(step, program.abstract(shapes))
    checkpoints.close()
    return program, state, step


def _observation_moments(state):
    """Per-member normalization moments, (members, ...), or None if the run had none."""
    found = find_state(getattr(state, "env_state", None), NormalizeObservationState)
    return None if found is None else jax.tree.map(lambda x: x[:, 0], found.moments)


def _member_policy(program: Program, deterministic: bool):
    """policy(config, params, moments, obs, rng) -> action, for one member."""

    def policy(config, params, moments, obs, rng):
        if moments is not None:
            obs = normalize(obs, moments)
        return program.agent.act(config, params, obs, rng, deterministic=deterministic)

    return policy


def load_policy(run_dir, member: int = 0, deterministic: bool = False):
    """``policy(obs, rng) -> action`` of one trained member, on raw observations."""
    program, state, _ = restore(run_dir)
    if not 0 <= member < len(program.members):
        raise RunError(f"member={member} is out of range: the run has {len(program.members)}")
    pick = jax.tree.map(lambda x: x[member], (program.stacked, state.params))
    moments = _observation_moments(state)
    moments = None if moments is None else jax.tree.map(lambda x: x[member], moments)
    policy = _member_policy(program, deterministic)
    return jax.jit(lambda obs, rng: policy(pick[0], pick[1], moments, obs, rng))


def evaluate(run_dir, episodes: int = 16, deterministic: bool = False, seed: int = 0):
    """Returns of ``episodes`` fresh episodes per member, (members, episodes), all in one jit."""
    if episodes < 1:
        raise RunError(f"episodes={episodes} is out of range: it must be >= 1")
    program, state, step = restore(run_dir)
    options = {k: v for k, v in program.spec.env.items() if k not in ("name", "normalize_obs")}
    options.pop("normalize_reward", None)
    env, env_params = envs.make(program.spec.env["name"], **options)
    policy = _member_policy(program, deterministic)
    wrap_env = getattr(program.agent, "wrap_env", None)

    def member_returns(config, params, moments, key):
        # The agent's wrapper, given its trained params (stock_dqn chooses its initial stock).
        member_env, member_params = (env, env_params)
        if wrap_env is not None:
            member_env, member_params = wrap_env(config, env, env_params, params)
        reset = jax.vmap(member_env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
        step_env = jax.vmap(member_env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)
        key, reset_key = jax.random.split(key)
        obs, env_state = reset(jax.random.split(reset_key, episodes), member_params)
        first = (obs, env_state, jnp.zeros(episodes), jnp.zeros(episodes, bool))

        def one_step(carry, key):
            obs, env_state, returns, finished = carry
            action_key, step_key = jax.random.split(key)
            action = policy(config, params, moments, obs, action_key)
            obs, env_state, _, _, _, info = step_env(
                jax.random.split(step_key, episodes), env_state, action, member_params
            )
            ended = info["returned_episode"] & ~finished
            returns = jnp.where(ended, info["returned_episode_returns"], returns)
            return (obs, env_state, returns, finished | info["returned_episode"]), None

        keys = jax.random.split(key, env_params.max_steps_in_episode)
        (_, _, returns, _), _ = jax.lax.scan(one_step, first, keys)
        return returns

    keys = jax.random.split(jax.random.PRNGKey(seed), len(program.members))
    moments = _observation_moments(state)
    run = jax.jit(jax.vmap(member_returns, in_axes=(0, 0, None if moments is None else 0, 0)))
    return run(program.stacked, state.params, moments, keys), program, step
