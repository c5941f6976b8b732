"""Policies leave the library correctly: from the run directory alone, in the env's own action
units, and as a ``jax.export`` artifact that runs with jax alone."""

import json
import subprocess
import sys
import textwrap

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import quiet

from rljax import cli, evaluate_run, load_policy
from rljax.data import write_d4rl
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

EPISODES, HORIZON = 6, 50


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory):
    """BC trained on bang-bang [-1, 1] torques of Pendulum-v1 (so its actions are large), then
    the dataset deleted: what is left is the run directory."""
    env, params = gymnax.make("Pendulum-v1")

    def episode(key):
        obs, state = env.reset(key, params)

        def step(carry, key):
            obs, state = carry
            action = jnp.sign(obs[2:3] + 1e-3)  # push along the motion: |action| = 1
            next_obs, state, reward, *_ = env.step(key, state, 2 * action, params)
            return (next_obs, state), (obs, action, reward, next_obs)

        return jax.lax.scan(step, (obs, state), jax.random.split(key, HORIZON))[1]

    rows = jax.vmap(episode)(jax.random.split(jax.random.PRNGKey(0), EPISODES))
    obs, actions, rewards, next_obs = (np.asarray(x).reshape(EPISODES * HORIZON, -1) for x in rows)
    timeouts = np.zeros((EPISODES, HORIZON), np.float32)
    timeouts[:, -1] = 1
    directory = tmp_path_factory.mktemp("policy")
    dataset = directory / "pendulum-bangbang.hdf5"
    arrays = {
        "observations": obs, "actions": actions, "rewards": rewards[:, 0],
        "terminals": np.zeros(EPISODES * HORIZON, np.float32), "timeouts": timeouts.ravel(),
        "next_observations": next_obs,
    }  # fmt: skip
    env_spec = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": HORIZON}
    write_d4rl(dataset, arrays, {"env": env_spec})
    spec = RunSpec(
        algo="bc", agent={"hidden_sizes": [32, 32], "batch_size": 64, "total_updates": 200},
        chunk_updates=100, dataset=str(dataset), eval_episodes=2,
    )  # fmt: skip
    train(spec, directory / "run", print_fn=quiet)
    dataset.unlink()
    return directory / "run"


def test_load_policy_acts_in_the_envs_torques_and_scores_what_eval_reports(pendulum_run):
    """In a plain Python loop on gymnax's own Pendulum-v1 (torques in [-2, 2]), the loaded
    policy's returns are those ``rljax eval`` reports for the same initial states."""
    policy = load_policy(pendulum_run, deterministic=True)
    env, params = gymnax.make("Pendulum-v1")
    params = params.replace(max_steps_in_episode=HORIZON)
    episodes, seed = 4, 3
    reported, _, _ = evaluate_run(pendulum_run, episodes, deterministic=True, seed=seed)
    # evaluate_run's reset keys for member 0 (rljax.runner.evaluation.rollout)
    member_key = jax.random.split(jax.random.PRNGKey(seed), 1)[0]
    reset_keys = jax.random.split(jax.random.split(member_key)[1], episodes)
    returns, largest = [], 0.0
    for reset_key in reset_keys:
        obs, state = env.reset(reset_key, params)
        total = 0.0
        for _ in range(HORIZON):
            action = policy(obs, jax.random.PRNGKey(0))
            largest = max(largest, float(jnp.abs(action).max()))
            obs, state, reward, *_ = env.step(jax.random.PRNGKey(0), state, action, params)
            total += float(reward)
        returns.append(total)
    assert largest > 1.2  # torques beyond the dataset's [-1, 1]: the env's own units
    np.testing.assert_allclose(returns, np.asarray(reported)[0], rtol=1e-4)


def test_exported_policy_runs_with_jax_alone_and_matches_load_policy(pendulum_run, tmp_path):
    out = tmp_path / "policy.jax"
    assert cli.main(["export", str(pendulum_run), str(out)]) == 0
    signature = json.loads((tmp_path / "policy.jax.json").read_text())
    assert [x["name"] for x in signature["inputs"]] == ["obs", "key"]
    assert signature["inputs"][0]["shape"] == [3] and signature["outputs"][0]["shape"] == [1]
    observations = np.random.default_rng(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["rljax"] = sys.modules["flax"] = None  # neither may be needed
        import jax, numpy as np
        exported = jax.export.deserialize(open({str(out)!r}, "rb").read())
        obs = np.array({observations.tolist()!r}, np.float32)
        actions = [exported.call(o, jax.random.PRNGKey(0)) for o in obs]
        print(np.asarray(actions).tolist())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    exported_actions = np.array(json.loads(done.stdout))
    policy = load_policy(pendulum_run, deterministic=True)
    expected = [np.asarray(policy(o, jax.random.PRNGKey(0))) for o in observations]
    np.testing.assert_allclose(exported_actions, expected, rtol=1e-5, atol=1e-6)


def test_a_goal_conditioned_policy_takes_the_goal(tmp_path):
    data = tmp_path / "data"
    generate = ["data", "generate", "rljax/PointMaze-medium", "--kind", "navigate"]
    assert cli.main([*generate, "--episodes", "4", "--steps", "101", "--out", str(data)]) == 0
    out = tmp_path / "run"
    argv = ["train", "gcbc", "--dataset", str(data / "pointmaze-medium-navigate-v0.npz")]
    argv += ["--total-steps", "2", "--chunk-updates", "2", "--eval-episodes", "1"]
    argv += ["--out", str(out), "--set", "hidden_sizes=[8]", "--set", "batch_size=8"]
    assert cli.main(argv) == 0
    obs, goal = np.zeros(2, np.float32), np.ones(2, np.float32)
    action = load_policy(out, deterministic=True)(obs, goal, jax.random.PRNGKey(0))
    assert action.shape == (2,) and np.all(np.abs(action) <= 1)
    assert cli.main(["export", str(out), str(tmp_path / "gc.jax")]) == 0
    signature = json.loads((tmp_path / "gc.jax.json").read_text())
    assert [x["name"] for x in signature["inputs"]] == ["obs", "goal", "key"]
