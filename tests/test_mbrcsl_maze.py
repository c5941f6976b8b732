"""MBRCSL's stitching maze and data: the layout's one task and the dense reward by hand; the
generated episodes take the paper's two ways and never the short one, so the data's best return
stays below the oracle's; the file round-trips with its env and references, and a missing one
names its command; `rljax data generate rljax/PointMaze-mbrcsl` writes it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import cli, data, envs
from rljax.envs import maze
from rljax.generate import mbrcsl_maze


def cell_of(env, xy) -> tuple[int, int]:
    flat = int(env.cell(jnp.asarray(xy)))
    return divmod(flat, env.cols)


def test_the_maze_has_one_task_and_a_dense_reward():
    _, params = envs.make("rljax/PointMaze-mbrcsl", task_id=1, dense_reward=True)
    inner = maze.PointMaze("mbrcsl")
    assert inner.num_tasks == 1 and params.max_steps_in_episode == 200
    with pytest.raises(maze.InvalidMazeParameter, match="task_id=2.*0..1"):
        envs.make("rljax/PointMaze-mbrcsl", task_id=2)
    _, state = inner.reset_env(jax.random.PRNGKey(0), params)
    assert cell_of(inner, state.pos) == (1, 2) and cell_of(inner, state.goal) == (2, 4)
    action = jnp.array([0.0, 1.0])
    _, after, reward, terminated, _ = inner.step_env(jax.random.PRNGKey(1), state, action, params)
    distance = np.linalg.norm(np.asarray(after.pos) - np.asarray(state.goal))
    np.testing.assert_allclose(reward, np.exp(-distance / maze.MAZE_UNIT), rtol=1e-6)
    sparse = params.replace(dense_reward=False)
    assert inner.step_env(jax.random.PRNGKey(1), state, action, sparse)[2] == 0.0


def test_episodes_take_the_two_ways_and_never_the_short_one():
    rows, groups = mbrcsl_maze.rows(episodes=16)
    env = maze.PointMaze("mbrcsl")
    obs = rows["observations"].reshape(16, 200, 2)
    assert rows["timeouts"].reshape(16, 200)[:, -1].all() and not rows["terminals"].any()
    sizes = [g["episodes"] for g in groups.values()]
    assert sizes == [8, 4, 4]
    for i, episode in enumerate(obs):
        cells = [cell_of(env, xy) for xy in episode]
        assert cells[0] == (1, 2)
        if i < 8:  # to the middle: ends there, never reaches the goal's cell
            assert cells[-1] == (2, 2) and (2, 4) not in cells
        else:  # detours: through (1, 1) before the bottom row, then the goal
            assert (2, 4) in cells and cells.index((1, 1)) < cells.index((2, 2))
    random_return, oracle_return = mbrcsl_maze._reference_returns(jax.random.PRNGKey(1))
    best = max(g["best_return"] for g in groups.values())
    assert random_return < groups["to the middle"]["mean_return"] < best < 0.8 * oracle_return


def test_the_cli_writes_the_file_it_round_trips_and_a_missing_one_names_its_command(
    tmp_path, capsys
):
    generate = ["data", "generate", "rljax/PointMaze-mbrcsl", "--out", str(tmp_path)]
    assert cli.main([*generate, "--episodes", "3"]) == 0
    path = mbrcsl_maze.path(tmp_path)
    assert f"wrote {path}" in capsys.readouterr().out
    dataset, metadata = data.load(path)
    assert metadata["env"] == mbrcsl_maze.ENV and metadata["groups"]["detour"]["episodes"] == 1
    assert dataset.observations.shape == (3 * 199, 2)  # the timeout rows are dropped (D4RL)
    assert metadata["ref_min_score"] < metadata["ref_max_score"]
    assert cli.main([*generate, "--episodes", "3"]) == 2  # refused: the file exists
    assert "--force" in capsys.readouterr().err
    assert cli.main([*generate, "--kind", "navigate"]) == 2
    assert "no --kind" in capsys.readouterr().err
    with pytest.raises(data.DatasetNotFound, match="rljax data generate rljax/PointMaze-mbrcsl"):
        data.resolve(data.MBRCSL_MAZE + ".hdf5")
