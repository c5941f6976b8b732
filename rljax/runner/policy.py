"""Trained agents back from a run directory alone: ``load_policy``, ``evaluate_run`` and
``export_policy``.

A policy acts on the env's raw observations and returns actions in the env's own units: it
applies the observation normalization saved with the run, frozen, then the agent's ``act``,
then the action wrappers' maps (``rljax.envs.wrappers.env_action``: [-1, 1] actions scaled
onto the bounds, clipped to them). Evaluation runs on the env without normalization wrappers,
so returns are in the env's own reward units. Nothing here reads the training dataset.
"""

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax

from rljax import envs
from rljax.envs.wrappers import NormalizeObservationState, env_action, find_state, normalize
from rljax.runner import evaluation
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.errors import RunError
from rljax.runner.phases import STATE_STRUCTURE
from rljax.runner.program import Program, build_program
from rljax.runner.spec import load_run


def restore(run_dir) -> tuple[Program, object, int]:
    """The run's program (without its dataset), its newest readable checkpointed train state
    (all members) and that state's update. A checkpoint that fails its checksum or cannot be
    read is passed over with a warning for the one before it; the run directory is left as is."""
    run_dir = Path(run_dir)
    program = build_program(load_run(run_dir), load_dataset=False)
    if not (run_dir / "checkpoints").is_dir() or not (run_dir / STATE_STRUCTURE).exists():
        raise RunError(f"{run_dir} has no finished checkpoint yet")
    phases = (False, True)[: len(program.phases)]
    files = {later: run_dir / program.structure_file(later) for later in phases}
    layouts = {
        later: program.abstract(pickle.loads(file.read_bytes()))
        for later, file in files.items()
        if file.exists()
    }
    checkpoints = Checkpoints(run_dir / "checkpoints", read_only=True)
    try:
        if checkpoints.latest_step() is None:
            raise RunError(f"{run_dir} has no finished checkpoint yet")
        step, state = checkpoints.restore_latest(lambda step: layouts[program.later_after(step)])
    finally:
        checkpoints.close()
    if step is None:
        raise RunError(
            f"{run_dir} has no readable checkpoint: every saved step failed its checksum or "
            "could not be read (see the warnings above)"
        )
    return program, state, step


def _observation_moments(state):
    """Per-member normalization moments, (members, ...), or None if the run had none."""
    found = find_state(getattr(state, "env_state", None), NormalizeObservationState)
    return None if found is None else jax.tree.map(lambda x: x[:, 0], found.moments)


class RecurrentPolicy(NamedTuple):
    """A trained recurrent member: ``step(memory, obs, first, rng) -> (memory, action)``, with
    ``first`` true where obs starts an episode, from ``initial(batch_shape=())``."""

    initial: Callable
    step: Callable


def member_policy(program: Program, state, member: int, deterministic: bool):
    """``policy(obs, rng)`` of one member, or ``policy(obs, goal, rng)`` for a goal-conditioned
    agent: raw observations in, the env's own action units out (unbatched or batched). For a
    recurrent agent, a ``RecurrentPolicy`` (its step not jitted)."""
    if not 0 <= member < len(program.members):
        raise RunError(f"member={member} is out of range: the run has {len(program.members)}")
    config, params = jax.tree.map(lambda x: x[member], (program.stacked, state.params))
    moments = _observation_moments(state)
    moments = None if moments is None else jax.tree.map(lambda x: x[member], moments)
    module, env, env_params = program.agent.module, program.env, program.env_params

    def normalized(obs):
        return obs if moments is None else normalize(obs, moments)

    if program.agent.recurrent:

        def step(memory, obs, first, rng):
            memory, action = module.act_step(
                config, params, memory, normalized(obs), first, rng, deterministic
            )
            return memory, env_action(env, action, env_params)

        return RecurrentPolicy(
            lambda batch_shape=(): module.initial_hidden(config, batch_shape), step
        )

    def policy(obs, *goal_and_rng):
        action = module.act(
            config, params, normalized(obs), *goal_and_rng, deterministic=deterministic
        )
        return env_action(env, action, env_params)

    return policy


def load_policy(run_dir, member: int = 0, deterministic: bool = False):
    """The jitted ``policy(obs, rng) -> action`` of one trained member (``policy(obs, goal,
    rng)`` for a goal-conditioned agent; a ``RecurrentPolicy`` with a jitted step for a
    recurrent one), from the run directory alone."""
    program, state, _ = restore(run_dir)
    policy = member_policy(program, state, member, deterministic)
    if isinstance(policy, RecurrentPolicy):
        return policy._replace(step=jax.jit(policy.step))
    return jax.jit(policy)


def export_policy(run_dir, out, member: int = 0, deterministic: bool = True) -> dict:
    """Writes ``out``, a serialized ``jax.export`` of the policy for one observation (and goal)
    and a ``jax.random.PRNGKey``, and ``out.json``, its signature. Running it needs jax alone:
    ``jax.export.deserialize(out.read_bytes()).call(obs, key)``."""
    program, state, step = restore(run_dir)
    if program.agent.recurrent:
        raise RunError(
            f"{program.spec.algo} is recurrent and export_policy writes memoryless policies; "
            "use rljax.load_policy, whose step carries the memory"
        )
    policy = member_policy(program, state, member, deterministic)
    obs = jax.eval_shape(program.env.reset, jax.random.PRNGKey(0), program.env_params)[0]
    key = jax.eval_shape(jax.random.PRNGKey, 0)  # a raw uint32 key, as PRNGKey makes
    goal = (obs,) if program.agent.goal_conditioned else ()
    exported = jax.export.export(jax.jit(policy))(obs, *goal, key)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exported.serialize())
    signature = {
        "run_dir": str(run_dir),
        "algo": program.spec.algo,
        "env": program.spec.env,
        "member": member,
        "update": step,
        "deterministic": deterministic,
        "inputs": [
            {"name": name, "shape": list(x.shape), "dtype": str(x.dtype)}
            for name, x in zip(
                ["obs", *(["goal"] * len(goal)), "key"], [obs, *goal, key], strict=True
            )
        ],
        "outputs": [
            {"name": "action", "shape": list(a.shape), "dtype": str(a.dtype)}
            for a in exported.out_avals
        ],
        "call": "jax.export.deserialize(open(OUT, 'rb').read()).call(obs, "
        + ("goal, " if goal else "")
        + "jax.random.PRNGKey(seed))",
    }
    Path(f"{out}.json").write_text(json.dumps(signature, indent=2))
    return signature


def evaluate_run(run_dir, episodes: int = 16, deterministic: bool = False, seed: int = 0):
    """Returns of ``episodes`` fresh episodes per member (per task, for goal-conditioned envs,
    laid out task by task: ``evaluation.task_means``), (members, episodes x tasks), all in one
    jit; with the program and the checkpoint's update."""
    if episodes < 1:
        raise RunError(f"episodes={episodes} is out of range: it must be >= 1")
    program, state, step = restore(run_dir)
    env, env_params = envs.make(**envs.without_normalization(program.spec.env))
    agent = program.agent

    def member_returns(config, params, moments, key):
        # The agent's wrapper, given its trained params (stock_dqn chooses its initial stock).
        member_env, member_params = (env, env_params)
        if agent.wraps_env:
            member_env, member_params = agent.module.wrap_env(config, env, env_params, params)
        policy = evaluation.agent_policy(agent, config, params, deterministic, moments)
        return evaluation.evaluate_policy(policy, member_env, member_params, episodes, key)

    keys = jax.random.split(jax.random.PRNGKey(seed), len(program.members))
    moments = _observation_moments(state)
    run = jax.jit(jax.vmap(member_returns, in_axes=(0, 0, None if moments is None else 0, 0)))
    return run(program.stacked, state.params, moments, keys), program, step
