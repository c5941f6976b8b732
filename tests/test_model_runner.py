"""The runner's model phase: a model-based agent fits its dynamics model, then trains its
policy, in one run directory: one step axis with the boundary, both phases' metrics (the policy
phase evaluated, the model phase not), resume across the boundary bit for bit, the policy loaded
back, the termination function set from the dataset's env, and the named errors."""

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
from rljax.runner.spec import RunSpec, resolve_spec

HORIZON = 20
ENV = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": HORIZON}
# 6 model steps, then 8 policy steps, in chunks of 2; rollouts every 4 policy steps.
TINY = {
    "hidden_sizes": [8], "batch_size": 8, "model_updates": 6, "total_updates": 8,
    "num_models": 3, "num_elites": 2, "model_hidden_sizes": [8], "model_weight_decay": [0.0, 0.0],
    "model_batch_size": 8,
    "holdout_interval": 2, "rollout_freq": 4, "rollout_batch_size": 4, "rollout_length": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pendulum-random.hdf5"
    return random_pendulum_dataset(path, ENV, HORIZON)


def spec(dataset_path, **agent) -> RunSpec:
    return RunSpec(
        algo="mopo", env=ENV, agent={**TINY, **agent}, dataset=str(dataset_path),
        chunk_updates=2, eval_episodes=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(dataset_path, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "straight"
    train(spec(dataset_path), run, checkpoint_seconds=0, print_fn=quiet)
    return run


def test_one_run_fits_the_model_then_the_policy_on_one_step_axis(straight):
    table = read_tables([straight / "metrics.csv"])
    np.testing.assert_array_equal(table["update"], np.arange(1, 15))
    np.testing.assert_array_equal(table["env_steps"], np.arange(1, 15))  # model, then policy
    model, policy = slice(0, 6), slice(6, 14)
    assert np.isfinite(table["model_holdout_mse"][model]).all()
    assert np.isnan(table["model_holdout_mse"][policy]).all()  # a model-phase metric
    assert np.isnan(table["critic_loss"][model]).all()
    assert np.isfinite(table["critic_loss"][policy]).all()
    evaluated = np.flatnonzero(np.isfinite(table["episode_return"])) + 1
    np.testing.assert_array_equal(evaluated, [8, 10, 12, 14])  # the policy phase's chunks only
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["num_updates"] == 14 and summary["model_updates"] == 6
    assert summary["env_steps_per_member"] is None
    row = summary["final_returns"][0]
    assert row["final_return"] == pytest.approx(table["episode_return"][13], abs=1e-3)
    assert "model_final_return" not in row  # the model phase evaluates no policy
    assert (straight / "state_structure_policy.pkl").exists()
    assert (straight / "curve.png").stat().st_size > 0


# 14 updates in chunks of 2: after update 4 (model), 6 (the boundary), 8 (policy).
@pytest.mark.parametrize("crash_at", ["28.6%", "42.9%", "57.1%"])
def test_an_interrupted_run_resumes_bit_for_bit_in_either_phase(
    dataset_path, straight, tmp_path, crash_at
):
    assert_resumes_bit_for_bit(train, spec(dataset_path), straight, tmp_path / "resumed", crash_at)


def test_the_policy_loads_from_the_run_directory_alone(straight):
    policy = load_policy(straight, deterministic=True)
    action = policy(np.zeros(3, np.float32), jax.random.PRNGKey(0))
    assert action.shape == (1,) and np.abs(action).max() <= 2.0  # the env's torques


def test_the_termination_function_follows_the_dataset_env(dataset_path):
    assert resolve_spec(spec(dataset_path)).agent["termination"] == "Pendulum-v1"
    chosen = resolve_spec(spec(dataset_path, termination="none")).agent["termination"]
    assert chosen == "none"  # what the fields say stays


def test_cli_runs_both_phases(dataset_path, tmp_path, capsys):
    out = tmp_path / "cli"
    cli.main([
        "train", "mopo", "--dataset", str(dataset_path), "--model-steps", "2",
        "--offline-steps", "2", "--chunk-updates", "2", "--eval-episodes", "1", "--out", str(out),
        *[f"--set={k}={json.dumps(v)}" for k, v in TINY.items()
          if k not in ("model_updates", "total_updates")],
    ])  # fmt: skip
    assert "a dynamics model of it fitted first (2 model steps)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_updates"] == 4 and summary["model_updates"] == 2


def test_bad_model_based_input_is_named(dataset_path, tmp_path):
    with pytest.raises(ConfigError, match="iql fits no dynamics model.*mopo"):
        train(RunSpec(algo="iql", env=ENV, agent={"model_updates": 10},
                      dataset=str(dataset_path)), tmp_path / "a", print_fn=quiet)  # fmt: skip
    with pytest.raises(FieldOutOfRange, match=r"chunk_updates=4 must divide .* model updates"):
        train(RunSpec(algo="mopo", env=ENV, agent=TINY, dataset=str(dataset_path),
                      chunk_updates=4), tmp_path / "b", print_fn=quiet)  # fmt: skip
    with pytest.raises(FieldOutOfRange, match=r"model_updates=0 is out of range"):
        train(spec(dataset_path, model_updates=0), tmp_path / "c", print_fn=quiet)


def test_a_policy_phase_with_nothing_to_learn_from_stops_the_run_by_name(
    dataset_path, tmp_path, monkeypatch
):
    """MBRCSL keeps no model rollout when none beats the data's best return: the runner calls
    its check_begin_policy after begin_policy and the run stops with its named error (the
    threshold raised out of reach here)."""
    from rljax.agents import mbrcsl

    init = mbrcsl.init
    monkeypatch.setattr(mbrcsl, "init", lambda *a: init(*a).replace(threshold=np.float32(1e6)))
    fields = {
        "hidden_sizes": [8], "batch_size": 8, "model_updates": 2, "total_updates": 2,
        "num_models": 2, "num_elites": 1, "model_hidden_sizes": [8],
        "model_weight_decay": [0.0, 0.0], "model_batch_size": 8, "holdout_interval": 1,
        "behavior_hidden_sizes": [8], "behavior_batch_size": 8, "behavior_diffusion_steps": 2,
        "horizon": HORIZON, "rollout_batch_size": 4, "num_needed": 2, "max_rounds": 2,
    }  # fmt: skip
    run = RunSpec(algo="mbrcsl", env=ENV, agent=fields, dataset=str(dataset_path),
                  eval_episodes=1)  # fmt: skip
    with pytest.raises(mbrcsl.NoRolloutAboveThreshold, match="of 8 trajectories"):
        train(run, tmp_path / "run", print_fn=quiet)
