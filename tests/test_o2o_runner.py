"""The runner's fine-tuning phase: a dataset agent trained offline, then online, in one run
directory: one step axis with the boundary, both phases' metrics, resume across the boundary
bit for bit, the online policy loaded back, and the named errors."""

import json

import jax
import numpy as np
import pytest
from runs import assert_resumes_bit_for_bit, quiet, random_pendulum_dataset

from rljax import cli
from rljax.runner.config import ConfigError, FieldOutOfRange
from rljax.runner.loop import train
from rljax.runner.policy import load_policy
from rljax.runner.sinks import read_tables
from rljax.runner.spec import RunSpec

HORIZON = 20
ENV = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": HORIZON}
# 8 offline gradient steps in chunks of 4, then 12 env steps of 2 envs: 6 online updates.
TINY = {"hidden_sizes": [16, 16], "batch_size": 16, "total_updates": 8, "online_steps": 12,
        "num_envs": 2}  # fmt: skip


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pendulum-random.hdf5"
    return random_pendulum_dataset(path, ENV, HORIZON)


def spec(dataset_path, **agent) -> RunSpec:
    return RunSpec(
        algo="iql", env=ENV, agent={**TINY, **agent}, dataset=str(dataset_path), chunk_updates=2,
        eval_episodes=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(dataset_path, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "straight"
    train(spec(dataset_path), run, checkpoint_seconds=0, print_fn=quiet)
    return run


def test_one_run_goes_offline_then_online_on_one_step_axis(straight):
    table = read_tables([straight / "metrics.csv"])
    np.testing.assert_array_equal(table["update"], np.arange(1, 15))
    # Gradient steps 1..8, then env steps after them: 2 per online update.
    steps = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20]
    np.testing.assert_array_equal(table["env_steps"], steps)  # the step axis
    offline, online = slice(0, 8), slice(8, 14)
    assert np.isnan(table["episode_train_return"][offline]).all()  # an online-only metric
    assert np.isfinite(table["value_loss"]).all()  # both phases' losses
    evaluated = np.flatnonzero(np.isfinite(table["episode_return"])) + 1
    np.testing.assert_array_equal(evaluated, [2, 4, 6, 8, 10, 12, 14])  # every chunk, both phases
    assert np.isfinite(table["episode_return"][online][1::2]).all()
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["num_updates"] == 14 and summary["offline_updates"] == 8
    assert summary["env_steps_per_member"] == 12
    row = summary["final_returns"][0]
    assert row["offline_final_return"] == pytest.approx(table["episode_return"][7], abs=1e-3)
    assert row["final_return"] == pytest.approx(table["episode_return"][13], abs=1e-3)
    assert {"final_score", "offline_final_score"} <= set(row)
    assert (straight / "curve.png").stat().st_size > 0


# 14 updates in chunks of 2: after update 6 (offline), 8 (the boundary), 10 (online).
@pytest.mark.parametrize("crash_at", ["42.9%", "57.1%", "71.4%"])
def test_an_interrupted_run_resumes_bit_for_bit_in_either_phase(
    dataset_path, straight, tmp_path, crash_at
):
    assert_resumes_bit_for_bit(train, spec(dataset_path), straight, tmp_path / "resumed", crash_at)


def test_the_online_policy_loads_from_the_run_directory_alone(straight):
    policy = load_policy(straight, deterministic=True)
    action = policy(np.zeros(3, np.float32), jax.random.PRNGKey(0))
    assert action.shape == (1,) and np.abs(action).max() <= 2.0  # the env's torques


def test_cli_runs_both_phases(dataset_path, tmp_path, capsys):
    out = tmp_path / "cli"
    cli.main([
        "train", "iql", "--dataset", str(dataset_path), "--offline-steps", "4",
        "--online-steps", "4", "--set", "num_envs=2", "--set", "hidden_sizes=[8]",
        "--set", "batch_size=8", "--chunk-updates", "2", "--eval-episodes", "1", "--out", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "then 4 steps online" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_updates"] == 6 and summary["offline_updates"] == 4


def test_bad_fine_tuning_input_is_named(dataset_path, tmp_path):
    with pytest.raises(ConfigError, match="bc cannot fine-tune online.*iql"):
        train(RunSpec(algo="bc", env=ENV, agent={"online_steps": 10},
                      dataset=str(dataset_path)), tmp_path / "a", print_fn=quiet)  # fmt: skip
    with pytest.raises(FieldOutOfRange, match="offline_fraction"):
        train(spec(dataset_path, offline_fraction=1.5), tmp_path / "b", print_fn=quiet)
    # online_steps=10 with 2 envs is 5 online updates, which chunks of 2 do not divide.
    with pytest.raises(FieldOutOfRange, match=r"chunk_updates=2 must divide .* online updates"):
        train(spec(dataset_path, online_steps=10), tmp_path / "c", print_fn=quiet)
