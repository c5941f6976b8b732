"""Checkpoints you can trust: checksums verified on every restore, one fallback for resume,
``rljax eval``, ``load_policy`` and export, and one warning line per bad step."""

import os
import re
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from runs import checkpoint_leaves, quiet, tiny_spec

from rljax import cli
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.errors import RunError
from rljax.runner.loop import train
from rljax.runner.policy import load_policy, restore

# The CLI form of tiny_spec(): 8 updates in chunks of 2, a checkpoint after each chunk.
TINY_CLI = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "512", "--chunk-updates", "2"]
TINY_CLI += ["--checkpoint-seconds", "0", "--set", "num_envs=4", "--set", "num_steps=16"]
TINY_CLI += ["--set", "num_minibatches=2", "--set", "update_epochs=2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A finished tiny run (steps 6 and 8 kept) and the leaves of its step 6."""
    base = tmp_path_factory.mktemp("checkpoints")
    train(tiny_spec(), base / "run", checkpoint_seconds=0, print_fn=quiet)
    shutil.copytree(base / "run", base / "at6")
    shutil.rmtree(base / "at6" / "checkpoints" / "8")
    (base / "at6" / "checkpoints" / "8.sha256").unlink()
    return base / "run", checkpoint_leaves(base / "at6")


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _largest_file(run_dir, step):
    files = [p for p in (run_dir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _damage(run_dir, step, how="flip"):
    """Flips 64 bytes in the middle of the step's largest file, or truncates it to half."""
    path = _largest_file(run_dir, step)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    if how == "flip":
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    else:
        del data[middle:]
    path.write_bytes(bytes(data))


def _assert_leaves_equal(expected, state):
    actual = [np.asarray(x) for x in jax.tree.leaves(state)]
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_finished_run_keeps_two_steps_each_with_its_checksum(straight):
    run, _ = straight
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["6", "6.sha256", "8", "8.sha256"]
    checkpoints = Checkpoints(run / "checkpoints", read_only=True)
    assert checkpoints.verify(6) is None and checkpoints.verify(8) is None
    checkpoints.close()


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_eval_and_load_policy_fall_back_from_a_damaged_step(straight, tmp_path, capsys, how):
    """The damaged step 8 is passed over with one warning; the state is step 6's, bit for bit;
    a reader leaves the run directory as it found it."""
    run, leaves_at_6 = straight
    broken = _copy(run, tmp_path)
    _damage(broken, 8, how)
    before = sorted(p.name for p in (broken / "checkpoints").iterdir())
    cause = r"update 8 is unreadable \(checksum mismatch in default/.+\); using update 6$"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, state, step = restore(broken)
        assert cli.main(["eval", str(broken), "--episodes", "2"]) == 0
        policy = load_policy(broken)
    assert step == 6
    _assert_leaves_equal(leaves_at_6, state)
    assert "update 6" in capsys.readouterr().out
    messages = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    assert len(messages) == 3 and all(re.search(cause, m) for m in messages)
    assert callable(policy)
    assert sorted(p.name for p in (broken / "checkpoints").iterdir()) == before


def test_a_step_without_its_checksum_counts_as_unreadable(straight, tmp_path):
    run, leaves_at_6 = straight
    broken = _copy(run, tmp_path)
    (broken / "checkpoints" / "8.sha256").unlink()
    with pytest.warns(UserWarning, match=r"update 8 is unreadable \(no checksum was recorded"):
        _, state, step = restore(broken)
    assert step == 6
    _assert_leaves_equal(leaves_at_6, state)


def test_resume_sets_a_damaged_step_aside_and_ends_bit_identical(straight, tmp_path):
    run, _ = straight
    broken = _copy(run, tmp_path)
    _damage(broken, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(tiny_spec(), broken, resume=True, checkpoint_seconds=0, print_fn=quiet)
    messages = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    set_aside = (
        r"^checkpoint at update 8 is unreadable \(checksum mismatch in .+\) and was set aside "
        r"as corrupt-8; using update 6$"
    )
    assert len(messages) == 1 and re.search(set_aside, messages[0])
    assert summary["num_updates"] == 8
    names = sorted(p.name for p in (broken / "checkpoints").iterdir())
    assert names == ["6", "6.sha256", "8", "8.sha256", "corrupt-8", "corrupt-8.sha256"]
    for a, b in zip(checkpoint_leaves(run), checkpoint_leaves(broken), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (run / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_every_step_damaged_is_a_named_error(straight, tmp_path, capsys):
    run, _ = straight
    broken = _copy(run, tmp_path)
    _damage(broken, 8)
    _damage(broken, 6, "truncate")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RunError, match="has no readable checkpoint"):
            restore(broken)
        assert cli.main(["eval", str(broken)]) == 2
    messages = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    assert len(messages) == 4 and all("no older checkpoint is readable" in m for m in messages)
    steps = [m.split(" is ")[0].removeprefix("checkpoint at update ") for m in messages]
    assert steps == ["8", "6", "8", "6"]
    assert "has no readable checkpoint" in capsys.readouterr().err


def test_a_cli_resume_from_a_damaged_step_prints_one_line_and_no_traceback(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TINY_CLI, "--out", str(run)]) == 0
    _damage(run, 8)
    environment = {**os.environ, "RLJAX_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "rljax.cli", *TINY_CLI, "--out", str(run), "--resume"],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout and "from update 6" in done.stdout
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert [line for line in lines if "checkpoint" in line] == [
        line for line in lines if "update 8 is unreadable" in line
    ]
    assert len(lines) <= 3, done.stderr
