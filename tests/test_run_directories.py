"""Run directories: made once and exclusively, held by one writer, every fault one named line.

Each bad input or fault gets its named error, and what was on disk before is left as it was.
"""

import datetime
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from runs import TINY, quiet, tiny_spec

from rljax import cli
from rljax.data import write_d4rl
from rljax.runner import loop
from rljax.runner.errors import DatasetChanged
from rljax.runner.sinks import CsvLog, read_tables
from rljax.runner.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
# tests/runs.py TINY through the command line: 8 updates of 64 steps, in chunks of 2.
TINY_ARGS = ["train", "ppo", "--env", "CartPole-v1", "--chunk-updates", "2"]
TINY_ARGS += ["--total-steps", str(TINY["total_timesteps"])]
for key in ("num_envs", "num_steps", "num_minibatches", "update_epochs"):
    TINY_ARGS += ["--set", f"{key}={TINY[key]}"]


def rljax(*args, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    return subprocess.Popen(
        [sys.executable, "-m", "rljax.cli", *map(str, args)],
        cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(*processes, timeout=240) -> list[tuple[int, str]]:
    """(exit status, stderr) of each process."""
    return [(p.wait(timeout), p.communicate()[1]) for p in processes]


def one_error_line(err: str) -> str:
    """The single ``rljax: error:`` line, checked to be the only one, with no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("rljax")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def assert_clean(run: Path, seed: int = 0) -> None:
    """Each (member, update) logged once; config, summary and metrics agree on the run."""
    table = read_tables([run / "metrics.csv"])
    keys = list(zip(table["member"], table["update"], strict=True))
    assert len(keys) == len(set(keys)) == 8 and table["update"].max() == 8
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 9  # the header and 8 rows, nothing mixed in from another run
    saved = yaml.safe_load((run / "config.yaml").read_text())["run"]
    summary = yaml.safe_load((run / "summary.json").read_text())
    assert saved["seed"] == summary["run"]["seed"] == seed


def test_default_names_differ_within_one_second(monkeypatch, tmp_path):
    """Two runs started in the same second get two directories (the name's random suffix)."""

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 2, 3, 4, 5)

    outs = []
    monkeypatch.setattr(cli.datetime, "datetime", Frozen)
    monkeypatch.setattr(loop, "train", lambda spec, out, **_: outs.append(out))
    monkeypatch.chdir(tmp_path)
    assert cli.main(TINY_ARGS) == cli.main(TINY_ARGS) == 0
    assert outs[0] != outs[1]
    assert all(out.name.startswith("ppo-CartPole-v1-20240102-030405-") for out in outs)


def test_two_runs_started_together_into_one_out(tmp_path):
    """Two processes, one --out, started together: one runs, the other is refused by name and
    leaves the winner's run clean. (Default names are kept apart by the test above.)"""
    results = finish(
        *(rljax(*TINY_ARGS, "--seed", seed, "--out", "shared", cwd=tmp_path) for seed in (0, 1))
    )
    assert sorted(status for status, _ in results) == [0, 2], results
    line = one_error_line(next(err for status, err in results if status == 2))
    # (caught between the winner's lock and its pid, the refusal says "another process")
    assert "shared already exists" in line or "shared is in use by " in line
    winner = next(seed for seed, (status, _) in enumerate(results) if status == 0)
    assert_clean(tmp_path / "shared", seed=winner)
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


FIRST_RUN = """
import sys, time
from pathlib import Path
from runs import quiet, tiny_spec
from rljax.runner.loop import train

out, gate = Path(sys.argv[1]), Path(sys.argv[2])

def wait_at_update_2(done, state):
    if done == 2:
        (out / "progress").write_text("2")
        end = time.monotonic() + 120
        while not gate.exists() and time.monotonic() < end:
            time.sleep(0.05)

train(tiny_spec(), out, checkpoint_seconds=0, print_fn=quiet, on_chunk=wait_at_update_2)
"""


def test_a_live_run_is_refused_to_a_second_writer(tmp_path, capsys):
    """--resume of a run that is still going, or a new run into it, is refused by name; the
    live run then finishes with each update logged once."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    environment = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    first = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FIRST_RUN), str(out), str(gate)],
        env=environment, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        end = time.monotonic() + 180
        while not (out / "progress").exists():
            assert first.poll() is None and time.monotonic() < end, first.communicate()[1]
            time.sleep(0.1)
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        for extra in (["--resume"], []):
            assert cli.main([*TINY_ARGS, "--out", str(out), *extra]) == 2
            line = one_error_line(capsys.readouterr().err)
            assert f"{out} is in use by process {first.pid}" in line
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    finally:
        gate.write_text("go")
        status, err = finish(first)[0]
    assert status == 0, err
    assert_clean(out)


def test_resume_of_a_missing_directory_is_refused(tmp_path, capsys):
    assert cli.main([*TINY_ARGS, "--out", str(tmp_path / "nowhere"), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot resume {tmp_path / 'nowhere'}: there is no such directory" in line
    assert list(tmp_path.iterdir()) == []


def read_only_mkdir(self, *args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", str(self))


@pytest.mark.parametrize("case", ["under a file", "read-only"])
def test_an_unwritable_out_is_one_line_before_compiling(case, tmp_path, capsys, monkeypatch):
    """(Tests run as root, whom chmod does not stop: the fault is a path under a regular file,
    or an injected EROFS.)"""
    (tmp_path / "file").write_text("kept")
    if case == "read-only":
        monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
        out, cause = tmp_path / "run", "[Errno 30] Read-only file system"
    else:
        out, cause = tmp_path / "file" / "run", "[Errno 20] Not a directory"
    monkeypatch.setattr(loop, "build_program", pytest.fail)  # nothing is built or compiled
    assert cli.main([*TINY_ARGS, "--out", str(out)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"rljax: error: cannot write {out}: {cause}"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert (tmp_path / "file").read_text() == "kept"


def test_a_full_disk_is_one_line_and_a_log(tmp_path, capsys, monkeypatch):
    def disk_full(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CsvLog, "append", disk_full)
    out = tmp_path / "run"
    assert cli.main([*TINY_ARGS, "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"rljax: error: cannot write {out}: [Errno 28] No space left on device"
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "No space left on device" in log and "disk_full" in log
    assert (out / "config.yaml").exists()  # training had begun: the run is kept to resume


def test_a_missing_sink_is_refused_before_the_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.setattr(loop, "build_program", pytest.fail)
    assert cli.main([*TINY_ARGS, "--out", str(tmp_path / "run"), "--wandb", "project"]) == 2
    assert "--wandb needs wandb" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_resume_compares_parsed_values(tmp_path, capsys):
    """lr=1e-3 and lr=0.001 are one run; lr=0.002 is another, refused by name."""
    out = tmp_path / "run"
    assert cli.main([*TINY_ARGS, "--out", str(out), "--set", "lr=1e-3"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main([*TINY_ARGS, "--out", str(out), "--set", "lr=0.001", "--resume"]) == 0
    capsys.readouterr()
    assert cli.main([*TINY_ARGS, "--out", str(out), "--set", "lr=0.002", "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "cannot resume" in line and "lr=0.001 (now 0.002)" in line
    assert (out / "config.yaml").read_bytes() == before["config.yaml"]
    assert (out / "metrics.csv").read_bytes() == before["metrics.csv"]


def test_spec_differences_are_between_values():
    saved = tiny_spec(agent={**TINY, "lr": "1e-3"}, grid={"clip_eps": ["0.1", "2e-1"]})
    same = tiny_spec(agent={**TINY, "lr": 0.001, "gamma": 0.99}, grid={"clip_eps": [0.1, 0.2]})
    assert saved.differences(same) == ""
    assert saved.differences(tiny_spec(seeds=2)) == "lr=0.001 (now 0.00025); " + (
        "grid={'clip_eps': [0.1, 0.2]} (now {}); seeds=1 (now 2)"
    )


@pytest.mark.parametrize(
    "budget",
    [["--total-steps", "1e30"], ["--total-steps", "inf"], ["--set", "total_timesteps=3e9"]],
)
def test_an_impossible_budget_is_refused_before_building(budget, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop, "build_program", pytest.fail)
    args = ["train", "ppo", "--env", "CartPole-v1", "--out", str(tmp_path / "run"), *budget]
    assert cli.main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is not a finite number" in line or "at most 2**31 - 1 = 2,147,483,647 env" in line
    assert list(tmp_path.iterdir()) == []


def write_dataset(path: Path, reward: float) -> None:
    rows, rng = 200, np.random.default_rng(0)
    obs = rng.normal(size=(rows + 1, 3)).astype(np.float32)
    timeouts = np.zeros(rows, np.float32)
    timeouts[49::50] = 1
    arrays = {
        "observations": obs[:-1], "next_observations": obs[1:],
        "actions": rng.uniform(-1, 1, size=(rows, 1)).astype(np.float32),
        "rewards": np.full(rows, reward, np.float32), "terminals": np.zeros(rows, np.float32),
        "timeouts": timeouts,
    }  # fmt: skip
    env = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": 50}
    write_d4rl(path, arrays, {"env": env})


def test_a_dataset_changed_under_a_resumed_run_is_refused(tmp_path):
    dataset, out = tmp_path / "pendulum.hdf5", tmp_path / "run"
    write_dataset(dataset, reward=-1.0)
    spec = RunSpec(
        algo="bc", dataset=str(dataset), eval_episodes=1, chunk_updates=2,
        agent={"hidden_sizes": [8], "batch_size": 8, "total_updates": 2},
    )  # fmt: skip
    loop.train(spec, out, print_fn=quiet)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset_sha256"] == (tmp_path / "pendulum.hdf5.sha256").read_text().split()[0]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    write_dataset(dataset, reward=-2.0)
    with pytest.raises(DatasetChanged, match=f"its dataset {dataset} changed since the run"):
        loop.train(spec, out, resume=True, print_fn=quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
