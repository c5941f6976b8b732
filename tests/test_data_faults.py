"""Dataset faults: generation that would overwrite or cannot write, and malformed files, each a
named error before any work, with what was on disk before left intact."""

import json
import re

import h5py
import numpy as np
import pytest

from rljax import cli, data
from rljax.generate import d4rl as gen

MAZE = ["data", "generate", "rljax/GridMaze-medium", "--kind", "navigate", "--episodes", "4"]
MAZE_FILES = ("gridmaze-medium-navigate-v0.npz", "gridmaze-medium-navigate-v0-val.npz")


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rljax: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


# --- Generation ---


@pytest.fixture
def no_training(monkeypatch):
    def behaviour(*args, **kwargs):
        raise AssertionError("the behaviour agent was trained before the output was checked")

    monkeypatch.setattr(gen, "behaviour", behaviour)


@pytest.mark.parametrize("kind", ["random", "medium"])
def test_generate_into_an_unwritable_directory_is_refused_before_training(
    kind, tmp_path, capsys, no_training
):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "datasets"  # root ignores chmod; nothing can be made under a regular file
    status = cli.main(["data", "generate", "Pendulum-v1", "--kind", kind, "--out", str(out)])
    assert status == 2
    _one_line_error(capsys, f"cannot write datasets to {out}: [Errno", "Not a directory")
    assert blocker.read_text() == "not a directory"
    with pytest.raises(data.UnwritableOutput, match="cannot write datasets to"):
        gen.generate_all("Pendulum-v1", out, [kind])


def test_generate_refuses_an_existing_d4rl_file_before_training(tmp_path, capsys, no_training):
    existing = tmp_path / "pendulum-expert.hdf5"
    existing.write_bytes(b"precious")
    args = ["data", "generate", "Pendulum-v1", "--kind", "random", "--kind", "expert"]
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    _one_line_error(capsys, str(existing), "--force")
    assert existing.read_bytes() == b"precious"
    assert not (tmp_path / "pendulum-random.hdf5").exists()
    with pytest.raises(data.DatasetExists, match="pendulum-expert.hdf5"):
        gen.generate_all("Pendulum-v1", tmp_path, ["expert"])


def test_maze_generation_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    out = tmp_path / "mazes"
    assert cli.main([*MAZE, "--out", str(out)]) == 0
    capsys.readouterr()
    before = {name: (out / name).read_bytes() for name in MAZE_FILES}
    (out / MAZE_FILES[0]).write_bytes(b"edited by hand")

    assert cli.main([*MAZE, "--out", str(out), "--seed", "1"]) == 2
    err = _one_line_error(capsys, str(out / MAZE_FILES[0]), str(out / MAZE_FILES[1]), "--force")
    assert "already exist" in err
    assert (out / MAZE_FILES[0]).read_bytes() == b"edited by hand"
    assert (out / MAZE_FILES[1]).read_bytes() == before[MAZE_FILES[1]]

    assert cli.main([*MAZE, "--out", str(out), "--force"]) == 0
    assert "wrote" in capsys.readouterr().out
    dataset, metadata = data.load(out / MAZE_FILES[0])  # replaced, and its sidecar with it
    assert dataset.size == 4 * 50 and metadata["episodes"] == 4


def test_maze_write_refuses_existing_files_in_python(tmp_path):
    from rljax.generate import mazes

    target = tmp_path / MAZE_FILES[1]
    target.write_bytes(b"keep")
    with pytest.raises(data.DatasetExists, match=MAZE_FILES[1]):
        mazes.write("rljax/GridMaze-medium", "navigate", tmp_path, num_episodes=4)
    assert target.read_bytes() == b"keep" and not (tmp_path / MAZE_FILES[0]).exists()


# --- Malformed datasets ---


def _rows(n: int) -> dict:
    rng = np.random.default_rng(0)
    timeouts = np.zeros(n, bool)
    timeouts[n - 1 :] = True
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }


def _h5(path, arrays):
    with h5py.File(path, "w") as f:  # directly: the writer refuses these values
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.attrs["rljax_metadata"] = json.dumps({"env": {"name": "Pendulum-v1"}})
    return path


def _with(**changes):
    def make(path):
        return _h5(path, {**_rows(10), **changes})

    return make


def _nan_observation():
    obs = _rows(10)["observations"]
    obs[4, 1] = np.nan
    return obs


def _written(n):
    def make(path):
        data.write_d4rl(path, _rows(n), {"env": {"name": "Pendulum-v1"}})
        return path

    return make


CASES = {
    "empty": (_written(0), "holds 0 transitions"),
    "one row": (_written(1), "holds 0 transitions"),
    "nan": (_with(observations=_nan_observation()), "'observations' has 1 row(s) with NaN"),
    "inf reward": (_with(rewards=np.r_[np.zeros(7), np.inf, 0, 0]), "'rewards'"),
    "terminals 2": (
        _with(terminals=np.r_[np.zeros(3), 2.0, np.zeros(6)]),
        "'terminals' must be 0/1",
    ),
    "bytes": (_with(observations=np.array([b"abc"] * 10)), "'observations' has dtype |S3"),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_dataset_is_one_named_error(case, tmp_path, capsys):
    make, message = CASES[case]
    path = make(tmp_path / f"{case.replace(' ', '-')}.hdf5")
    before = path.read_bytes()
    with pytest.raises(data.MalformedDataset, match=re.escape(message)) as raised:
        data.load(path)
    assert str(path) in str(raised.value)
    if case == "nan":
        assert "row 4" in str(raised.value)
    if case == "terminals 2":
        assert "row 3" in str(raised.value)
    assert cli.main(["data", "info", str(path)]) == 2
    _one_line_error(capsys, str(path), message)
    out = tmp_path / "run"
    train = ["train", "iql", "--dataset", str(path), "--total-steps", "10", "--out", str(out)]
    assert cli.main(train) == 2
    _one_line_error(capsys, message)
    assert path.read_bytes() == before


def test_writers_refuse_what_the_loaders_refuse(tmp_path):
    rows = {**_rows(10), "terminals": np.full(10, 0.5)}
    with pytest.raises(data.MalformedDataset, match="'terminals' must be 0/1"):
        data.write_d4rl(tmp_path / "x.hdf5", rows)
    with pytest.raises(data.MalformedDataset, match="dtype"):
        data.write_ogbench(
            tmp_path / "x.npz",
            {"observations": np.array(["a"] * 4), "actions": np.zeros((4, 2)),
             "terminals": np.r_[0, 0, 0, 1]},
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_empty_minari_and_ogbench_files_are_named(tmp_path):
    data.write_minari(tmp_path / "m", [])
    with pytest.raises(data.MalformedDataset, match="holds 0 transitions"):
        data.load(tmp_path / "m")
    one = {"observations": np.zeros((1, 2)), "actions": np.zeros((1, 2)), "terminals": np.ones(1)}
    data.write_ogbench(tmp_path / "one.npz", one)
    with pytest.raises(data.MalformedDataset, match=r"one.npz \(1 row\): holds 0 transitions"):
        data.load(tmp_path / "one.npz")


# --- OGBench single-task files ---


def _singletask_rows():
    """Two trajectories of 4 rows (3 transitions and a final observation each), rewards and
    masks as ogbench.relabel_utils computes them from each row's own state: row 6 is at the
    goal (reward 0, mask 0)."""
    obs = np.arange(16, dtype=np.float32).reshape(8, 2)
    terminals = np.array([0, 0, 0, 1, 0, 0, 0, 1], np.float32)
    success = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.float32)
    return {
        "observations": obs,
        "actions": np.full((8, 2), 0.5, np.float32),
        "terminals": terminals,
        "rewards": success - 1.0,
        "masks": 1.0 - success,
    }


def test_ogbench_singletask_file_loads_its_rewards(tmp_path):
    rows = _singletask_rows()
    np.savez(tmp_path / "pointmaze-medium-navigate-singletask-task1-v0.npz", **rows)
    dataset, _ = data.load(tmp_path / "pointmaze-medium-navigate-singletask-task1-v0.npz")
    keep = [0, 1, 2, 4, 5, 6]
    np.testing.assert_array_equal(dataset.rewards, rows["rewards"][keep])
    np.testing.assert_array_equal(dataset.observations, rows["observations"][keep])
    np.testing.assert_array_equal(
        dataset.next_observations, rows["observations"][[k + 1 for k in keep]]
    )
    np.testing.assert_array_equal(dataset.terminals, [0, 0, 0, 0, 0, 1])  # 1 - masks
    np.testing.assert_array_equal(dataset.timeouts, [0, 0, 1, 0, 0, 0])  # ends not terminal

    # The same data saved after OGBench's loader: compact (valids) and regular (next_observations).
    compact = {**rows, "valids": 1.0 - rows["terminals"]}
    compact["terminals"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.float32)
    regular = {k: rows[k][keep] for k in ("observations", "actions", "rewards", "masks")}
    regular["next_observations"] = rows["observations"][[k + 1 for k in keep]]
    regular["terminals"] = np.array([0, 0, 1, 0, 0, 1], np.float32)
    for name, arrays in (("compact", compact), ("regular", regular)):
        np.savez(tmp_path / f"{name}.npz", **arrays)
        again, _ = data.load(tmp_path / f"{name}.npz")
        for field in data.Dataset.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(again, field), getattr(dataset, field), field)

    partial = {k: v for k, v in rows.items() if k != "masks"}
    np.savez(tmp_path / "no-masks.npz", **partial)
    with pytest.raises(data.MalformedDataset, match="has 'rewards' but no 'masks'"):
        data.load(tmp_path / "no-masks.npz")
