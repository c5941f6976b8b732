"""Runs that survive faults: divergence guard, signals, broken checkpoints, metadata, retraces."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from runs import checkpoint_leaves, quiet, tiny_spec

from rljax import agents
from rljax.agents import ppo
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.errors import Divergence
from rljax.runner.guard import first_failures
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec


def test_first_failures_names_every_bad_quantity_at_the_first_bad_update():
    metrics = {
        "loss": np.array([[1.0, np.nan, np.nan], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
        "grad_norm": np.array([[1.0, np.inf, 1.0], [1.0, 1.0, np.nan], [1.0, 1.0, 1.0]]),
        "episode_return": np.full((3, 3), np.nan),  # NaN while no episode ended: not guarded
    }
    failures = first_failures(metrics, np.array([11, 12, 13]), np.array([True, True, False]))
    assert failures == {0: (["grad_norm", "loss"], 12), 1: (["grad_norm"], 13), 2: (["params"], 13)}


def test_a_diverging_sweep_member_fails_alone(tmp_path):
    """lr=1e30 blows up its member; the other member finishes and is ranked."""
    summary = train(tiny_spec(grid={"lr": [2.5e-4, 1e30]}), tmp_path / "run", print_fn=quiet)
    assert list(summary["failed"]) == ["1"] and "not finite at update 1" in summary["failed"]["1"]
    healthy, failed = summary["final_returns"]
    assert healthy["final_return"] > 0 and not healthy["failed"]
    assert failed["final_return"] is None and failed["failed"]
    assert summary["ranking"][0]["lr"] == 2.5e-4 and summary["ranking"][1]["failed"] == 1
    sweep_table = (tmp_path / "run" / "sweep.csv").read_text().splitlines()
    assert sweep_table[0].startswith("config,lr,seeds,failed") and sweep_table[2].endswith(",,,,")


def test_divergence_of_every_member_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN injected at update 5 stops the run naming it; the update-4 checkpoint survives."""

    def update_with_nan_from_update_5(config, env, env_params, state):
        state, metrics = ppo.update(config, env, env_params, state)
        loss = jnp.where(state.update_step >= 5, jnp.nan, metrics["loss"])
        return state, {**metrics, "loss": loss}

    agent = type("Agent", (), {**vars(ppo), "update": staticmethod(update_with_nan_from_update_5)})
    monkeypatch.setattr(agents, "get", lambda name: agent)
    with pytest.raises(
        Divergence, match=r"member 0 .*: loss is not finite at update 5; .*update 4"
    ):
        train(tiny_spec(), tmp_path / "run", checkpoint_seconds=0, print_fn=quiet)
    assert Checkpoints(tmp_path / "run" / "checkpoints").latest_step() == 4


def test_a_broken_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    """Truncating the newest checkpoint's data makes --resume warn and use the one before."""
    train(tiny_spec(), tmp_path / "straight", checkpoint_seconds=0, print_fn=quiet)
    shutil.copytree(tmp_path / "straight", tmp_path / "broken")
    data = [p for p in (tmp_path / "broken" / "checkpoints" / "8").rglob("*") if p.is_file()]
    for path in sorted(data, key=lambda p: p.stat().st_size)[-3:]:  # the array data files
        path.write_bytes(path.read_bytes()[:10])
    with pytest.warns(UserWarning, match="checkpoint at update 8 is unreadable"):
        summary = train(
            tiny_spec(), tmp_path / "broken", resume=True, checkpoint_seconds=0, print_fn=quiet
        )
    assert summary["num_updates"] == 8
    for a, b in zip(
        checkpoint_leaves(tmp_path / "straight"),
        checkpoint_leaves(tmp_path / "broken"),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_the_chunk_is_traced_once_per_run_not_per_chunk(tmp_path):
    summary = train(tiny_spec(chunk_updates=1), tmp_path / "run", print_fn=quiet)
    assert summary["chunk_traces"] == 1


def test_every_run_directory_records_where_it_ran(tmp_path):
    train(tiny_spec(), tmp_path / "run", print_fn=quiet)
    train(tiny_spec(), tmp_path / "run", resume=True, print_fn=quiet)
    starts = json.loads((tmp_path / "run" / "run_info.json").read_text())["starts"]
    assert len(starts) == 2  # the first start and the resume
    record = starts[-1]
    for library in ("python", "jax", "jaxlib", "flax", "optax", "gymnax", "brax"):
        assert record["versions"][library]
    assert record["device_kind"] and record["device_count"] >= 1 and record["backend"] == "cpu"
    assert "xla_flags" in record and isinstance(record["jax_threefry_partitionable"], bool)
    assert record["host"].endswith(f"{len(os.sched_getaffinity(0))} cores")  # a CPU's only name


def test_sigterm_checkpoints_and_resume_is_bit_exact(tmp_path):
    """kill -TERM mid-run: exit 143 after a checkpoint; --resume ends where a straight run does.

    Runs in subprocesses with their own compilation cache, which must keep the init program too.
    """
    args = ["train", "ppo", "--env", "CartPole-v1", "--total-steps", "20480"]
    args += ["--chunk-updates", "1", "--checkpoint-seconds", "0"]
    # Without PYTHONUNBUFFERED, as a pipe is: the progress line must arrive while it trains.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    environment["RLJAX_CACHE_DIR"] = str(tmp_path / "cache")
    command = [sys.executable, "-m", "rljax.cli", *args, "--out", str(tmp_path / "resumed")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    for line in process.stdout:
        if line.startswith("[") and "steps/s" in line:  # training is under way
            process.send_signal(signal.SIGTERM)
            break
    output = process.stdout.read()
    assert process.wait(timeout=300) == 128 + signal.SIGTERM, output
    stopped_at = Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step()
    assert 1 <= stopped_at < 40

    done = subprocess.run(
        [*command, "--resume"], env=environment, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and f"resuming {tmp_path / 'resumed'} from update" in done.stdout
    cached = [entry.name for entry in (tmp_path / "cache").iterdir()]
    assert any("init" in name for name in cached), cached  # under JAX's default 1 s threshold

    spec = RunSpec(algo="ppo", env={"name": "CartPole-v1"}, agent={"total_timesteps": 20480})
    spec.chunk_updates = 1
    train(spec, tmp_path / "straight", checkpoint_seconds=1e9, print_fn=quiet)
    straight, resumed = (
        checkpoint_leaves(tmp_path / "straight"),
        checkpoint_leaves(tmp_path / "resumed"),
    )
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    straight_log = (tmp_path / "straight" / "metrics.csv").read_text()
    assert straight_log == (tmp_path / "resumed" / "metrics.csv").read_text()
