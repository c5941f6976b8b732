"""Offline datasets generated with rljax's own agents, in the D4RL layout.

As D4RL (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven Reinforcement Learning", Sec. 5)
made its Gym-MuJoCo datasets, from one SAC run per environment:

* ``random``: uniform actions in [-1, 1] (D4RL rolled out a randomly initialized policy; uniform
  actions are what ``ref_min_score`` measures, so the random data scores about 0).
* ``expert``: the fully trained behaviour policy.
* ``medium``: the first snapshot whose evaluation return reaches a third of the way from the
  random to the expert return (D4RL: "about one third of expert performance").
* ``medium-replay``: everything the behaviour agent stepped through until that snapshot, its
  replay buffer, warm-up included.
* ``medium-expert``: the medium and expert datasets concatenated.

The medium and expert datasets sample the stochastic policy, as D4RL sampled its SAC policies;
evaluations (the snapshot choice, the references) use its deterministic mode. Actions lie in
[-1, 1] (gymnax's continuous envs act through ``unit_actions``; brax acts in [-1, 1] already).
Observations are raw: a behaviour agent trained on normalized observations acts through its
frozen moments, and ``medium-replay`` is recorded below the normalization wrapper.

Rows run episode after episode (D4RL's layout): each rollout env's stream is contiguous, and the
last transition of each stream is marked as a timeout unless it terminated. Metadata travels in
the file (``rljax.data.d4rl``), with the reference returns under Minari's keys
``ref_min_score`` (the random policy's mean return) and ``ref_max_score`` (the expert's).
"""

import dataclasses
import importlib.metadata
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rljax import agents, envs
from rljax.data import D4RL_KINDS, data_dir, episode_returns, prepare_outputs, write_d4rl
from rljax.envs.wrappers import GymnaxWrapper, NormalizeObservationState, find_state
from rljax.generate.recipes import RECIPES, Recipe, data_env, recipe_for
from rljax.runner import config as config_lib
from rljax.runner import evaluation
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

KINDS = D4RL_KINDS
__all__ = [
    "KINDS",
    "RECIPES",
    "BehaviourFailed",
    "behaviour",
    "generate_all",
    "generate_dataset",
    "paths",
]


class BehaviourFailed(RuntimeError):
    """The behaviour agent ended no better than the random policy: no scale for medium."""


# --- Recording the behaviour agent's own steps (medium-replay) ---


@struct.dataclass
class RecorderState:
    env_state: Any
    obs: jax.Array  # the observation the next action answers
    data: dict  # (length, ...) arrays: this env's last `length` transitions, in a ring
    steps: jax.Array


class Recorder(GymnaxWrapper):
    """Keeps each env's last ``length`` transitions in its state, in D4RL's fields.

    It sits below the normalization wrappers, so it records raw observations and rewards, and
    the actions the agent chose, in [-1, 1].
    """

    def __init__(self, env, length: int):
        super().__init__(env)
        self.length = length

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        action = jnp.zeros(self._env.action_space(params).shape, jnp.float32)
        row = _row(obs, action, jnp.zeros(()), False, False, obs)
        data = jax.tree.map(lambda x: jnp.zeros((self.length, *x.shape), x.dtype), row)
        return obs, RecorderState(env_state, obs, data, jnp.zeros((), jnp.int32))

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        row = _row(state.obs, action, reward, terminated, truncated, info["final_observation"])
        slot = state.steps % self.length
        data = jax.tree.map(lambda d, x: d.at[slot].set(x), state.data, row)
        state = RecorderState(env_state, obs, data, state.steps + 1)
        return obs, state, reward, terminated, truncated, info


def _row(obs, action, reward, terminated, truncated, next_obs) -> dict:
    """One transition; a step that both terminates and truncates counts as terminated."""
    terminated = jnp.asarray(terminated, bool)
    return {
        "observations": obs.astype(jnp.float32),
        "actions": jnp.clip(action, -1.0, 1.0).astype(jnp.float32),
        "rewards": jnp.asarray(reward, jnp.float32),
        "terminals": terminated,
        "timeouts": jnp.asarray(truncated, bool) & ~terminated,
        "next_observations": next_obs.astype(jnp.float32),
    }


def streams_to_rows(streams: dict, num_transitions: int | None = None) -> dict:
    """(envs, steps, ...) streams to D4RL rows, each env's stream contiguous and ended.

    The last transition of each stream (and of the rows, when cut to ``num_transitions``)
    becomes a timeout unless it terminated: its successor row starts another stream.
    """
    envs, steps = streams["rewards"].shape[:2]
    rows = {k: np.asarray(v).reshape(envs * steps, *v.shape[2:]) for k, v in streams.items()}
    stream_end = (np.arange(envs * steps) % steps) == steps - 1
    if num_transitions is not None:
        rows = {k: v[:num_transitions] for k, v in rows.items()}
        stream_end = stream_end[:num_transitions]
        stream_end[-1] = True
    rows["timeouts"] = rows["timeouts"] | (stream_end & ~rows["terminals"])
    return rows


# --- Rollouts ---


def rollout(env, env_params, policy, num_transitions: int, key, num_envs: int) -> dict:
    """``num_transitions`` transitions of ``policy`` in ``num_envs`` vectorized envs, as D4RL rows.

    ``policy(obs, env_state, key) -> action`` acts on the batch (``rljax.runner.evaluation``'s
    convention); ``env`` acts in [-1, 1] and returns raw observations. The rows are numpy:
    observations, actions (clipped to [-1, 1]: what the env executed), rewards, terminals
    (terminated), timeouts (the time limit, and the end of each stream), next_observations
    (the true next observation, before any auto-reset), each env's stream contiguous.
    """
    if num_transitions < 1 or num_envs < 1:
        raise ValueError(f"num_transitions={num_transitions} and num_envs={num_envs} must be >= 1")
    steps = -(-num_transitions // num_envs)

    def clipped(obs, env_state, key):
        return jnp.clip(policy(obs, env_state, key), -1.0, 1.0)

    def keep(obs, action, reward, terminated, truncated, info):
        return _row(obs, action, reward, terminated, truncated, info["final_observation"])

    @jax.jit
    def run(key):
        rows = evaluation.rollout(clipped, env, env_params, num_envs, steps, key, keep)
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), rows)  # (envs, steps, ...)

    return streams_to_rows(jax.device_get(run(key)), num_transitions)


def uniform_policy(action_shape):
    """Uniform actions in [-1, 1]: the ``random`` kind's policy, and ``ref_min_score``'s."""

    def policy(obs, env_state, key):
        return jax.random.uniform(key, (obs.shape[0], *action_shape), minval=-1.0, maxval=1.0)

    return policy


# --- The behaviour agent ---


def medium_index(returns, random_return: float, expert_return: float) -> int:
    """The first snapshot whose return reaches random + (expert - random) / 3 (else the last)."""
    if not expert_return > random_return:
        raise BehaviourFailed(
            f"the behaviour agent's final return {expert_return:.1f} is not above the random "
            f"policy's {random_return:.1f}: train it longer or tune its recipe"
        )
    target = random_return + (expert_return - random_return) / 3
    reached = np.flatnonzero(np.asarray(returns) >= target)
    return int(reached[0]) if len(reached) else len(returns) - 1


@dataclasses.dataclass
class Behaviour:
    """What ``behaviour`` trained and recorded, on the host."""

    recipe: Recipe
    agent: agents.Declaration
    config: Any
    env_steps: list  # env steps after each chunk
    returns: list  # deterministic evaluation return after each chunk
    snapshots: list  # (params, observation moments or None) after each chunk
    random_return: float
    expert_return: float
    medium: int  # the medium snapshot's index
    replay: dict  # medium-replay rows
    seconds: float

    def policy(self, snapshot: int, deterministic: bool = False):
        params, moments = self.snapshots[snapshot]
        return evaluation.agent_policy(self.agent, self.config, params, deterministic, moments)


def _moments(env_state):
    """The (shared) normalization moments of the first member's envs, or None."""
    found = find_state(env_state, NormalizeObservationState)
    return None if found is None else jax.tree.map(lambda x: x[0, 0], found.moments)


def _check_recipe(recipe: Recipe, config, env, env_params) -> None:
    space = env.action_space(env_params)
    if not (np.all(np.asarray(space.low) == -1.0) and np.all(np.asarray(space.high) == 1.0)):
        raise ValueError(
            f"recipe env {recipe.env} acts in [{space.low}, {space.high}]; datasets store "
            "actions in [-1, 1]: add unit_actions=True to its env"
        )
    if config.num_updates % recipe.chunk_updates:
        raise ValueError(
            f"chunk_updates={recipe.chunk_updates} must divide the behaviour agent's "
            f"{config.num_updates} updates (total_timesteps // (num_envs * num_steps))"
        )
    if config.steps_per_update % config.num_envs:
        raise ValueError("the behaviour agent must step all of its num_envs envs equally")


def behaviour(recipe: Recipe, seed: int = 0, print_fn=print) -> Behaviour:
    """Trains the recipe's behaviour agent once through the runner, recording its run.

    After each chunk (the runner's ``on_chunk``): the deterministic policy's return on
    ``eval_episodes`` episodes (the same evaluation key every time, so snapshots are compared
    on the same episodes), a snapshot of params and frozen observation moments, and the
    transitions the Recorder kept. The medium snapshot is chosen after training, once the
    expert return is known. The run directory is temporary: the datasets are the product.
    """
    agent = agents.declaration(recipe.algo)
    config = config_lib.make_config(agent.module.Config, recipe.agent)
    raw_env, env_params = envs.make(**data_env(recipe))
    _check_recipe(recipe, config, raw_env, env_params)
    env_steps_per_chunk = recipe.chunk_updates * config.steps_per_update // config.num_envs
    eval_key, random_key, expert_key = jax.random.split(jax.random.PRNGKey(seed), 3)

    @jax.jit
    def deterministic_returns(params, moments, key):
        policy = evaluation.agent_policy(agent, config, params, True, moments)
        return evaluation.evaluate_policy(policy, raw_env, env_params, recipe.eval_episodes, key)

    env_steps, returns, snapshots, recordings = [], [], [], []

    def on_chunk(done, state):
        recorder = find_state(state.env_state, RecorderState)
        if int(recorder.steps[0, 0]) != done // recipe.chunk_updates * env_steps_per_chunk:
            raise RuntimeError(f"{recipe.algo} did not step each env {env_steps_per_chunk} times")
        recordings.append(jax.device_get(jax.tree.map(lambda x: x[0], recorder.data)))
        params = jax.tree.map(lambda x: x[0], state.params)
        snapshots.append(jax.device_get((params, _moments(state.env_state))))
        returns.append(float(deterministic_returns(*snapshots[-1], eval_key).mean()))
        env_steps.append(done * config.steps_per_update)

    spec = RunSpec(
        algo=recipe.algo, env=recipe.env, agent=recipe.agent, seed=seed,
        chunk_updates=recipe.chunk_updates,
    )  # fmt: skip

    def progress(line):  # the run directory is temporary: not worth naming
        if not line.startswith("results in "):
            print_fn(line)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rljax-behaviour-") as run_dir:
        train(
            spec, Path(run_dir) / "run", checkpoint_seconds=float("inf"), print_fn=progress,
            inner_wrapper=lambda env: Recorder(env, env_steps_per_chunk), on_chunk=on_chunk,
        )  # fmt: skip

    # The references: reference_evals fresh evaluations of the expert and of uniform actions.
    random_policy = uniform_policy(raw_env.action_space(env_params).shape)
    random_returns = jax.jit(
        lambda key: evaluation.evaluate_policy(
            random_policy, raw_env, env_params, recipe.eval_episodes, key
        )
    )
    n = recipe.reference_evals
    expert, random = [], []
    for e, r in zip(jax.random.split(expert_key, n), jax.random.split(random_key, n), strict=True):
        expert.append(deterministic_returns(*snapshots[-1], e).mean())
        random.append(random_returns(r).mean())
    expert_return, random_return = float(np.mean(expert)), float(np.mean(random))
    medium = medium_index(returns, random_return, expert_return)
    streams = {
        k: np.concatenate([r[k] for r in recordings[: medium + 1]], axis=1) for k in recordings[0]
    }
    return Behaviour(
        recipe=recipe,
        agent=agent,
        config=config,
        env_steps=env_steps,
        returns=returns,
        snapshots=snapshots,
        random_return=random_return,
        expert_return=expert_return,
        medium=medium,
        replay=streams_to_rows(streams),
        seconds=time.perf_counter() - start,
    )


# --- Datasets ---


def _complete_returns(rows: dict, max_steps: int) -> np.ndarray:
    """Returns of the episodes that ended in the env (terminated, or at the time limit), not
    those cut short by the end of a stream."""
    terminals, timeouts = rows["terminals"].astype(bool), rows["timeouts"].astype(bool)
    returns = episode_returns(rows["rewards"], terminals, timeouts)
    ends = np.flatnonzero(terminals | timeouts)
    lengths = np.diff(ends, prepend=-1)
    return returns[terminals[ends] | (lengths >= max_steps)]


def _concatenate(*parts: dict) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _rollout_kind(b: Behaviour, kind: str, seed: int) -> dict:
    recipe = b.recipe
    env, env_params = envs.make(**data_env(recipe))
    policies = {
        "random": uniform_policy(env.action_space(env_params).shape),
        "medium": b.policy(b.medium),
        "expert": b.policy(len(b.snapshots) - 1),
    }
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1 + KINDS.index(kind))
    return rollout(env, env_params, policies[kind], recipe.transitions, key, recipe.rollout_envs)


def _datasets(b: Behaviour, kinds, seed: int):
    """(kind, rows, rollout seconds) for each kind; medium and expert are rolled out once."""
    made = {}

    def make(kind):
        if kind not in made:
            start = time.perf_counter()
            if kind == "medium-replay":
                made[kind] = (b.replay, 0.0)
            elif kind == "medium-expert":
                (medium, s1), (expert, s2) = make("medium"), make("expert")
                made[kind] = (_concatenate(medium, expert), s1 + s2)
            else:
                made[kind] = (_rollout_kind(b, kind, seed), time.perf_counter() - start)
        return made[kind]

    for kind in kinds:
        yield (kind, *make(kind))


def _metadata(b: Behaviour, kind: str, seed: int, rows: dict, rollout_seconds: float) -> dict:
    _, env_params = envs.make(**data_env(b.recipe))
    returns = _complete_returns(rows, int(env_params.max_steps_in_episode))
    stats = {"mean": None, "std": None, "min": None, "max": None}
    if len(returns):
        stats = {f: float(getattr(np, f)(returns)) for f in stats}
    policy = {
        "random": "uniform actions in [-1, 1]",
        "medium": f"stochastic {b.recipe.algo} snapshot after {b.env_steps[b.medium]} env steps",
        "expert": f"stochastic {b.recipe.algo} after {b.env_steps[-1]} env steps",
        "medium-replay": f"{b.recipe.algo}'s own steps until {b.env_steps[b.medium]} env steps",
        "medium-expert": "the medium dataset, then the expert dataset",
    }[kind]
    return {
        "env": data_env(b.recipe),
        "kind": kind,
        "policy": policy,
        "seed": seed,
        "behaviour": {
            "algo": b.recipe.algo,
            "config": config_lib.as_dict(b.config),
            "env": b.recipe.env,
            "env_steps": b.env_steps[-1],
            "medium_env_steps": b.env_steps[b.medium],
            "medium_return": b.returns[b.medium],
            "expert_return": b.expert_return,
        },
        "returns": stats,
        "transitions": int(len(rows["rewards"])),
        "episodes": int(len(returns)),
        "ref_min_score": b.random_return,
        "ref_max_score": b.expert_return,
        "seconds": {"behaviour": b.seconds, "rollout": rollout_seconds},
        "rljax_version": importlib.metadata.version("rljax"),
    }


def _check_kinds(kinds) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown dataset kind(s) {unknown}; kinds: {', '.join(KINDS)}")


def generate_dataset(
    env_name: str, kind: str, *, seed: int = 0, recipe: Recipe | None = None, print_fn=print
) -> tuple[dict, dict]:
    """One dataset's D4RL rows and metadata; trains the behaviour agent (even for ``random``:
    the metadata needs the expert's reference return)."""
    _check_kinds([kind])
    recipe = recipe or recipe_for(env_name)
    b = behaviour(recipe, seed, print_fn)
    ((_, rows, seconds),) = _datasets(b, [kind], seed)
    return rows, _metadata(b, kind, seed, rows, seconds)


def paths(
    env_name: str, out_dir=None, kinds=KINDS, *, recipe: Recipe | None = None
) -> dict[str, Path]:
    """kind -> the file ``generate_all`` writes it to: ``<out_dir>/<tag>-<kind>.hdf5``."""
    _check_kinds(kinds)
    recipe = recipe or recipe_for(env_name)
    out_dir = data_dir() if out_dir is None else Path(out_dir)
    return {kind: out_dir / f"{recipe.tag}-{kind}.hdf5" for kind in kinds}


def generate_all(
    env_name: str,
    out_dir=None,
    kinds=KINDS,
    seed: int = 0,
    *,
    recipe: Recipe | None = None,
    print_fn=print,
    force: bool = False,
) -> dict[str, tuple[Path, dict]]:
    """Trains the behaviour agent once and writes each kind to ``paths(...)[kind]``
    (``out_dir`` defaults to ``data_dir()``); returns kind -> (path, metadata).

    Before training: existing files are refused (``rljax.data.DatasetExists``, listing them)
    unless ``force``, and so is an ``out_dir`` that cannot be made or written
    (``rljax.data.UnwritableOutput``), so neither is found out after hours of training."""
    files = paths(env_name, out_dir, kinds, recipe=recipe)
    prepare_outputs(files.values(), force)
    recipe = recipe or recipe_for(env_name)
    print_fn(f"training {recipe.algo} on {recipe.env['name']} (seed {seed})")
    b = behaviour(recipe, seed, print_fn)
    print_fn(
        f"random {b.random_return:.1f}, expert {b.expert_return:.1f}, medium snapshot at "
        f"{b.env_steps[b.medium]} env steps (return {b.returns[b.medium]:.1f}); {b.seconds:.0f}s"
    )
    written = {}
    for kind, rows, seconds in _datasets(b, kinds, seed):
        metadata = _metadata(b, kind, seed, rows, seconds)
        path = files[kind]
        write_d4rl(path, rows, metadata)
        print_fn(f"wrote {path}: {metadata['transitions']} transitions")
        written[kind] = (path, metadata)
    return written
