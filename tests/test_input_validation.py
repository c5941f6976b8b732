"""Bad env options and config fields get a named error before anything is built or compiled."""

import subprocess
import sys
import textwrap

import pytest

from rljax import cli, envs
from rljax.agents import ppo
from rljax.runner import config as config_lib


@pytest.mark.parametrize(
    "options, message",
    [
        ({"normalize_obs": "maybe"}, "normalize_obs='maybe' must be true or false"),
        ({"flatten_obs": 1}, "flatten_obs=1 must be true or false"),
        ({"normalize_reward": None}, "normalize_reward=None must be true or false"),
        ({"reward_gamma": 2}, "reward_gamma=2 is out of range"),
        ({"reward_gamma": -0.1}, "reward_gamma=-0.1 is out of range"),
        ({"reward_gamma": "high"}, "reward_gamma='high' is out of range"),
        ({"max_steps_in_episode": -5}, "max_steps_in_episode=-5 is out of range: it must be >= 1"),
        ({"max_steps_in_episode": 0}, "max_steps_in_episode=0 is out of range"),
        ({"max_steps_in_episode": 2.5}, "max_steps_in_episode=2.5 must be an integer"),
        ({"max_steps_in_episode": "long"}, "max_steps_in_episode='long' must be an integer"),
        ({"gravity": "abc"}, "gravity='abc' must be a finite number"),
        ({"gravity": float("nan")}, "gravity=nan must be a finite number"),
        ({"gravity": True}, "gravity=True must be a finite number"),
    ],
)
def test_make_refuses_bad_options_by_name(options, message):
    with pytest.raises(envs.InvalidEnvironmentOption, match=message.replace("(", r"\(")):
        envs.make("CartPole-v1", **options)


def test_make_accepts_and_converts_good_options():
    _, params = envs.make(
        "CartPole-v1",
        normalize_obs=True,
        reward_gamma=1,
        normalize_reward=False,
        max_steps_in_episode=200.0,
        gravity=10,
    )
    assert params.max_steps_in_episode == 200 and isinstance(params.max_steps_in_episode, int)
    assert params.gravity == 10.0 and isinstance(params.gravity, float)


def test_make_checks_array_and_bool_parameters():
    _, params = envs.make("Acrobot-v1", available_torque=[-2, 0, 2])
    assert params.available_torque.tolist() == [-2.0, 0.0, 2.0]
    with pytest.raises(envs.InvalidEnvironmentOption, match="available_torque"):
        envs.make("Acrobot-v1", available_torque=[1, 2])
    with pytest.raises(envs.InvalidEnvironmentOption, match="terminate_at_goal='yes' must be"):
        envs.make("rljax/GridMaze-medium", terminate_at_goal="yes")
    _, params = envs.make("rljax/GridMaze-medium", terminate_at_goal=False)
    assert params.terminate_at_goal is False


def test_wrap_refuses_non_bool_options():
    env, params = envs.make("CartPole-v1")
    with pytest.raises(envs.InvalidEnvironmentOption, match="flatten_obs='no' must be"):
        envs.wrap(env, params, flatten_obs="no")


@pytest.mark.parametrize(
    "value, message",
    [
        ("[-4, 8]", r"hidden_sizes=\[-4, 8\] is out of range: element 0 \(-4\)"),
        ("[64, 0]", r"element 1 \(0\) must be an integer >= 1"),
        ("[64, 2.5]", r"element 1 \(2.5\) must be an integer >= 1"),
        ("[64, true]", r"element 1 \(True\) must be an integer >= 1"),
        ("abc", "hidden_sizes='abc' is not a valid tuple"),
        ("64", "hidden_sizes=64 is not a valid tuple"),
    ],
)
def test_layer_widths_must_be_positive_ints(value, message):
    with pytest.raises(config_lib.FieldOutOfRange, match=message):
        config_lib.make_config(ppo.Config, {"hidden_sizes": value})


def test_layer_widths_accept_whole_numbers():
    config = config_lib.make_config(ppo.Config, {"hidden_sizes": "[32, 16.0]"})
    assert config.hidden_sizes == (32, 16)


def test_every_tuple_default_is_a_tuple_of_sizes():
    """The positive-int rule applies to tuple-of-int defaults; it must hold for each default."""
    import dataclasses
    import importlib

    from rljax.agents import ALGORITHMS

    for module in ALGORITHMS.values():
        for field in dataclasses.fields(importlib.import_module(module).Config):
            if isinstance(field.default, tuple) and config_lib._sizes(field.default):
                assert all(x >= 1 for x in field.default), (module, field.name)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("env.normalize_obs=maybe", "normalize_obs='maybe' must be true or false"),
        ("env.reward_gamma=2", "reward_gamma=2 is out of range"),
        ("env.max_steps_in_episode=-5", "max_steps_in_episode=-5 is out of range"),
        ("hidden_sizes=[-4,8]", "hidden_sizes=[-4, 8] is out of range"),
    ],
)
def test_cli_names_the_bad_value(tmp_path, capsys, setting, message):
    status = cli.main(
        ["train", "ppo", "--env", "CartPole-v1", "--out", str(tmp_path / "run"), "--set", setting]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bad_names_and_fields_fail_before_the_heavy_imports():
    """An unknown algorithm is named before JAX imports; a bad field before the runner, gymnax
    and brax import (JAX and the agent's own libraries are needed to read its Config)."""
    script = textwrap.dedent(
        """
        import sys
        from rljax import cli
        assert cli.main(["train", "nope", "--env", "CartPole-v1"]) == 2
        assert "jax" not in sys.modules, "JAX was imported to reject an unknown algorithm"
        assert cli.main(["train", "ppo", "--env", "CartPole-v1", "--set", "lr=-1"]) == 2
        heavy = [m for m in ("gymnax", "brax", "rljax.runner.loop") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "unknown algorithm 'nope'" in done.stderr and "lr=-1.0 is out of range" in done.stderr
