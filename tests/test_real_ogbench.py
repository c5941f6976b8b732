"""rljax against the real ogbench package (a dev extra, imported, never skipped).

Datasets both ways: ``ogbench.utils.load_dataset`` reads the files ``rljax.generate.mazes``
writes as ``rljax.data.load_ogbench`` does, and ``load_ogbench`` reads files in OGBench's layout
(recorded from OGBench's own env, and after OGBench's loader and single-task relabelling) as
OGBench does. Environments: ``rljax.envs.maze.PointMaze`` against OGBench's MuJoCo
``pointmaze-{medium,large,giant}-v0`` (the layouts both have; ``teleport`` is OGBench's only):
maze, tasks, bounds, one step from the same states, and success.
"""

from collections import defaultdict

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import ogbench
import pytest
from ogbench.relabel_utils import relabel_dataset

from rljax import data
from rljax.envs import maze
from rljax.generate import mazes as maze_data

LAYOUTS = ("medium", "large", "giant")
FREE_TOL = 1e-5  # float32 rounding of positions up to ~60
CONTACT_TOL = 0.06  # MuJoCo's soft contacts: the ball sinks into a wall and is pushed back


def ogbench_env(layout: str, **kwargs):
    return gymnasium.make(f"pointmaze-{layout}-v0", **kwargs)


def wall_clearance(env: maze.PointMaze, xy: np.ndarray) -> np.ndarray:
    """Distance from the ball's centre (M, 2) to the nearest wall block."""
    blocks = env.centres[np.flatnonzero(env.walls.ravel())]
    gap = np.maximum(np.abs(xy[:, None] - blocks[None]) - maze.MAZE_UNIT / 2, 0.0)
    return np.linalg.norm(gap, axis=-1).min(-1)


def our_moves(env: maze.PointMaze, xy: np.ndarray, actions: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(env.move))(jnp.float32(xy), jnp.float32(actions)))


def ogbench_moves(layout: str, xy: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """OGBench's next xy from each state (velocity zero, as its step sets it) and action."""
    env = ogbench_env(layout).unwrapped
    env.reset(seed=0)
    out = np.empty_like(xy)
    for k, (p, a) in enumerate(zip(xy, actions, strict=True)):
        env.set_state(p, np.zeros(2))
        out[k] = env.step(a)[0]
    return out


def expert_rows(layout: str, init_goal_ijs, steps: int, rng, explore=False) -> dict:
    """Rows as OGBench's ``data_gen_scripts/generate_locomaze.py`` records them for the point:
    its expert heads for ``get_oracle_subgoal`` (``explore``: a random direction drawn every 10
    steps) with Gaussian noise 0.5, clipped; each row holds the observation, the action,
    ``done``, and the state before the step. The script itself cannot run here: it imports a SAC
    agent from OGBench's impls, which the package lacks; its loop is repeated on OGBench's env."""
    env = ogbench_env(layout, terminate_at_goal=False, max_episode_steps=steps)
    u = env.unwrapped
    rows = defaultdict(list)
    for init_ij, goal_ij in init_goal_ijs:
        ob, _ = env.reset(options={"task_info": {"init_ij": init_ij, "goal_ij": goal_ij}})
        done, step = False, 0
        while not done:
            if explore and step % 10 == 0:
                direction = rng.normal(size=2)
            elif not explore:
                subgoal, _ = u.get_oracle_subgoal(u.get_xy(), u.cur_goal_xy)
                direction = subgoal - u.get_xy()
            direction = direction / (np.linalg.norm(direction) + 1e-6)
            action = np.clip(direction + rng.normal(0, 0.5, 2), -1, 1)
            next_ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            row = {"observations": ob, "actions": action, "terminals": done}
            row |= {"qpos": info["prev_qpos"], "qvel": info["prev_qvel"]}
            for key, value in row.items():
                rows[key].append(value)
            ob, step = next_ob, step + 1
    return {k: np.array(v, bool if k == "terminals" else np.float32) for k, v in rows.items()}


@pytest.fixture(scope="module")
def ogbench_file(tmp_path_factory):
    """A medium-maze file in OGBench's layout: an episode from task 1's goal cell to itself (so
    the single-task relabelling finds successes), then two between random cells."""
    np.random.seed(0)  # OGBench draws its start and goal noise from numpy's global RNG
    rng = np.random.default_rng(0)
    cells = [tuple(ij) for ij in np.argwhere(~maze.walls_of(maze.LAYOUTS["medium"]))]
    goal = maze.TASKS["medium"][0][1]
    episodes = [(goal, goal)] + [(cells[i], cells[j]) for i, j in rng.choice(len(cells), (2, 2))]
    rows = expert_rows("medium", episodes, 30, rng)
    path = tmp_path_factory.mktemp("ogbench") / "pointmaze-medium-navigate-v0.npz"
    np.savez_compressed(path, **rows)  # as the script saves its files
    return path, rows


def assert_same_transitions(ours: data.Dataset, theirs: dict, compact: bool) -> None:
    """Our Dataset holds exactly the transitions of OGBench's loaded dict (goal-conditioned: no
    rewards, no terminations, and OGBench's last-transition flag is our timeout)."""
    got = ours.to_numpy()
    if compact:  # each valid row pairs with the row after it
        keep = np.flatnonzero(theirs["valids"])
        theirs = {**theirs, "next_observations": theirs["observations"][keep + 1]}
        theirs = {k: v if k == "next_observations" else v[keep] for k, v in theirs.items()}
    for key in ("observations", "actions", "next_observations"):
        np.testing.assert_array_equal(got[key], theirs[key], key)
    np.testing.assert_array_equal(got["timeouts"], theirs["terminals"])
    assert theirs["terminals"].any() and not got["terminals"].any() and not got["rewards"].any()


# --- Datasets ---


def test_ogbench_reads_our_files_as_we_do(tmp_path):
    train, val = maze_data.write(
        "PointMaze-medium", "navigate", tmp_path, num_episodes=3, episode_steps=20
    )
    ours, _ = data.load_ogbench(train)
    for compact in (False, True):
        # Our PointMaze files carry qpos (the point's position, its observation), no qvel.
        theirs = ogbench.utils.load_dataset(str(train), compact_dataset=compact, add_info=True)
        assert sorted(theirs) == sorted(
            ["observations", "actions", "terminals", "qpos"]
            + ["valids" if compact else "next_observations"]
        )
        np.testing.assert_array_equal(theirs["qpos"], theirs["observations"])
        assert_same_transitions(ours, theirs, compact)
    # So OGBench's single-task relabelling runs on them: reward 0 at task 1's goal, else -1.
    _, single, _ = ogbench.make_env_and_datasets(
        "pointmaze-medium-navigate-singletask-task1-v0", dataset_path=str(train)
    )
    assert set(np.unique(single["rewards"])) <= {-1.0, 0.0}
    np.testing.assert_array_equal(single["masks"], single["rewards"] + 1 == 0)
    # OGBench's entry point finds the env from our file name and the split beside it.
    env, _, theirs_val = ogbench.make_env_and_datasets(
        "pointmaze-medium-navigate-v0", dataset_path=str(train)
    )
    assert env.spec.id == "pointmaze-medium-v0"
    assert_same_transitions(data.load_ogbench(val)[0], theirs_val, compact=False)

    # The grid's integer actions survive OGBench's loader given their dtype.
    (grid,) = maze_data.write(
        "GridMaze-medium", "stitch", tmp_path, num_episodes=3, episode_steps=6, val=False
    )
    theirs = ogbench.utils.load_dataset(str(grid), action_dtype=np.int32)
    assert_same_transitions(data.load_ogbench(grid)[0], theirs, compact=False)


def test_we_read_ogbench_files_as_ogbench_does(ogbench_file, tmp_path):
    path, rows = ogbench_file
    assert rows["terminals"].dtype == bool and rows["terminals"].sum() == 3
    ours, _ = data.load_ogbench(path)
    for compact in (False, True):
        theirs = ogbench.utils.load_dataset(str(path), compact_dataset=compact)
        assert_same_transitions(ours, theirs, compact)

    # Single-task data: OGBench's relabelling (rewards, masks from each row's qpos) saved in
    # each of the three layouts reads as the transitions OGBench's agents see.
    name = "pointmaze-medium-singletask-task1-v0"
    env = gymnasium.make(name)
    regular = ogbench.utils.load_dataset(str(path), add_info=True)
    relabel_dataset(name, env, regular)
    assert 0 < (regular["masks"] == 0).sum() < len(regular["masks"])  # some rows at the goal
    raw = dict(rows)
    relabel_dataset(name, env, raw)  # per row, before OGBench's loader
    compact = ogbench.utils.load_dataset(str(path), compact_dataset=True, add_info=True)
    relabel_dataset(name, env, compact)
    for layout, arrays in (("regular", regular), ("rows", raw), ("compact", compact)):
        np.savez(tmp_path / f"{layout}.npz", **arrays)
        got = data.load_ogbench(tmp_path / f"{layout}.npz")[0].to_numpy()
        for key in ("observations", "actions", "next_observations", "rewards"):
            np.testing.assert_array_equal(got[key], regular[key], f"{layout}: {key}")
        np.testing.assert_array_equal(got["terminals"], 1 - regular["masks"], layout)
        ends = regular["terminals"] * regular["masks"]  # a last transition that is not terminal
        np.testing.assert_array_equal(got["timeouts"], ends, layout)


# --- The environment ---


@pytest.mark.parametrize("layout", LAYOUTS)
def test_maze_tasks_radius_and_bounds_match(layout):
    theirs = ogbench_env(layout)
    u = theirs.unwrapped
    ours = maze.PointMaze(layout)
    params = ours.default_params
    np.testing.assert_array_equal(u.maze_map, ours.walls)
    cells = np.argwhere(np.ones_like(ours.walls))
    np.testing.assert_array_equal([u.ij_to_xy(ij) for ij in cells], ours.centres)
    xy = np.random.default_rng(0).uniform(-2, ours.centres.max(0) + 2, (200, 2))
    np.testing.assert_array_equal(
        [np.ravel_multi_index(u.xy_to_ij(p), ours.walls.shape) for p in xy], ours.cell(xy)
    )
    tasks = [(t["init_ij"], t["goal_ij"]) for t in u.task_infos]
    np.testing.assert_array_equal(
        np.ravel_multi_index(np.array(tasks).T, ours.walls.shape), ours.tasks.T
    )
    assert u._goal_tol == ours.goal_radius == params.goal_radius == 1.0
    assert u._noise * u._maze_unit / 4 == ours.noise
    assert theirs.spec.max_episode_steps == params.max_steps_in_episode
    ours_space, theirs_space = ours.action_space(params), theirs.action_space
    assert ours_space.shape == theirs_space.shape == (2,)
    np.testing.assert_array_equal([ours_space.low, ours_space.high], [-1.0, 1.0])
    np.testing.assert_array_equal([theirs_space.low, theirs_space.high], [[-1, -1], [1, 1]])
    # Evaluation resets: the observation is xy, start and goal within the noise of the task's
    # cells, on both sides.
    for task_id in range(1, maze.NUM_TASKS + 1):
        ob, info = theirs.reset(seed=task_id, options={"task_id": task_id})
        _, state = ours.reset_env(jax.random.PRNGKey(task_id), params.replace(task_id=task_id))
        np.testing.assert_array_equal(ob, u.get_xy())
        start, goal = ours.centres[ours.tasks[task_id - 1]]
        placed = {"ogbench start": (ob, start), "ogbench goal": (info["goal"], goal)}
        placed |= {"our start": (state.pos, start), "our goal": (state.goal, goal)}
        for name, (got, centre) in placed.items():
            assert got.shape == (2,) and np.abs(got - centre).max() <= maze.NOISE, (task_id, name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_step_matches_from_the_same_states(layout):
    """300 steps that would take the ball into a wall and 300 that touch none, from states that
    clear the walls, with actions in [-1, 1]^2 (half at the box's corners)."""
    ours = maze.PointMaze(layout)
    rng = np.random.default_rng(0)
    n = 20000
    xy = ours.centres[rng.choice(ours.free_cells, n)] + rng.uniform(-1.3, 1.3, (n, 2))
    actions = rng.uniform(-1, 1, (n, 2))
    actions[::2] = np.sign(actions[::2])
    valid = wall_clearance(ours, xy) >= maze.RADIUS
    contact = wall_clearance(ours, xy + maze.SPEED * actions) < maze.RADIUS
    pick = np.concatenate(
        [np.flatnonzero(valid & contact)[:300], np.flatnonzero(valid & ~contact)[:300]]
    )
    xy, actions = xy[pick], actions[pick]
    error = np.linalg.norm(
        our_moves(ours, xy, actions) - ogbench_moves(layout, xy, actions), axis=-1
    )
    assert len(pick) == 600
    assert error[300:].max() <= FREE_TOL, error[300:].max()
    assert error[:300].max() <= CONTACT_TOL, error[:300].max()


def test_one_step_matches_along_ogbench_trajectories():
    """From OGBench's own states, which MuJoCo leaves slightly inside a wall after a contact:
    its explore data (random directions), which bumps into walls often."""
    np.random.seed(0)  # OGBench draws its start noise from numpy's global RNG
    rng = np.random.default_rng(0)
    ours = maze.PointMaze("medium")
    starts = np.argwhere(ours.walls == 0)[rng.choice(len(ours.free_cells), 2)]
    rows = expert_rows("medium", [(tuple(ij), tuple(ij)) for ij in starts], 200, rng, True)
    np.testing.assert_array_equal(rows["qpos"], rows["observations"])
    t = np.flatnonzero(~rows["terminals"])
    moved = our_moves(ours, rows["qpos"][t], rows["actions"][t])
    error = np.linalg.norm(moved - rows["qpos"][t + 1], axis=-1)
    assert (wall_clearance(ours, rows["qpos"][t]) < maze.RADIUS - 0.01).sum() > 10
    assert error.max() <= CONTACT_TOL, error.max()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_success_reward_and_termination_match(layout):
    """Post-step success (||xy - goal|| <= 1), reward 1 and termination at it, from states in and
    around the radius of a goal near a free cell's centre, by steps that touch no wall (where
    the positions themselves differ: test_one_step_matches_from_the_same_states)."""
    ours = maze.PointMaze(layout)
    params = ours.default_params
    theirs = ogbench_env(layout).unwrapped
    theirs.reset(seed=0)
    rng = np.random.default_rng(1)
    n = 200
    goals = ours.centres[rng.choice(ours.free_cells, n)] + rng.uniform(-0.2, 0.2, (n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    pos = goals + rng.uniform(0.5, 1.4, n)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
    actions = rng.uniform(-1, 1, (n, 2))
    # Both sides round differently within float32 precision of the radius: keep clear of it.
    moved = pos + maze.SPEED * actions
    keep = np.abs(np.linalg.norm(moved - goals, axis=-1) - 1.0) > 1e-4
    keep &= wall_clearance(ours, moved) >= maze.RADIUS
    pos, goals, actions = np.float32(pos[keep]), np.float32(goals[keep]), actions[keep]

    step = jax.vmap(lambda s, a: ours.step_env(jax.random.PRNGKey(0), s, a, params))
    states = maze.MazeState(
        pos=jnp.asarray(pos), goal=jnp.asarray(goals), time=jnp.zeros(len(pos), jnp.int32)
    )
    _, _, reward, terminated, info = step(states, jnp.float32(actions))
    expected = []
    for p, g, a in zip(pos, goals, actions, strict=True):
        theirs.set_goal(goal_xy=g)
        theirs.set_state(p, np.zeros(2))
        _, r, term, _, i = theirs.step(a)
        expected.append((i["success"], r, term))
    success, expected_reward, expected_terminated = np.array(expected).T
    assert 0.2 < success.mean() < 0.8
    np.testing.assert_array_equal(info["success"], success)
    np.testing.assert_array_equal(reward, expected_reward)
    np.testing.assert_array_equal(terminated, expected_terminated)
