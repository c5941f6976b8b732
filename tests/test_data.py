"""rljax.data: lossless round trips, qlearning_dataset semantics, sampling, named errors, scores."""

import json
import subprocess
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from rljax import data


def _d4rl_arrays():
    """Three episodes in D4RL rows: one terminates (rows 0-2), one times out (3-6), one is cut.

    Observations are the row index, so a transition's next observation names the row it came from.
    """
    n = 10
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[2] = True  # episode 1 ends by termination after row 2
    timeouts[6] = True  # episode 2 hits its time limit at row 6; row 7 starts episode 3
    rng = np.random.default_rng(0)
    return {
        "observations": np.stack([np.arange(n), -np.arange(n)], 1).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32) * 0.5,
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 4)),
    }


def _episodes(rng):
    eps = []
    for steps, terminated in ((3, True), (4, False), (2, False)):
        terminations = np.zeros(steps, bool)
        truncations = np.zeros(steps, bool)
        (terminations if terminated else truncations)[-1] = True
        eps.append(
            {
                "observations": rng.normal(size=(steps + 1, 2)).astype(np.float32),
                "actions": rng.integers(0, 4, size=(steps,)),
                "rewards": rng.normal(size=steps).astype(np.float32),
                "terminations": terminations,
                "truncations": truncations,
                "infos": {"x": rng.normal(size=(steps + 1,))},
                "seed": 7,
            }
        )
    eps[-1]["truncations"][:] = False  # an unfinished recording: neither flag at the end
    return eps


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_same(a[k], b[k])
        else:
            np.testing.assert_array_equal(np.asarray(a[k]), b[k], strict=True)


def test_d4rl_round_trip_is_lossless(tmp_path):
    arrays = _d4rl_arrays()
    meta = {"ref_min_score": -20.272305, "ref_max_score": 3234.3, "policy": "random"}
    path = tmp_path / "sub" / "x.hdf5"
    digest = data.write_d4rl(path, arrays, meta)
    assert (tmp_path / "sub" / "x.hdf5.sha256").read_text() == f"{digest}  x.hdf5\n"
    back, back_meta = data.read_d4rl(path)
    _assert_same(arrays, back)  # dtypes too: bool stays bool, float64 infos stay float64
    assert back_meta == meta


def test_d4rl_file_is_found_under_the_d4rl_dir(tmp_path, monkeypatch):
    data.write_d4rl(tmp_path / "y.hdf5", _d4rl_arrays())
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    back, meta = data.read_d4rl("y.hdf5")
    assert meta == {} and len(back["rewards"]) == 10


def _reference_qlearning(arrays):
    """d4rl.qlearning_dataset (terminate_on_end=False) as written in D4RL, with timeouts."""
    out = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for i in range(len(arrays["rewards"]) - 1):
        if arrays["timeouts"][i]:
            continue
        out["observations"].append(arrays["observations"][i])
        out["next_observations"].append(arrays["observations"][i + 1])
        out["actions"].append(arrays["actions"][i])
        out["rewards"].append(arrays["rewards"][i])
        out["terminals"].append(bool(arrays["terminals"][i]))
    return {k: np.array(v) for k, v in out.items()}


def test_load_d4rl_reproduces_qlearning_dataset(tmp_path):
    arrays = _d4rl_arrays()
    data.write_d4rl(tmp_path / "x.hdf5", arrays)
    ds, _ = data.load_d4rl(tmp_path / "x.hdf5")
    got = ds.to_numpy()
    # Rows 6 (timed out: its successor starts another episode) and 9 (last row) are dropped.
    np.testing.assert_array_equal(got["observations"][:, 0], [0, 1, 2, 3, 4, 5, 7, 8])
    np.testing.assert_array_equal(got["next_observations"][:, 0], [1, 2, 3, 4, 5, 6, 8, 9])
    np.testing.assert_array_equal(got["terminals"], [0, 0, 1, 0, 0, 0, 0, 0])
    # Episode ends without termination: before the dropped timeout row, and at the end of data.
    np.testing.assert_array_equal(got["timeouts"], [0, 0, 0, 0, 0, 1, 0, 1])
    ref = _reference_qlearning(arrays)
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32))
    assert all(x.dtype == np.float32 for x in got.values())
    returns = data.episode_returns(ds.rewards, ds.terminals, ds.timeouts)
    np.testing.assert_allclose(returns, [0.5 * (0 + 1 + 2), 0.5 * (3 + 4 + 5), 0.5 * (7 + 8)])


def test_qlearning_without_timeouts_infers_them_from_max_episode_steps():
    arrays = _d4rl_arrays()
    del arrays["timeouts"]
    with pytest.raises(data.MalformedDataset, match="'timeouts'.*max_episode_steps"):
        data.qlearning_arrays(arrays)
    # Episode 1 terminates at step 3; the next one is cut at its 4th step (row 6), as in the file.
    got = data.qlearning_arrays(arrays, max_episode_steps=4)
    np.testing.assert_array_equal(got["observations"][:, 0], [0, 1, 2, 3, 4, 5, 7, 8])


def test_a_terminal_before_a_boundary_is_not_also_a_timeout():
    arrays = _d4rl_arrays()
    arrays["terminals"][5] = True  # episode 2 terminates just before its timeout row
    arrays["terminals"][8] = True  # episode 3 terminates on the last transition of the file
    got = data.qlearning_arrays(arrays)
    np.testing.assert_array_equal(got["terminals"], [0, 0, 1, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(got["timeouts"], [0] * 8)


def test_minari_round_trip_is_lossless(tmp_path):
    eps = _episodes(np.random.default_rng(1))
    meta = {"ref_min_score": 1.0, "ref_max_score": 2.0, "algorithm_name": "random"}
    directory = data.write_minari("ns/toy-v0", eps, meta, root=tmp_path)
    assert directory == tmp_path / "ns" / "toy-v0"
    back, back_meta = data.read_minari("ns/toy-v0", root=tmp_path)
    assert back_meta == json.loads((directory / "data" / "metadata.json").read_text())
    assert back_meta["dataset_id"] == "ns/toy-v0" and back_meta["algorithm_name"] == "random"
    assert back_meta["total_episodes"] == 3 and back_meta["total_steps"] == 9
    for i, (a, b) in enumerate(zip(eps, back, strict=True)):
        assert b.pop("id") == i
        _assert_same(a, b)
    with h5py.File(directory / "data" / "main_data.hdf5") as f:
        assert list(f) == ["episode_0", "episode_1", "episode_2"]
        assert f["episode_1"].attrs["total_steps"] == 4 and f["episode_1"].attrs["id"] == 1
    assert (tmp_path / "ns" / "namespace_metadata.json").read_text() == "{}"
    assert sorted(p.name for p in directory.rglob("*")) == [
        "data",
        "main_data.hdf5",
        "metadata.json",
    ]


def test_minari_episodes_become_transitions(tmp_path, monkeypatch):
    eps = _episodes(np.random.default_rng(2))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    data.write_minari("toy-v0", eps)
    ds, _ = data.load_minari("toy-v0")
    got = ds.to_numpy()
    np.testing.assert_array_equal(
        got["observations"], np.concatenate([e["observations"][:-1] for e in eps])
    )
    np.testing.assert_array_equal(
        got["next_observations"], np.concatenate([e["observations"][1:] for e in eps])
    )
    np.testing.assert_array_equal(got["terminals"], [0, 0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(got["timeouts"], [0, 0, 0, 0, 0, 0, 1, 0, 1])
    assert got["actions"].dtype.kind == "i"  # discrete actions keep their integer dtype
    # The directory itself, and its data/ folder (minari's own data_path), work as well as the id.
    for path in (tmp_path / "toy-v0", tmp_path / "toy-v0" / "data"):
        again, _ = data.load_minari(path)
        np.testing.assert_array_equal(again.to_numpy()["rewards"], got["rewards"])


def test_minari_datasets_written_before_minari_05_are_still_read(tmp_path):
    """rljax once kept metadata.json beside data/ (checksum key relative to it)."""
    eps = _episodes(np.random.default_rng(3))
    directory = data.write_minari(tmp_path / "old-v0", eps)
    meta = json.loads((directory / "data" / "metadata.json").read_text())
    (directory / "data" / "metadata.json").unlink()
    meta["rljax_sha256"] = {"data/main_data.hdf5": meta["rljax_sha256"]["main_data.hdf5"]}
    (directory / "metadata.json").write_text(json.dumps(meta))
    back, back_meta = data.read_minari(directory)
    assert back_meta == meta and len(back) == 3
    assert data.load(directory)[0].size == 9


def test_minari_ids_are_looked_up_under_minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setenv("RLJAX_DATA_DIR", str(tmp_path / "rljax"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DatasetNotFound) as missing:
        data.resolve("mujoco/hopper/medium-v0")
    message = str(missing.value)
    assert str(tmp_path / "minari" / "mujoco" / "hopper" / "medium-v0") in message
    assert "minari download" in message and "rljax data generate" not in message
    directory = data.write_minari("mujoco/hopper/medium-v0", _episodes(np.random.default_rng(4)))
    assert data.resolve("mujoco/hopper/medium-v0") == directory
    assert data.load("mujoco/hopper/medium-v0")[0].size == 9
    assert data.resolve(str(directory)) == directory  # a path still works


def test_minari_writer_refuses_to_overwrite_and_writes_whole_datasets(tmp_path):
    eps = _episodes(np.random.default_rng(5))
    directory = data.write_minari("ns/toy-v0", eps, {"kind": "first"}, root=tmp_path)
    with pytest.raises(data.DatasetExists, match="toy-v0 already exists; pass --force"):
        data.write_minari("ns/toy-v0", eps, root=tmp_path)
    with pytest.raises(TypeError, match="not JSON serializable"):  # fails after the HDF5 file
        data.write_minari("ns/toy-v0", eps, {"kind": object()}, root=tmp_path, force=True)
    assert data.read_minari(directory)[1]["kind"] == "first"  # the old dataset is intact
    data.write_minari("ns/toy-v0", eps[:1], {"kind": "second"}, root=tmp_path, force=True)
    assert data.read_minari(directory)[1]["kind"] == "second"
    assert sorted(p.name for p in (tmp_path / "ns").iterdir()) == [
        "namespace_metadata.json",
        "toy-v0",
    ]  # no partial or old copies left behind
    (tmp_path / "ns" / "other-v0").mkdir()
    with pytest.raises(data.DatasetExists, match="not a Minari dataset"):
        data.write_minari("ns/other-v0", eps, root=tmp_path, force=True)
    with pytest.raises(data.DatasetError, match=r"'ns/toy' is not a Minari dataset id"):
        data.write_minari("ns/toy", eps, root=tmp_path)


def test_source_env_prefers_rljax_env_then_minari_env_spec():
    spec = {"id": "Hopper-v5", "max_episode_steps": 1000}
    assert data.source_env({"env_spec": json.dumps(spec)}) == {"name": "Hopper-v5"}
    assert data.source_env({"env_spec": spec}) == {"name": "Hopper-v5"}
    env = {"name": "Pendulum-v1", "unit_actions": True}
    assert data.source_env({"env": env, "env_spec": json.dumps(spec)}) == env
    assert data.source_env({"env": "CartPole-v1"}) == {"name": "CartPole-v1"}
    assert data.source_env({}) == {}
    with pytest.raises(data.MalformedDataset, match="env_spec is not JSON"):
        data.source_env({"env_spec": "{not json"})


def test_local_datasets_lists_every_directory(tmp_path, monkeypatch):
    for var, folder in [("RLJAX_DATA_DIR", "rljax"), ("D4RL_DATASET_DIR", "d4rl"),
                        ("MINARI_DATASETS_PATH", "minari"), ("HOME", "home")]:  # fmt: skip
        monkeypatch.setenv(var, str(tmp_path / folder))
    monkeypatch.chdir(tmp_path)
    assert data.local_datasets() == []  # none of the directories exists
    data.write_d4rl(tmp_path / "rljax" / "x.hdf5", _d4rl_arrays(), {"env": "Pendulum-v1"})
    data.write_d4rl(tmp_path / "d4rl" / "x.hdf5", _d4rl_arrays(), {"kind": "medium"})
    maze = {"observations": np.zeros((4, 1)), "actions": np.zeros((4, 1)),
            "terminals": np.r_[0, 0, 0, 1]}  # fmt: skip
    ogbench = tmp_path / "home" / ".ogbench" / "data"
    data.write_ogbench(ogbench / "maze-v0.npz", maze)
    data.write_ogbench(ogbench / "maze-v0-val.npz", maze)
    spec = json.dumps({"id": "Hopper-v5"})
    eps = _episodes(np.random.default_rng(6))
    minari_dir = data.write_minari("ns/toy-v0", eps, {"env_spec": spec, "kind": "random"})
    listed = data.local_datasets()
    assert [(d["name"], d["layout"], d["env"], d["kind"]) for d in listed] == [
        ("x", "d4rl", "Pendulum-v1", None),
        (str(tmp_path / "d4rl" / "x.hdf5"), "d4rl", None, "medium"),  # "x" is the first
        ("maze-v0", "ogbench", None, None),
        ("ns/toy-v0", "minari", "Hopper-v5", "random"),
    ]
    assert listed[0]["path"] == str(tmp_path / "rljax" / "x.hdf5")
    assert listed[0]["bytes"] == (tmp_path / "rljax" / "x.hdf5").stat().st_size
    assert listed[3]["bytes"] == sum(p.stat().st_size for p in minari_dir.rglob("*") if p.is_file())
    for entry in listed:
        assert data.resolve(entry["name"]) == Path(entry["path"])


def test_ogbench_round_trip_and_shifted_transitions(tmp_path):
    # Two trajectories of 3 transitions: rows 3 and 7 are final observations with dummy actions.
    n = 8
    terminals = np.zeros(n, np.float32)
    terminals[[3, 7]] = 1
    rng = np.random.default_rng(8)
    arrays = {
        "observations": np.arange(n, dtype=np.float32)[:, None],
        "actions": rng.normal(size=(n, 2)).astype(np.float32),
        "terminals": terminals,
        "qpos": rng.normal(size=(n, 3)),
    }
    data.write_ogbench(tmp_path / "maze-navigate-v0-val.npz", arrays, {"env": "maze"})
    back, meta = data.read_ogbench("maze-navigate-v0", dataset_dir=tmp_path, val=True)
    _assert_same(arrays, back)
    assert meta == {"env": "maze"}
    ds, _ = data.load_ogbench(tmp_path / "maze-navigate-v0-val.npz")
    got = ds.to_numpy()
    np.testing.assert_array_equal(got["observations"][:, 0], [0, 1, 2, 4, 5, 6])
    np.testing.assert_array_equal(got["next_observations"][:, 0], [1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(got["actions"], arrays["actions"][[0, 1, 2, 4, 5, 6]])
    np.testing.assert_array_equal(got["timeouts"], [0, 0, 1, 0, 0, 1])
    assert not got["terminals"].any() and not got["rewards"].any()
    with pytest.raises(data.DatasetNotFound, match="maze-navigate-v0.npz"):
        data.load_ogbench("maze-navigate-v0", dataset_dir=tmp_path)


def test_sample_inside_jit_returns_dataset_rows_uniformly():
    n = 8
    obs = np.arange(n, dtype=np.float32)[:, None]
    ds = data.Dataset.from_arrays(
        observations=obs,
        actions=obs * 10,
        rewards=np.arange(n) * 100.0,
        terminals=np.zeros(n),
        timeouts=np.zeros(n),
        next_observations=obs + 1,
    )
    batch = jax.jit(data.sample, static_argnums=2)(ds, jax.random.key(0), 4000)
    idx = np.asarray(batch.observations[:, 0]).astype(int)
    np.testing.assert_array_equal(batch.actions[:, 0], idx * 10)  # fields stay row-aligned
    np.testing.assert_array_equal(batch.rewards, idx * 100)
    np.testing.assert_array_equal(batch.next_observations[:, 0], idx + 1)
    counts = np.bincount(idx, minlength=n)
    assert counts.min() > 400 and counts.max() < 600  # 500 expected, sd about 21


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(data.DatasetNotFound, match=str(tmp_path / "nope.hdf5")):
        data.load_d4rl(tmp_path / "nope.hdf5")
    with pytest.raises(FileNotFoundError, match="generate it"):
        data.load_minari("toy-v0", root=tmp_path)
    data.write_minari(tmp_path / "toy-v0", _episodes(np.random.default_rng(3)))
    (tmp_path / "toy-v0" / "data" / "main_data.hdf5").unlink()
    with pytest.raises(data.DatasetNotFound, match="main_data.hdf5"):
        data.load_minari("toy-v0", root=tmp_path)


def _write_raw(path, arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("rewards"), "missing key 'rewards'"),
        (
            lambda a: a.__setitem__("actions", a["actions"][:-1]),
            r"'actions' has 9 rows \(shape \(9, 3\)\) but 'observations' has 10",
        ),
        (
            lambda a: a.__setitem__("terminals", np.stack([a["terminals"]] * 2, 1)),
            r"'terminals' has shape \(10, 2\); expected 1 dimension",
        ),
        (
            lambda a: a.__setitem__("infos/qpos", a["infos/qpos"][:3]),
            r"'infos/qpos' has 3 rows",
        ),
    ],
)
def test_malformed_d4rl_files_name_key_and_shape(tmp_path, change, message):
    arrays = _d4rl_arrays()
    change(arrays)
    _write_raw(tmp_path / "bad.hdf5", arrays)
    with pytest.raises(data.MalformedDataset, match=message):
        data.load_d4rl(tmp_path / "bad.hdf5")
    with pytest.raises(data.MalformedDataset, match=message):
        data.write_d4rl(tmp_path / "bad2.hdf5", arrays)


@pytest.mark.parametrize(
    ("key", "cut", "message"),
    [
        ("observations", 1, r"'observations' has 3 rows \(shape \(3, 2\)\); expected 4"),
        ("truncations", 1, r"'truncations' has 2 rows \(shape \(2,\)\) but 'rewards' has 3"),
        ("actions", None, "missing key 'actions'"),
    ],
)
def test_malformed_minari_files_name_episode_key_and_shape(tmp_path, key, cut, message):
    directory = tmp_path / "toy-v0"
    data.write_minari(directory, _episodes(np.random.default_rng(4)))
    with h5py.File(directory / "data" / "main_data.hdf5", "a") as f:
        group = f["episode_0"]
        value = group[key][()]
        del group[key]
        if cut is not None:
            group.create_dataset(key, data=value[:-cut])
    with pytest.raises(data.MalformedDataset, match=f"episode_0: {message}"):
        data.load_minari(directory, verify=False)


def test_minari_dict_observations_are_refused(tmp_path):
    directory = tmp_path / "toy-v0"
    data.write_minari(directory, _episodes(np.random.default_rng(5)))
    with h5py.File(directory / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/observations"]
        f.create_group("episode_1/observations").create_dataset("pos", data=np.zeros((5, 2)))
    with pytest.raises(data.MalformedDataset, match="episode_1: 'observations' is a group"):
        data.load_minari(directory, verify=False)


def test_checksum_mismatch_is_detected(tmp_path):
    path = tmp_path / "x.hdf5"
    data.write_d4rl(path, _d4rl_arrays())
    with h5py.File(path, "a") as f:
        f["rewards"][0] = 123.0
    with pytest.raises(data.ChecksumMismatch, match="verify=False"):
        data.load_d4rl(path)
    ds, _ = data.load_d4rl(path, verify=False)
    assert float(ds.rewards[0]) == 123.0

    directory = tmp_path / "toy-v0"
    data.write_minari(directory, _episodes(np.random.default_rng(6)))
    meta = json.loads((directory / "data" / "metadata.json").read_text())
    meta["rljax_sha256"]["main_data.hdf5"] = "0" * 64
    (directory / "data" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(data.ChecksumMismatch, match="main_data.hdf5"):
        data.load_minari(directory)


def test_sidecar_is_sha256sum_format(tmp_path):
    data.write_d4rl(tmp_path / "x.hdf5", _d4rl_arrays())
    check = subprocess.run(
        ["sha256sum", "-c", "x.hdf5.sha256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0 and "x.hdf5: OK" in check.stdout


def test_unreadable_or_truncated_files_raise_dataset_errors(tmp_path):
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(data.DatasetError, match="junk.hdf5 is not a readable HDF5 file"):
        data.load_d4rl(tmp_path / "junk.hdf5")
    arrays = {
        "observations": np.zeros((4, 1)),
        "actions": np.zeros((4, 1)),
        "terminals": np.array([0, 1, 0, 0]),  # the second trajectory has no final row
    }
    data.write_ogbench(tmp_path / "cut.npz", arrays)
    with pytest.raises(data.DatasetError, match="last row"):
        data.load_ogbench(tmp_path / "cut.npz")


def test_normalized_score_matches_d4rl_hopper():
    random, expert = data.references(env="hopper-medium-v2")
    assert (random, expert) == (-20.272305, 3234.3)
    # 100 * (1000 + 20.272305) / (3234.3 + 20.272305) = 31.3489...
    score = data.normalized_score(1000.0, random, expert)
    np.testing.assert_allclose(score, 100 * 1020.272305 / 3254.572305)
    np.testing.assert_allclose(data.normalized_score([random, expert], random, expert), [0, 100])
    assert data.references(env="antmaze-umaze-v2") == (0.0, 1.0)
    assert data.references(env="ant-medium-v2") == (-325.6, 3879.7)
    assert data.references({"ref_min_score": 1, "ref_max_score": 3}, env="hopper") == (1.0, 3.0)
    with pytest.raises(data.NoReferenceScores, match="'pen-human-v1'"):
        data.references(env="pen-human-v1")


def test_references_travel_with_the_dataset(tmp_path):
    meta = {"ref_min_score": -1.0, "ref_max_score": 9.0}
    data.write_d4rl(tmp_path / "x.hdf5", _d4rl_arrays(), meta)
    _, back = data.load_d4rl(tmp_path / "x.hdf5")
    assert data.normalized_score(4.0, *data.references(back)) == 50.0
    data.write_minari(tmp_path / "toy-v0", _episodes(np.random.default_rng(7)), meta)
    _, back = data.load_minari(tmp_path / "toy-v0")
    assert data.references(back) == (-1.0, 9.0)
