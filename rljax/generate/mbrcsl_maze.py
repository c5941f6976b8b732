"""MBRCSL's stitching dataset on its point maze, generated in JAX (D4RL layout).

Zhou et al., "Free from Bellman Completeness: Trajectory Stitching via Model-based
Return-conditioned Supervised Learning", ICLR 2024 (zhaoyizhou1123/mbrcsl:
``envs/pointmaze/config/maze_default.json``, ``samplers/maze_sampler.py``): 1000 trajectories
of 200 steps from the start cell (1, 2) of the 4 x 6 maze (``rljax.envs.maze``'s ``mbrcsl``
layout), rewarded by gymnasium-robotics' dense reward toward the goal cell (2, 4), in four groups
of 250 (``GROUPS``): two go to the middle cell (2, 2) and stay there; one detours through (1, 1)
and (2, 1) to the goal and stays; one detours to the goal and then acts uniformly at random. The
short way is down to (2, 2), then right: no episode takes it, and none joins its first half to
its second, so a policy that reaches the goal the short way has stitched the two groups.

Here, in ``rljax/PointMaze-mbrcsl`` with ``task_id=1, dense_reward=True,
terminate_at_goal=False`` (the authors' data ignores termination; episodes end in a timeout
after 200 steps):
* the point is rljax's (0.2 per step, 20 steps a cell, observations xy); the authors' is
  gymnasium's MuJoCo ball, with velocity in its observation;
* the controller heads for its current waypoint (a cell centre; the episode's goal last) with the
  maze oracle's action plus Gaussian noise of std ``noise`` (0.5 as rljax's OGBench point data),
  clipped to [-1, 1], and moves to the next waypoint within the goal radius (1.0); the authors'
  is gymnasium's noise-free PD waypoint controller on a ball with momentum.

Stored references for normalized scores: ``ref_min_score`` the mean return of uniform random
actions, ``ref_max_score`` the noise-free oracle's on the short way, each over
``REFERENCE_EPISODES`` episodes of the env's start and goal noise. The metadata also records
each group's mean and best return.
"""

import functools
import importlib.metadata
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rljax.data import MBRCSL_MAZE, prepare_outputs
from rljax.data.d4rl import write_d4rl
from rljax.envs import maze
from rljax.generate.d4rl import streams_to_rows

ENV = {"name": "rljax/PointMaze-mbrcsl", "task_id": 1, "dense_reward": True,
       "terminate_at_goal": False}  # fmt: skip
GROUPS = {  # name -> (waypoint cells before the last target, episodes of 1000, random at goal)
    "to the middle": ((), 500, False),
    "detour": (((1, 1), (2, 1)), 250, False),
    "detour, then random": (((1, 1), (2, 1)), 250, True),
}
MIDDLE = (2, 2)  # the target of "to the middle"; the detours' last target is the goal
REFERENCE_EPISODES = 1000


def make_env() -> tuple[maze.PointMaze, maze.EnvParams]:
    """The unwrapped maze and the params of ``ENV``."""
    env = maze.PointMaze("mbrcsl")
    params = env.default_params.replace(task_id=1, dense_reward=True, terminate_at_goal=False)
    return env, params


def _targets(env, waypoints: tuple, to_goal: bool, goal: jax.Array) -> jax.Array:
    """(3, 2): the waypoints' centres, then the last target repeated."""
    centre = lambda cell: jnp.asarray(env.centres[cell[0] * env.cols + cell[1]])  # noqa: E731
    points = [centre(c) for c in waypoints] + [goal if to_goal else centre(MIDDLE)]
    return jnp.stack(points + [points[-1]] * (3 - len(points)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _episodes(waypoints, to_goal: bool, random_at_goal: bool, episodes: int, noise, key):
    """One group's episodes: rows (episodes, 200, ...)."""
    env, params = make_env()
    steps = int(params.max_steps_in_episode)
    last = len(waypoints)

    def episode(key):
        reset_key, steps_key = jax.random.split(key)
        obs, state = env.reset_env(reset_key, params)
        targets = _targets(env, waypoints, to_goal, state.goal)

        def step(carry, key):
            obs, state, index, arrived = carry
            noise_key, random_key = jax.random.split(key)
            target = targets[index]
            action = env.oracle_action(state.pos, target)
            action = jnp.clip(action + noise * jax.random.normal(noise_key, (2,)), -1.0, 1.0)
            uniform = jax.random.uniform(random_key, (2,), minval=-1.0, maxval=1.0)
            action = jnp.where(random_at_goal & arrived, uniform, action)
            next_obs, state, reward, _, _ = env.step_env(key, state, action, params)
            near = jnp.linalg.norm(state.pos - target) <= params.goal_radius
            arrived = arrived | (near & (index == last))
            index = jnp.where(near & (index < last), index + 1, index)
            row = (obs, action, reward, next_obs)
            return (next_obs, state, index, arrived), row

        carry = (obs, state, jnp.int32(0), jnp.bool_(False))
        _, rows = jax.lax.scan(step, carry, jax.random.split(steps_key, steps))
        return rows

    return jax.vmap(episode)(jax.random.split(key, episodes))


def _reference_returns(key) -> tuple[float, float]:
    """Mean returns of uniform random actions and of the noise-free oracle toward the goal."""
    env, params = make_env()
    steps = int(params.max_steps_in_episode)

    def episode(key, oracle: bool):
        reset_key, steps_key = jax.random.split(key)
        _, state = env.reset_env(reset_key, params)

        def step(state, key):
            uniform = jax.random.uniform(key, (2,), minval=-1.0, maxval=1.0)
            action = jnp.where(oracle, env.oracle_action(state.pos, state.goal), uniform)
            _, state, reward, _, _ = env.step_env(key, state, action, params)
            return state, reward

        return jax.lax.scan(step, state, jax.random.split(steps_key, steps))[1].sum()

    keys = jax.random.split(key, REFERENCE_EPISODES)
    random_returns = jax.vmap(episode, (0, None))(keys, False)
    oracle_returns = jax.vmap(episode, (0, None))(keys, True)
    return float(random_returns.mean()), float(oracle_returns.mean())


def rows(noise: float = 0.5, seed: int = 0, episodes: int = 1000) -> tuple[dict, dict]:
    """(D4RL rows, per-group return statistics) of ``episodes`` trajectories split among the
    groups in the authors' proportions (module docstring)."""
    if episodes < len(GROUPS):
        raise ValueError(f"episodes={episodes} must be >= {len(GROUPS)}, one per group")
    key = jax.random.PRNGKey(seed)
    parts, groups = [], {}
    sizes = [max(share * episodes // 1000, 1) for _, share, _ in GROUPS.values()]
    sizes[0] = episodes - sum(sizes[1:])
    for index, ((name, (waypoints, _, random_at_goal)), size) in enumerate(
        zip(GROUPS.items(), sizes, strict=True)
    ):
        group_key = jax.random.fold_in(key, index)
        part = jax.device_get(
            _episodes(waypoints, bool(waypoints), random_at_goal, size, noise, group_key)
        )
        returns = part[2].sum(-1)
        groups[name] = {"episodes": size, "mean_return": float(returns.mean()),
                        "best_return": float(returns.max())}  # fmt: skip
        parts.append(part)
    obs, actions, rewards, next_obs = (np.concatenate(x) for x in zip(*parts, strict=True))
    never = np.zeros(rewards.shape, bool)  # episodes never terminate; each ends in a timeout
    data = streams_to_rows({
        "observations": obs, "actions": actions, "rewards": rewards, "terminals": never,
        "timeouts": never, "next_observations": next_obs,
    })  # fmt: skip
    return data, groups


def path(out_dir) -> Path:
    return Path(out_dir) / f"{MBRCSL_MAZE}.hdf5"


def write(out_dir, noise: float = 0.5, seed: int = 0, episodes: int = 1000, force=False) -> Path:
    """Generates and writes ``path(out_dir)``; an existing file is refused
    (``rljax.data.DatasetExists``) unless ``force``."""
    target = path(out_dir)
    prepare_outputs([target], force)
    start = time.perf_counter()
    data, groups = rows(noise, seed, episodes)
    random_return, oracle_return = _reference_returns(jax.random.PRNGKey(seed + 1))
    metadata = {
        "env": ENV,
        "kind": "mbrcsl",
        "policy": "waypoint controller plus Gaussian noise, four groups (module docstring)",
        "noise": noise,
        "seed": seed,
        "episodes": episodes,
        "groups": groups,
        "transitions": int(len(data["rewards"])),
        "ref_min_score": random_return,
        "ref_max_score": oracle_return,
        "seconds": round(time.perf_counter() - start, 3),
        "rljax_version": importlib.metadata.version("rljax"),
    }
    write_d4rl(target, data, metadata)
    return target
