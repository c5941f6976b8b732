"""Trained agents back from a run directory: ``load_policy`` and vectorized evaluation.

A policy acts on raw observations: it applies the observation normalization saved with the
run, frozen, and evaluation runs on the environment without normalization wrappers, so returns
are in the environment's own reward units.
"""

from pathlib import Path

import jax

from rljax.envs.wrappers import NormalizeObservationState, find_state
from rljax.runner import evaluation
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.evaluation import agent_policy, is_goal_conditioned, unnormalized_env
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


def load_policy(run_dir, member: int = 0, deterministic: bool = False):
    """``policy(obs, rng) -> action`` of one trained member, on raw observations;
    ``policy(obs, goal, rng)`` for a goal-conditioned agent."""
    program, state, _ = restore(run_dir)
    if not 0 <= member < len(program.members):
        raise RunError(f"member={member} is out of range: the run has {len(program.members)}")
    config, params = jax.tree.map(lambda x: x[member], (program.stacked, state.params))
    moments = _observation_moments(state)
    moments = None if moments is None else jax.tree.map(lambda x: x[member], moments)
    if is_goal_conditioned(program.agent):
        act = program.agent.act
        return jax.jit(lambda obs, goal, rng: act(config, params, obs, goal, rng, deterministic))
    policy = agent_policy(program.agent, config, params, deterministic, moments)
    return jax.jit(lambda obs, rng: policy(obs, None, rng))


def evaluate(run_dir, episodes: int = 16, deterministic: bool = False, seed: int = 0):
    """Returns of ``episodes`` fresh episodes per member (per task, for goal-conditioned envs),
    (members, episodes x tasks), all in one jit."""
    if episodes < 1:
        raise RunError(f"episodes={episodes} is out of range: it must be >= 1")
    program, state, step = restore(run_dir)
    env, env_params = unnormalized_env(program.spec.env)
    wrap_env = getattr(program.agent, "wrap_env", None)

    def member_returns(config, params, moments, key):
        # The agent's wrapper, given its trained params (stock_dqn chooses its initial stock).
        member_env, member_params = (env, env_params)
        if wrap_env is not None:
            member_env, member_params = wrap_env(config, env, env_params, params)
        return evaluation.evaluate(
            program.agent, config, params, member_env, member_params, episodes, key,
            deterministic, moments,
        )  # fmt: skip

    keys = jax.random.split(jax.random.PRNGKey(seed), len(program.members))
    moments = _observation_moments(state)
    run = jax.jit(jax.vmap(member_returns, in_axes=(0, 0, None if moments is None else 0, 0)))
    return run(program.stacked, state.params, moments, keys), program, step
