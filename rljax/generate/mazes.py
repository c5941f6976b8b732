"""OGBench's maze datasets ("navigate", "stitch"), generated in JAX for ``rljax.envs.maze``.

As OGBench's ``data_gen_scripts/generate_locomaze.py`` (Park et al. 2025), with the point's
analytic expert: every step the expert heads for the oracle's subgoal
(``env.oracle_action``, the unit direction to the next cell on a shortest path), plus Gaussian
noise (sigma 0.5 for the point) and clipping to [-1, 1]. GridMaze has no Gaussian: there
``noise`` is the probability of a uniformly random move instead of the oracle's (default 0.25).
Episodes run with ``terminate_at_goal=False`` for a fixed number of steps:

* navigate: start anywhere (uniform over free cells, plus the point's +-1 position noise), goal
  uniform over the "vertex" (non-hallway) cells; each time the goal is reached a new one is drawn
  from the vertex cells. OGBench: 1000 episodes x 1001 steps.
* stitch: start anywhere, the goal a cell exactly 4 BFS moves away (the start cell if there is
  none); the expert reaches it and stays there. OGBench: 5000 episodes x 201 steps.

GridMaze crosses a cell in one step where the point needs 20 (``maze.CELL_STEPS``), so its
default episodes are 20 times shorter (51 and 11 steps) with the same episode counts.

Rows follow OGBench's files: trajectory after trajectory, each ``episode_steps`` rows long; the
last row of each is its final observation (with the action the expert would take there, which
loaders drop) and has ``terminals = 1``. ``rljax.data.load_ogbench`` reads the files back as
``episode_steps - 1`` transitions per trajectory. Where this differs from OGBench: the expert
heads for the goal itself once in the goal's cell (OGBench's aims at the cell's centre and can
linger there, short of a goal more than ~1 from it). PointMaze files also hold ``qpos``, the
point's position (its observation), which OGBench's single-task relabelling reads; no
``qvel`` is stored, as the JAX point has no velocity.
"""

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rljax.data import MAZE_KINDS, prepare_outputs
from rljax.data.ogbench import write_ogbench
from rljax.envs import maze

KINDS = MAZE_KINDS
STITCH_MOVES = 4
DEFAULTS = {  # kind -> (episodes, point steps per episode), OGBench's
    "navigate": (1000, 1001),
    "stitch": (5000, 201),
}
NOISE = {maze.PointMaze: 0.5, maze.GridMaze: 0.25}


def make_env(env_name: str):
    """``PointMaze-medium``, ``rljax/GridMaze-large`` or ``pointmaze-giant`` -> the maze env."""
    kind, _, layout = env_name.lower().removeprefix("rljax/").partition("-")
    if kind not in ("pointmaze", "gridmaze") or layout not in maze.LAYOUTS:
        known = [f"{k}-{layout}" for k in ("pointmaze", "gridmaze") for layout in maze.LAYOUTS]
        raise ValueError(f"unknown maze {env_name!r}; known: {', '.join(known)}")
    return _env(kind, layout)


@functools.cache  # one env per maze, so the jitted generator compiles once per maze and size
def _env(kind: str, layout: str):
    return {"pointmaze": maze.PointMaze, "gridmaze": maze.GridMaze}[kind](layout)


def dataset_name(env, kind: str) -> str:
    """OGBench's naming: ``pointmaze-medium-navigate-v0``."""
    return f"{type(env).__name__.lower()}-{env.layout}-{kind}-v0"


def _sizes(env, kind, num_episodes, episode_steps, noise):
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    episodes, steps = DEFAULTS[kind]
    if isinstance(env, maze.GridMaze):
        steps = (steps - 1) // maze.CELL_STEPS + 1
    num_episodes = episodes if num_episodes is None else num_episodes
    episode_steps = steps if episode_steps is None else episode_steps
    noise = NOISE[type(env)] if noise is None else noise
    if num_episodes < 1 or episode_steps < 2:
        raise ValueError(
            f"num_episodes={num_episodes} and episode_steps={episode_steps} must be >= 1 and "
            ">= 2 (a trajectory needs a transition and its final observation)"
        )
    return num_episodes, episode_steps, noise


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _rollouts(env, kind: str, num_episodes: int, episode_steps: int, noise, key) -> dict:
    """The rows of ``num_episodes`` trajectories, episode-major, plus each row's goal. Random
    numbers come from one uniform draw per step (and one normal for the point): each random op
    compiles on its own, slowly on CPU."""
    free = jnp.asarray(env.free_cells)
    vertex = jnp.asarray(env.vertex_cells)
    centres = jnp.asarray(env.centres)
    stitch_goals = jnp.asarray(env.dist == STITCH_MOVES)  # (C, C)
    radius = env.default_params.goal_radius
    point = isinstance(env, maze.PointMaze)

    def place(cell, u):  # a cell's centre plus the point's start/goal noise, from u (2,)
        return centres[cell] + env.noise * (2 * u - 1)

    def episode(key):
        u_key, steps_key = jax.random.split(key)
        u = jax.random.uniform(u_key, (6,))
        start = free[maze.uniform_index(u[0], len(free))]
        if kind == "navigate":
            goal = vertex[maze.uniform_index(u[1], len(vertex))]
        else:  # the k-th cell 4 moves away, k uniform; the start cell if there is none
            near = stitch_goals[start]
            k = maze.uniform_index(u[1], jnp.maximum(near.sum(), 1))
            goal = jnp.where(near.any(), jnp.argmax(jnp.cumsum(near) > k), start)
        pos, goal = place(start, u[2:4]), place(goal, u[4:6])

        def step(carry, key):
            pos, goal = carry
            u = jax.random.uniform(key, (5,))  # explore?, random move, goal cell, goal noise
            action = env.oracle_action(pos, goal)
            if point:
                normal = jax.random.normal(jax.random.fold_in(key, 1), (2,))
                action = jnp.clip(action + noise * normal, -1.0, 1.0)
            else:
                action = jnp.where(u[0] < noise, maze.uniform_index(u[1], 4), action)
            next_pos = env.move(pos, action)
            next_goal = goal
            if kind == "navigate":  # a new goal each time the current one is reached
                new_goal = place(vertex[maze.uniform_index(u[2], len(vertex))], u[3:5])
                next_goal = jnp.where(env.success(next_pos, goal, radius), new_goal, goal)
            return (next_pos, next_goal), (pos, action, goal)

        _, rows = jax.lax.scan(step, (pos, goal), jax.random.split(steps_key, episode_steps))
        return rows

    observations, actions, goals = jax.vmap(episode)(jax.random.split(key, num_episodes))
    flat = lambda x: x.reshape(num_episodes * episode_steps, *x.shape[2:])  # noqa: E731
    terminals = jnp.zeros((num_episodes, episode_steps), jnp.float32).at[:, -1].set(1.0)
    return {
        "observations": flat(observations).astype(jnp.float32),
        "actions": flat(actions).astype(jnp.float32 if point else jnp.int32),
        "terminals": flat(terminals),
        "goals": flat(goals).astype(jnp.float32),
    }


def _generate(env, kind, num_episodes, episode_steps, noise, key) -> dict:
    rows = _rollouts(env, kind, num_episodes, episode_steps, jnp.float32(noise), key)
    return {k: np.asarray(v) for k, v in rows.items()}


def maze_rows(
    env_name: str,
    kind: str = "navigate",
    num_episodes: int | None = None,
    episode_steps: int | None = None,
    noise: float | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """OGBench-layout rows (module docstring): ``observations`` (N, 2) float32, ``actions``
    (N, 2) float32 for the point or (N,) int32 for the grid, ``terminals`` (N,) float32, and
    ``goals`` (N, 2), the expert's goal at each row (for inspection; ``write`` leaves it out).
    ``None`` sizes and noise take the defaults of the module docstring."""
    env = make_env(env_name)
    num_episodes, episode_steps, noise = _sizes(env, kind, num_episodes, episode_steps, noise)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    return _generate(env, kind, num_episodes, episode_steps, float(noise), key)


def paths(env_name: str, kind: str, out_dir, val: bool = True) -> list[Path]:
    """The files ``write`` makes: ``<out_dir>/<pointmaze-medium-navigate-v0>.npz`` and, when
    ``val``, ``...-val.npz``."""
    env = make_env(env_name)
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    name = dataset_name(env, kind)
    return [Path(out_dir) / f"{name}{suffix}.npz" for suffix in ("", "-val")[: 1 + val]]


def write(
    env_name: str,
    kind: str,
    out_dir,
    num_episodes: int | None = None,
    episode_steps: int | None = None,
    noise: float | None = None,
    seed: int = 0,
    val: bool = True,
    force: bool = False,
) -> list[Path]:
    """Generates and writes ``paths(env_name, kind, out_dir, val)``: the training split and,
    when ``val``, one with ``num_episodes // 10`` (at least 1) more episodes from another stream
    of the same seed, as OGBench; returns the paths. Metadata: env, kind, noise, episodes,
    steps, seed, seconds. Existing files are refused (``rljax.data.DatasetExists``) unless
    ``force``, and an unwritable ``out_dir`` (``rljax.data.UnwritableOutput``), both before
    anything is generated."""
    env = make_env(env_name)
    num_episodes, episode_steps, noise = _sizes(env, kind, num_episodes, episode_steps, noise)
    files = paths(env_name, kind, out_dir, val)
    prepare_outputs(files, force)
    splits = [(files[0], num_episodes, 0)]
    if val:
        splits.append((files[1], max(num_episodes // 10, 1), 1))
    written = []
    for path, episodes, stream in splits:
        start = time.perf_counter()
        key = jax.random.fold_in(jax.random.PRNGKey(seed), stream)
        arrays = _generate(env, kind, episodes, episode_steps, float(noise), key)
        del arrays["goals"]
        if isinstance(env, maze.PointMaze):
            arrays["qpos"] = arrays["observations"]
        metadata = {
            "env": env.name,
            "kind": kind,
            "noise": float(noise),
            "episodes": episodes,
            "steps": episode_steps,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 3),
            # An episode's return is its success (reward 1 at the goal), so the normalized
            # score is the success rate in percent, as D4RL's AntMaze.
            "ref_min_score": 0.0,
            "ref_max_score": 1.0,
        }
        write_ogbench(path, arrays, metadata)
        written.append(path)
    return written
