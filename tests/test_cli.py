"""The rljax command line: end to end in a subprocess, and every bad input as a named error."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rljax import agents, cli, envs
from rljax.agents import ALGORITHMS
from rljax.runner import config as config_lib
from rljax.runner.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "num_envs=4", "--set", "num_steps=16", "--set", "num_minibatches=2"]
TINY += ["--total-steps", "512", "--chunk-updates", "2"]


def rljax(*args, cwd=None) -> subprocess.CompletedProcess:
    # The console script beside this interpreter (its venv), else whichever is on PATH.
    executable = shutil.which("rljax", path=str(Path(sys.executable).parent)) or shutil.which(
        "rljax"
    )
    assert executable, "the rljax console script is not installed"
    return subprocess.run(
        [executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_train_eval_and_envs_end_to_end(tmp_path):
    """A preset, two seeds, progress lines, every result file; then eval and envs."""
    preset = REPO / "configs" / "ppo" / "cartpole.yaml"
    done = rljax(
        "train", "ppo", "--config", preset, "--seeds", "2", *TINY, "--out", tmp_path / "run"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("steps/s") == 4 and "[####################] 100.0%" in done.stdout
    for name in ("config.yaml", "metrics.csv", "curve.png", "summary.json", "checkpoints"):
        assert (tmp_path / "run" / name).exists(), name
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [row["seed"] for row in summary["final_returns"]] == [0, 1]
    assert summary["environment"]["versions"]["jax"] and summary["compile_seconds"] > 0
    assert summary["resolved"]["hidden_sizes"] == [64, 64]  # from the preset

    evaluated = rljax("eval", tmp_path / "run", "--episodes", "3", "--deterministic")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "episode return (IQM over seeds, 95% bootstrap CI):" in evaluated.stdout
    assert "member 1" not in evaluated.stdout  # on request (--members: tests/test_cli_tells.py)
    record = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert record["measure"] == "episode return" and record["references"] is None
    (config,) = record["configs"]
    assert config["seeds"] == 2 and config["ci_low"] <= config["iqm"] <= config["ci_high"]
    assert f"  ppo{' ' * 33} {config['iqm']:9.2f}  [" in evaluated.stdout
    assert [len(member["returns"]) for member in record["members"]] == [3, 3]

    listing = rljax("envs")
    assert listing.returncode == 0 and "brax/hopper" in listing.stdout


def test_the_command_exits_fast_but_says_everything(tmp_path, capsys):
    """``rljax`` ends with os._exit (no interpreter teardown): its status and all its buffered
    output still arrive; under a profiler it exits normally, so the profile is written."""
    failed = rljax("train", "ppo", "--env", "CartPol-v1")
    assert failed.returncode == 2 and "unknown environment 'CartPol-v1'" in failed.stderr
    assert cli.main(["agents"]) == 0
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a pipe is
    listed = subprocess.run(
        [sys.executable, "-m", "rljax.cli", "agents"], capture_output=True, text=True, env=buffered
    )
    assert listed.returncode == 0 and listed.stdout == capsys.readouterr().out
    profile = tmp_path / "cli.prof"
    profiled = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", profile, "-m", "rljax.cli", "agents"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert profiled.returncode == 0, profiled.stderr
    assert profile.stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "ppo", "--env", "CartPol-v1"], "unknown environment 'CartPol-v1'"),
        (
            ["train", "dqn9", "--env", "CartPole-v1"],
            f"unknown algorithm 'dqn9'; known algorithms: {', '.join(sorted(ALGORITHMS))}",
        ),
        (["train", "ppo", "--env", "CartPole-v1", "--set", "lrr=1"], "no field 'lrr'"),
        (["train", "ppo", "--env", "CartPole-v1", "--set", "gamma=2"], "gamma=2.0 is out of range"),
        (
            ["train", "ppo", "--env", "CartPole-v1", "--set", "env.max_steps=9"],
            "no parameter max_steps",
        ),
        (["train", "ppo", "--env", "CartPole-v1", "--seeds", "0"], "seeds=0 is out of range"),
        (
            ["train", "stock_dqn", "--env", "rljax/RiskyShortcut", "--set", "env.normalize_obs=on"],
            "env.normalize_obs=true is not supported for it",
        ),
        (
            ["sweep", "ppo", "--env", "CartPole-v1", "--grid", "num_envs=4,8"],
            "cannot sweep 'num_envs'",
        ),
        (["train", "ppo"], "pass --env NAME"),
        (["train", "ppo", "--env", "CartPole-v1", "--set", "num_minibatches=3"], "must divide"),
        (["train", "ppo", "--config", "tests/data/list_preset.yaml"], "must be a YAML mapping"),
        (["train", "ppo", "--config", "tests/data/broken_preset.yaml"], "is not valid YAML"),
        (["train", "ppo", "--config", "configs/ppo/missing.yaml"], "No such file"),
        (["train", "ppo", "--config", "tests/data/typo_preset.yaml"], "unknown key(s) agnet"),
        (
            ["train", "ppo", "--env", "CartPole-v1", "--offline-steps", "10"],
            "--offline-steps is for the offline agents",
        ),
        (
            ["train", "bc", "--dataset", "d.hdf5", "--online-steps", "10"],
            "bc cannot fine-tune online (--online-steps); the agents that can: calql, cql",
        ),
        (["train", "iql", "--dataset", "d.hdf5", "--online-steps", "inf"], "is not a finite"),
    ],
)
def test_bad_input_is_one_named_error(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    status = cli.main([*args, "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert status == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()


def test_an_existing_run_directory_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    status = cli.main(["train", "ppo", "--env", "CartPole-v1", "--out", str(tmp_path / "run")])
    assert status == 2 and "already exists; pass --resume" in capsys.readouterr().err


def test_eval_of_a_directory_that_is_no_run(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_eval_needs_at_least_one_episode(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path), "--episodes", "0"]) == 2
    assert "episodes=0 is out of range" in capsys.readouterr().err


PRESETS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize(
    "path", PRESETS, ids=[str(p.relative_to(REPO / "configs")) for p in PRESETS]
)
def test_every_preset_is_a_valid_run(path):
    """Each file under configs/ is a run spec for the agent of its folder: known keys, valid
    field values, the agent's own cross-field rules, and an env rljax can make."""
    preset = yaml.safe_load(path.read_text())
    spec = RunSpec(**preset)
    assert spec.algo == path.parent.name, f"{path} configures {spec.algo}"
    declared = agents.declaration(spec.algo)
    declared.check(config_lib.make_config(declared.module.Config, spec.agent))
    if spec.env:
        envs.make(**spec.env)
