"""A sweep over two processes (jax.distributed, CPU collectives via gloo) equals one process."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from rljax.runner.sinks import read_tables

SWEEP = ["sweep", "ppo", "--env", "CartPole-v1", "--grid", "lr=1e-4,1e-3", "--seeds", "2"]
SWEEP += ["--set", "num_envs=4", "--set", "num_steps=16", "--set", "num_minibatches=2"]
SWEEP += ["--total-steps", "512", "--chunk-updates", "2", "--checkpoint-seconds", "0"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rljax(args, tmp_path, name, devices=1, processes=1, deadline=180):
    """Runs the CLI in ``processes`` processes (each with ``devices`` CPU devices) and waits."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    environment = {**os.environ, "XLA_FLAGS": flags}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        environment.pop(proxy, None)  # a proxy can stall the coordinator's local connection
    port, running = free_port(), []
    for process_id in range(processes):
        command = [sys.executable, "-m", "rljax.cli", *args]
        if processes > 1:
            command += ["--coordinator", f"127.0.0.1:{port}"]
            command += ["--num-processes", str(processes), "--process-id", str(process_id)]
        log = (tmp_path / f"{name}.{process_id}.log").open("w")
        running.append(
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,  # so a stuck process group can be killed whole
            )  # fmt: skip
        )
    end = time.monotonic() + deadline
    try:
        codes = [p.wait(timeout=max(1.0, end - time.monotonic())) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    logs = "\n".join((tmp_path / f"{name}.{i}.log").read_text() for i in range(processes))
    assert codes == [0] * processes, logs
    return logs


def assert_same_run(table, reference):
    for name in reference:
        np.testing.assert_array_equal(table[name], reference[name], err_msg=name)


def test_two_process_sweep_equals_one_process_and_resumes_in_one(tmp_path):
    """A 4-member sweep over 2 processes x 1 device equals, bit for bit, the same sweep in
    1 process x 2 devices (the same members per device); a checkpoint the two processes wrote
    resumes in a single process and finishes as they did."""
    two = rljax([*SWEEP, "--out", tmp_path / "two"], tmp_path, "two", processes=2)
    assert "lr=1e-3" in two
    one = rljax([*SWEEP, "--out", tmp_path / "one"], tmp_path, "one", devices=2)
    assert "ppo on CartPole-v1: 4 member(s)" in one

    shards = sorted(p.name for p in (tmp_path / "two" / "metrics").iterdir())
    assert shards == ["process_0.csv", "process_1.csv"]
    assert set(read_tables([tmp_path / "two" / "metrics" / "process_1.csv"])["member"]) == {2, 3}
    reference = read_tables([tmp_path / "one" / "metrics.csv"])
    assert_same_run(read_tables([tmp_path / "two" / "metrics.csv"]), reference)

    shutil.copytree(tmp_path / "two", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "checkpoints" / "8")  # as if stopped after update 6
    resumed = rljax([*SWEEP, "--out", tmp_path / "again", "--resume"], tmp_path, "again", devices=2)
    assert "from update 6 of 8" in resumed
    assert_same_run(read_tables([tmp_path / "again" / "metrics.csv"]), reference)
