"""The maze environments (rljax/envs/maze.py) and their OGBench-style datasets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import data, envs
from rljax.envs import maze
from rljax.envs.maze import GridMaze, MazeState, PointMaze
from rljax.generate import mazes as maze_data

LAYOUT_SHAPES = {"medium": (8, 8), "large": (9, 12), "giant": (12, 16)}


@pytest.fixture(scope="module")
def mazes():
    return {
        (kind, layout): kind(layout) for kind in (PointMaze, GridMaze) for layout in maze.LAYOUTS
    }


def clearance(env, xy):
    """Distance from each position (M, 2) to the nearest wall block, in numpy."""
    blocks = env.centres[np.flatnonzero(env.walls.ravel())]  # (K, 2)
    gap = np.maximum(np.abs(xy[:, None] - blocks[None]) - maze.MAZE_UNIT / 2, 0.0)
    return np.linalg.norm(gap, axis=-1).min(-1)


def test_layouts_tasks_and_registration(mazes):
    for layout, shape in LAYOUT_SHAPES.items():
        env = mazes[PointMaze, layout]
        assert env.walls.shape == shape and env.num_tasks == 5 and len(env.tasks) == 5
        assert env.walls[0].all() and env.walls[-1].all()
        assert env.walls[:, 0].all() and env.walls[:, -1].all()
        # every task's start and goal cell is free and the goal is reachable from the start
        assert not env.walls.ravel()[env.tasks].any()
        assert (env.dist[env.tasks[:, 0], env.tasks[:, 1]] > 0).all()
    medium = mazes[PointMaze, "medium"]
    assert medium.centres[1 * 8 + 1].tolist() == [0.0, 0.0]  # cell (1, 1) at the origin
    assert medium.centres[6 * 8 + 6].tolist() == [20.0, 20.0]  # task 1's goal (6, 6)
    # vertex cells exclude hallways: medium (5, 1) is a vertical one, large (1, 2) horizontal
    assert 5 * 8 + 1 not in medium.vertex_cells and 1 * 8 + 1 in medium.vertex_cells
    assert 1 * 12 + 2 not in mazes[PointMaze, "large"].vertex_cells
    for kind in ("PointMaze", "GridMaze"):
        for layout in LAYOUT_SHAPES:
            env, params = envs.make(f"rljax/{kind}-{layout}")
            assert env.name == f"rljax/{kind}-{layout}" and params.max_steps_in_episode > 0
    with pytest.raises(maze.InvalidMazeParameter, match="task_id"):
        envs.make("rljax/PointMaze-medium", task_id=6)
    with pytest.raises(ValueError, match="unknown maze layout"):
        PointMaze("tiny")


def test_bfs_on_a_tiny_layout():
    walls = maze.walls_of(
        (
            "#######",
            "#.#.#.#",
            "#.#.###",
            "#...###",
            "#######",
        )
    )
    dist = maze.bfs_distances(walls)
    cell = lambda i, j: i * 7 + j  # noqa: E731
    # (1,1) -> (2,1) -> (3,1) -> (3,2) -> (3,3) -> (2,3) -> (1,3): six moves round the U
    assert dist[cell(1, 1), cell(1, 3)] == 6 and dist[cell(1, 3), cell(1, 1)] == 6
    assert dist[cell(1, 1), cell(3, 2)] == 3 and dist[cell(2, 3), cell(2, 3)] == 0
    assert dist[cell(1, 1), cell(1, 5)] == -1  # (1, 5) is walled in
    assert dist[cell(0, 0)].max() == -1  # walls have no distances
    nxt = maze.next_cells(walls, dist)
    assert nxt[cell(1, 1), cell(1, 3)] == cell(2, 1) and nxt[cell(3, 2), cell(1, 3)] == cell(3, 3)
    assert nxt[cell(1, 1), cell(1, 1)] == cell(1, 1) and nxt[cell(1, 1), cell(1, 5)] == cell(1, 1)
    # (2, 1), (2, 3) and (3, 2) are hallways; the U's ends and corners and (1, 5) are vertices
    assert sorted(maze.vertex_cells(walls)) == [cell(1, 1), cell(1, 3), cell(1, 5), cell(3, 1),
                                                cell(3, 3)]  # fmt: skip
    # a tie goes to the first of up, left, down, right (OGBench's order): down before right
    square = maze.walls_of(("####", "#..#", "#..#", "####"))
    assert maze.next_cells(square, maze.bfs_distances(square))[1 * 4 + 1, 2 * 4 + 2] == 2 * 4 + 1


def test_point_collision_hand_cases(mazes):
    env = mazes[PointMaze, "medium"]
    move = jax.jit(env.move)
    # cell (1, 1) spans [-2, 2]^2 with walls left (x < -2) and below (y < -2): the ball of
    # radius 0.7 stops with its centre 0.7 from a wall face
    np.testing.assert_allclose(move(jnp.array([-1.2, 0.0]), jnp.array([-1.0, 0.0])), [-1.3, 0.0])
    # sliding: the blocked component is dropped, the other kept (0.2 * 1.0)
    np.testing.assert_allclose(move(jnp.array([-1.3, 0.0]), jnp.array([-1.0, 1.0])), [-1.3, 0.2])
    # a concave corner holds it; actions are clipped to [-1, 1]
    np.testing.assert_allclose(move(jnp.array([-1.3, -1.3]), jnp.array([-5.0, -1.0])), [-1.3, -1.3])
    # free space: exactly 0.2 * action
    np.testing.assert_allclose(move(jnp.array([0.0, 0.0]), jnp.array([0.5, -1.0])), [0.1, -0.2])
    # a convex corner: cell (2, 2) spans [2, 6]^2 and only its diagonal (3, 1) is a wall, whose
    # corner is (2, 6). Heading left and up, the ball rounds that corner (never closer than 0.7),
    # runs along the wall of (3, 1) at y = 6 - 0.7 and stops in the corner of cell (2, 1).
    pos, corner = jnp.array([2.5, 5.0]), np.array([2.0, 6.0])
    path = []
    for _ in range(40):
        pos = move(pos, jnp.array([-1.0, 0.5]))
        path.append(np.asarray(pos))
    path = np.array(path)
    assert np.linalg.norm(path - corner, axis=-1).min() >= 0.7 - 1e-5
    assert clearance(env, path).min() >= 0.7 - 1e-5
    np.testing.assert_allclose(path[-1], [-1.3, 5.3], atol=1e-5)
    assert ((path[:, 0] < 2.0) & (path[:, 1] > 5.0)).any()  # it got round, not stuck


def test_point_never_enters_a_wall_under_random_actions(mazes):
    rng = np.random.default_rng(0)
    for layout in LAYOUT_SHAPES:
        env = mazes[PointMaze, layout]
        starts = env.centres[rng.choice(env.free_cells, 64)]
        actions = rng.uniform(-1.0, 1.0, (400, 64, 2)).astype(np.float32)
        walk = lambda pos, action, env=env: (env.move(pos, action),) * 2  # noqa: E731
        path = jax.jit(lambda p, a, w=walk: jax.lax.scan(jax.vmap(w), p, a)[1])(starts, actions)
        path = np.asarray(path).reshape(-1, 2)
        assert clearance(env, path).min() >= maze.RADIUS - 1e-4, layout
        assert len(np.unique(np.asarray(env.cell(path)))) > 10  # it moves about


def test_grid_moves(mazes):
    env = mazes[GridMaze, "medium"]
    origin = jnp.array([0.0, 0.0])  # cell (1, 1): walls up (row 0) and left (col 0)
    moves = [env.move(origin, a).tolist() for a in range(4)]  # up, right, down, left
    assert moves == [[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 0.0]]


def test_goal_reaching_truncation_and_reset(mazes):
    env = mazes[PointMaze, "medium"]
    params = env.default_params
    state = MazeState(pos=jnp.array([0.0, 0.0]), goal=jnp.array([1.3, 0.0]), time=0)
    key = jax.random.key(0)
    obs, state, reward, terminated, truncated, info = env.step(key, state, jnp.ones(2), params)
    assert reward == 0.0 and not terminated and not info["success"]  # at 1.1 from the goal
    np.testing.assert_allclose(obs, [0.2, 0.2])
    obs, _, reward, terminated, truncated, info = env.step(key, state, jnp.array([1.0, -1.0]),
                                                           params)  # fmt: skip
    assert reward == 1.0 and terminated and not truncated and info["success"]  # at 0.9: success
    np.testing.assert_allclose(info["final_observation"], [0.4, 0.0])
    assert not np.allclose(obs, [0.4, 0.0])  # auto-reset
    keep_going = params.replace(terminate_at_goal=False, max_steps_in_episode=2)
    _, _, reward, terminated, truncated, info = env.step(key, state, jnp.array([1.0, -1.0]),
                                                         keep_going)  # fmt: skip
    assert reward == 1.0 and info["success"] and not terminated and truncated  # time limit 2
    # the grid succeeds in the goal cell exactly
    grid = mazes[GridMaze, "medium"]
    state = MazeState(pos=jnp.array([0.0, 0.0]), goal=jnp.array([4.0, 0.0]), time=0)
    _, _, reward, terminated, _, _ = grid.step(key, state, 1, grid.default_params)
    assert reward == 1.0 and terminated
    # resets: OGBench's tasks with +-1 noise on the point, exact on the grid; task 0 random
    keys = jax.random.split(key, 200)
    for env in (mazes[PointMaze, "large"], mazes[GridMaze, "large"]):
        for task_id in range(6):
            params = env.default_params.replace(task_id=task_id)
            obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
            np.testing.assert_array_equal(obs, state.pos)
            start, goal = np.asarray(env.cell(state.pos)), np.asarray(env.cell(state.goal))
            if task_id == 0:
                assert not env.walls.ravel()[start].any() and (start != goal).all()
                assert len(np.unique(start)) > 20
                continue
            assert (start == env.tasks[task_id - 1, 0]).all()
            assert (goal == env.tasks[task_id - 1, 1]).all()
            offset = np.asarray(state.pos) - env.centres[start]
            assert np.abs(offset).max() <= env.noise and (np.abs(offset).max() > 0.9) == (
                env.noise == maze.NOISE
            )


def oracle_steps(env, start, goal):
    """Steps the noise-free oracle takes from start to goal (limit + 1 if it never gets there)."""
    limit, radius = env.default_params.max_steps_in_episode, env.default_params.goal_radius

    def step(carry, _):
        pos, steps = carry
        done = env.success(pos, goal, radius)
        pos = jnp.where(done, pos, env.move(pos, env.oracle_action(pos, goal)))
        return (pos, steps + ~done), None

    return jax.lax.scan(step, (start, 0), None, limit + 1)[0][1]


@pytest.mark.parametrize("kind", [PointMaze, GridMaze])
def test_oracle_reaches_every_evaluation_goal(mazes, kind):
    """Noise-free oracle on every task from starts and goals anywhere in the reset's noise box
    (its corners included) within the episode limit."""
    corners = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], np.float32)
    offsets = np.concatenate(
        [np.stack(np.broadcast_arrays(corners[:, None], corners[None]), 2).reshape(16, 2, 2),
         np.random.default_rng(0).uniform(-1, 1, (16, 2, 2))]
    )  # fmt: skip  # (32, start/goal, xy)
    for layout in LAYOUT_SHAPES:
        env = mazes[kind, layout]
        limit = env.default_params.max_steps_in_episode
        starts = env.centres[env.tasks[:, None, 0]] + env.noise * offsets[None, :, 0]
        goals = env.centres[env.tasks[:, None, 1]] + env.noise * offsets[None, :, 1]
        run = jax.jit(jax.vmap(jax.vmap(functools.partial(oracle_steps, env))))
        steps = np.asarray(run(starts, goals))  # (task, offset)
        assert steps.max() <= limit, (layout, steps.max(1))
        bfs = env.dist[env.tasks[:, 0], env.tasks[:, 1]]
        if kind is GridMaze:  # one move per cell on a shortest path
            np.testing.assert_array_equal(steps, np.broadcast_to(bfs[:, None], steps.shape))
        else:  # 0.2 per step: about 20 steps per cell, fewer for the corners it cuts
            assert (steps.mean(1) < maze.CELL_STEPS * bfs).all(), (layout, steps.mean(1))
            assert (steps.mean(1) > 0.5 * maze.CELL_STEPS * bfs).all(), (layout, steps.mean(1))
    # batched and single inputs agree
    env = mazes[kind, "medium"]
    pos, goal = jnp.array([[0.0, 0.0], [20.5, 19.0]]), jnp.array([[20.0, 20.0], [20.0, 20.0]])
    both = env.oracle_subgoal(pos, goal)
    np.testing.assert_allclose(both[0], env.oracle_subgoal(pos[0], goal[0]))
    np.testing.assert_allclose(both[1], [20.0, 20.0])  # in the goal's cell: the goal itself
    np.testing.assert_allclose(both[0], [0.0, 4.0])  # from (1, 1) the path to (6, 6) goes down


def check_rows(env, rows, episodes, steps):
    """Shapes, terminals and that each row follows from the one before by the env's kinematics."""
    obs, actions, terminals = rows["observations"], rows["actions"], rows["terminals"]
    assert obs.shape == (episodes * steps, 2) and obs.dtype == np.float32
    assert len(actions) == len(terminals) == episodes * steps
    np.testing.assert_array_equal(np.flatnonzero(terminals), np.arange(1, episodes + 1) * steps - 1)
    nxt = np.asarray(jax.vmap(env.move)(obs, actions))
    within = terminals[:-1] == 0
    np.testing.assert_allclose(nxt[:-1][within], obs[1:][within], atol=1e-5)
    return obs.reshape(episodes, steps, 2), rows["goals"].reshape(episodes, steps, 2)


@pytest.mark.parametrize("kind", [PointMaze, GridMaze])
def test_generators(kind):
    name = f"{kind.__name__}-medium"
    env = maze_data.make_env(name)
    point = kind is PointMaze
    # navigate: goals on vertex cells, a new one (rarely the same cell) where one was reached
    steps = 201 if point else 21
    rows = maze_data.maze_rows(name, "navigate", num_episodes=6, episode_steps=steps, seed=3)
    obs, goals = check_rows(env, rows, 6, steps)
    assert np.isin(np.asarray(env.cell(goals)), env.vertex_cells).all()
    changed = (goals[:, 1:] != goals[:, :-1]).any(-1)
    reached = np.asarray(env.success(obs[:, 1:], goals[:, :-1], env.default_params.goal_radius))
    assert not (changed & ~reached).any() and changed.sum() >= 0.8 * reached.sum()
    assert reached.sum() >= 6  # the expert keeps reaching goals
    if point:
        assert np.abs(rows["actions"]).max() <= 1.0 and rows["actions"].dtype == np.float32
        assert np.abs(rows["actions"]).max() == 1.0  # noise 0.5 gets clipped
    else:
        assert rows["actions"].dtype == np.int32 and set(np.unique(rows["actions"])) <= {0, 1, 2, 3}
    again = maze_data.maze_rows(name, "navigate", num_episodes=6, episode_steps=steps, seed=3)
    np.testing.assert_array_equal(again["actions"], rows["actions"])  # deterministic
    # stitch: one goal per trajectory, exactly 4 moves from the start cell, reached and kept
    rows = maze_data.maze_rows(name, "stitch", num_episodes=40, seed=0)
    steps = 201 if point else 11
    obs, goals = check_rows(env, rows, 40, steps)
    assert (goals == goals[:, :1]).all()
    start, goal = np.asarray(env.cell(obs[:, 0])), np.asarray(env.cell(goals[:, 0]))
    assert (env.dist[start, goal] == 4).all()
    reached = np.asarray(env.success(obs, goals, env.default_params.goal_radius))
    assert reached.any(1).mean() > 0.9 and reached[:, -1].mean() > 0.6
    with pytest.raises(ValueError, match="unknown dataset kind"):
        maze_data.maze_rows(name, "explore")
    with pytest.raises(ValueError, match="unknown maze"):
        maze_data.maze_rows("antmaze-medium")


def test_write_and_load_round_trip(tmp_path):
    # the training split is test_generators' grid stitch rows (same sizes, so no new compile)
    paths = maze_data.write("rljax/GridMaze-medium", "stitch", tmp_path, num_episodes=40)
    assert [p.name for p in paths] == [
        "gridmaze-medium-stitch-v0.npz",
        "gridmaze-medium-stitch-v0-val.npz",
    ]
    raw = maze_data.maze_rows("gridmaze-medium", "stitch", num_episodes=40)
    train, meta = data.load_ogbench("gridmaze-medium-stitch-v0", dataset_dir=tmp_path)
    assert meta["env"] == "rljax/GridMaze-medium" and meta["kind"] == "stitch"
    assert (meta["episodes"], meta["steps"], meta["seed"], meta["noise"]) == (40, 11, 0, 0.25)
    assert train.size == 40 * 10 and float(train.timeouts.sum()) == 40
    assert train.actions.dtype == jnp.int32 and not train.terminals.any()
    obs = raw["observations"].reshape(40, 11, 2)
    np.testing.assert_array_equal(train.observations, obs[:, :-1].reshape(-1, 2))
    np.testing.assert_array_equal(train.next_observations, obs[:, 1:].reshape(-1, 2))
    np.testing.assert_array_equal(train.actions, raw["actions"].reshape(40, 11)[:, :-1].ravel())
    val, meta = data.load_ogbench("gridmaze-medium-stitch-v0", dataset_dir=tmp_path, val=True)
    assert val.size == 4 * 10 and meta["episodes"] == 4
    assert not np.array_equal(val.observations, train.observations[:40])  # another stream
