"""The runner's offline path: --dataset, evaluation after each chunk, normalized scores, resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import checkpoint_leaves, quiet

from rljax import cli
from rljax.data import write_d4rl
from rljax.envs import make as envs_make
from rljax.runner.config import ConfigError
from rljax.runner.loop import train
from rljax.runner.program import build_program
from rljax.runner.spec import RunSpec, resolve_spec

EPISODES, HORIZON = 6, 50
TINY = {"hidden_sizes": [16, 16], "batch_size": 32, "total_updates": 8}
REFERENCES = (-400.0, -100.0)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    """Random [-1, 1] torques on Pendulum-v1 cut to 50-step episodes, with references."""
    import gymnax

    env, params = gymnax.make("Pendulum-v1")

    def episode(key):
        obs, state = env.reset(key, params)

        def step(carry, key):
            obs, state = carry
            action = jax.random.uniform(key, (1,), minval=-1, maxval=1)
            next_obs, state, reward, *_ = env.step(key, state, 2 * action, params)
            return (next_obs, state), (obs, action, reward, next_obs)

        return jax.lax.scan(step, (obs, state), jax.random.split(key, HORIZON))[1]

    rows = jax.vmap(episode)(jax.random.split(jax.random.PRNGKey(0), EPISODES))
    obs, actions, rewards, next_obs = (np.asarray(x).reshape(EPISODES * HORIZON, -1) for x in rows)
    timeouts = np.zeros((EPISODES, HORIZON), np.float32)
    timeouts[:, -1] = 1
    path = tmp_path_factory.mktemp("data") / "pendulum-random.hdf5"
    arrays = {
        "observations": obs, "actions": actions, "rewards": rewards[:, 0],
        "terminals": np.zeros(EPISODES * HORIZON, np.float32), "timeouts": timeouts.ravel(),
        "next_observations": next_obs,
    }  # fmt: skip
    metadata = {
        "env": {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": HORIZON},
        "ref_min_score": REFERENCES[0],
        "ref_max_score": REFERENCES[1],
    }
    write_d4rl(path, arrays, metadata)
    return path


def offline_spec(dataset_path, algo="bc", **changes) -> RunSpec:
    env = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": HORIZON}
    spec = RunSpec(algo=algo, env=env, agent=dict(TINY), chunk_updates=4, dataset=str(dataset_path))
    spec.eval_episodes = 3
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def test_cli_trains_an_offline_agent_from_a_dataset(dataset_path, tmp_path, capsys):
    """The env comes from the dataset's metadata; each chunk ends with an evaluation, logged at
    its last update; the summary has the normalized scores; ``rljax eval`` works on the run."""
    out = tmp_path / "run"
    argv = ["train", "iql", "--dataset", str(dataset_path), "--total-steps", "8", "--seeds", "2"]
    argv += ["--chunk-updates", "4", "--eval-episodes", "2", "--out", str(out)]
    argv += ["--set", "hidden_sizes=[16,16]", "--set", "batch_size=32"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "gradient steps/s" in printed and "score" in printed
    saved = RunSpec.load(out / "config.yaml")
    assert saved.env == {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": 50}
    assert saved.dataset == str(dataset_path) and saved.eval_episodes == 2
    lines = (out / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    evaluated = [int(r["update"]) for r in rows if float(r["episodes"]) > 0]
    assert evaluated == [4, 4, 8, 8]  # two members, evaluated after each chunk
    summary = json.loads((out / "summary.json").read_text())
    for member in summary["final_returns"]:
        score = 100 * (member["final_return"] - REFERENCES[0]) / (REFERENCES[1] - REFERENCES[0])
        assert member["final_score"] == pytest.approx(score)
    assert (out / "curve.png").exists()
    assert cli.main(["eval", str(out), "--episodes", "2", "--deterministic", "--members"]) == 0
    assert "member 1" in capsys.readouterr().out


def test_evaluation_does_not_change_training(dataset_path, tmp_path):
    """The evaluation key is folded from the agent's, so how often a run is evaluated leaves
    its parameters as they are."""
    train(offline_spec(dataset_path), tmp_path / "a", print_fn=quiet)
    train(offline_spec(dataset_path, chunk_updates=2), tmp_path / "b", print_fn=quiet)
    for a, b in zip(
        checkpoint_leaves(tmp_path / "a"), checkpoint_leaves(tmp_path / "b"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_interrupted_offline_run_resumes_bit_for_bit(dataset_path, tmp_path):
    straight = tmp_path / "straight"
    train(offline_spec(dataset_path), straight, checkpoint_seconds=0, print_fn=quiet)

    def crash_after_first_chunk(line):
        if line.startswith("[") and "50.0%" in line:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(
            offline_spec(dataset_path),
            resumed,
            checkpoint_seconds=0,
            print_fn=crash_after_first_chunk,
        )
    train(offline_spec(dataset_path), resumed, resume=True, checkpoint_seconds=0, print_fn=quiet)
    for a, b in zip(checkpoint_leaves(straight), checkpoint_leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()


def test_offline_sweep_member_equals_its_single_run(dataset_path, tmp_path):
    sweep = train(
        offline_spec(dataset_path, grid={"lr": [1e-3, 3e-4]}), tmp_path / "sweep", print_fn=quiet
    )
    single = train(
        offline_spec(dataset_path, agent={**TINY, "lr": 3e-4}), tmp_path / "one", print_fn=quiet
    )
    swept = [m["final_return"] for m in sweep["final_returns"] if m["lr"] == 3e-4]
    assert swept == [m["final_return"] for m in single["final_returns"]]
    assert (tmp_path / "sweep" / "sweep.csv").exists()


def test_offline_and_online_inputs_are_checked(dataset_path):
    with pytest.raises(ConfigError, match="--dataset is for the offline agents.*td3_bc"):
        build_program(
            resolve_spec(
                RunSpec(algo="ppo", env={"name": "CartPole-v1"}, dataset=str(dataset_path))
            )
        )
    with pytest.raises(ConfigError, match="learns offline: pass --dataset"):
        build_program(resolve_spec(offline_spec(dataset_path, dataset=None)))
    with pytest.raises(ConfigError, match="eval_episodes=0"):
        build_program(resolve_spec(offline_spec(dataset_path, eval_episodes=0)))
    with pytest.raises(
        ConfigError, match="hiql is goal-conditioned, but Pendulum-v1 sets no goals"
    ):
        build_program(resolve_spec(offline_spec(dataset_path, algo="hiql")))
    with pytest.raises(ConfigError, match="CartPole-v1 observes shape \\(4,\\)"):
        build_program(resolve_spec(offline_spec(dataset_path, env={"name": "CartPole-v1"})))
    with pytest.raises(ConfigError, match="set env.unit_actions=true"):
        build_program(
            resolve_spec(
                offline_spec(dataset_path, env={"name": "Pendulum-v1", "unit_actions": False})
            )
        )
    sums = "value_p_curgoal \\+ value_p_trajgoal \\+ value_p_randomgoal = 1.4; they must sum"
    with pytest.raises(ConfigError, match=sums):
        build_program(
            resolve_spec(offline_spec(dataset_path, algo="hiql", agent={"value_p_curgoal": 0.6}))
        )


def test_cli_evaluation_env_other_than_the_datasets_is_named(dataset_path, tmp_path, capsys):
    """--env naming another env does not inherit the metadata's options (Pendulum's
    unit_actions and episode length), and its mismatch with the data is named."""
    args = ["train", "bc", "--dataset", str(dataset_path), "--out", str(tmp_path / "run")]
    assert cli.main([*args, "--env", "CartPole-v1"]) == 2
    assert "CartPole-v1 observes shape (4,)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_missing_dataset_names_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RLJAX_DATA_DIR", str(tmp_path))
    assert cli.main(["train", "iql", "--dataset", "pendulum-nothing"]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / "pendulum-nothing.hdf5") in error and "rljax data generate" in error


def test_actions_outside_the_unit_box_are_named(dataset_path, tmp_path):
    """Datasets store actions in [-1, 1]; a file in torque units is refused by name, with the
    command that rescales it."""
    from rljax.data import read_d4rl

    arrays, metadata = read_d4rl(dataset_path)
    arrays["actions"] = 2 * arrays["actions"]
    write_d4rl(tmp_path / "torques.hdf5", arrays, metadata)
    with pytest.raises(ValueError, match="holds actions in .* data convert .* --rescale-actions"):
        train(offline_spec(tmp_path / "torques.hdf5"), tmp_path / "run", print_fn=quiet)


def test_unit_actions_map_onto_the_bounds():
    env, params = envs_make("Pendulum-v1", unit_actions=True)
    raw_env, _ = envs_make("Pendulum-v1")
    space = env.action_space(params)
    assert (space.low, space.high) == (-1.0, 1.0)
    key = jax.random.PRNGKey(0)
    _, state = env.reset(key, params)
    for unit, torque in [(1.0, 2.0), (-0.5, -1.0), (0.0, 0.0)]:
        a = env.step(key, state, jnp.array([unit]), params)[0]
        b = raw_env.step(key, state, jnp.array([torque]), params)[0]
        np.testing.assert_allclose(a, b)


# --- Goal-conditioned runs ---


def test_evaluation_runs_every_task_and_reads_the_goal_from_the_state():
    """Five tasks x 3 episodes; the noise-free oracle, given the goal that evaluation reads
    from the env state, succeeds in all of them, and a policy that stands still in none."""
    from rljax.envs import maze
    from rljax.runner import evaluation

    env, params = envs_make("rljax/PointMaze-medium")
    oracle = maze.PointMaze("medium")
    batched, axes, num_envs = evaluation.episode_params(env, params, 3)
    np.testing.assert_array_equal(batched.task_id, np.repeat(np.arange(1, 6), 3))

    def run(policy):
        def episodes(key):
            return evaluation.first_episode_returns(policy, env, batched, num_envs, key, axes)

        return np.asarray(jax.jit(episodes)(jax.random.PRNGKey(0)))

    goal_seeking = run(lambda obs, state, key: oracle.oracle_action(obs, evaluation.goal_of(state)))
    standing = run(lambda obs, state, key: jnp.zeros_like(obs))
    np.testing.assert_array_equal(goal_seeking, np.ones(15))
    np.testing.assert_array_equal(standing, np.zeros(15))


def test_cli_trains_a_goal_conditioned_agent_on_a_maze_dataset(tmp_path, capsys):
    data = tmp_path / "data"
    generate = ["data", "generate", "rljax/GridMaze-medium", "--kind", "navigate"]
    assert cli.main([*generate, "--episodes", "20", "--out", str(data)]) == 0
    out = tmp_path / "run"
    argv = ["train", "gcbc", "--dataset", str(data / "gridmaze-medium-navigate-v0.npz")]
    argv += [
        "--total-steps",
        "4",
        "--chunk-updates",
        "2",
        "--eval-episodes",
        "2",
        "--out",
        str(out),
    ]
    argv += ["--set", "hidden_sizes=[8]", "--set", "batch_size=16", "--set", "discrete=true"]
    assert cli.main(argv) == 0
    assert RunSpec.load(out / "config.yaml").env == {"name": "rljax/GridMaze-medium"}
    summary = json.loads((out / "summary.json").read_text())
    for member in summary["final_returns"]:  # the success rate over 5 tasks x 2 episodes
        assert member["final_return"] * 10 == pytest.approx(round(member["final_return"] * 10))
        assert member["final_score"] == pytest.approx(100 * member["final_return"])
    assert cli.main(["eval", str(out), "--episodes", "1", "--deterministic"]) == 0
    capsys.readouterr()
