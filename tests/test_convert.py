"""D4RL corner cases and ``rljax data convert``: layouts round-trip, actions rescale by name."""

import numpy as np
import pytest

from rljax import data
from rljax.data import convert


def _transitions(continuous: bool = True) -> dict:
    """Four episodes: terminated, timed out, ended by a jump in observations, and cut short.

    Observations are (row, -row), so a next observation says which row it came from."""
    rng = np.random.default_rng(1)
    n = 11
    obs = np.stack([np.arange(n), -np.arange(n)], 1).astype(np.float32)
    next_obs = obs + 100  # every episode's next observations are its own, not the next row's
    next_obs[[0, 1, 3, 4, 5, 7, 8, 9]] = obs[[1, 2, 4, 5, 6, 8, 9, 10]]
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    terminals[2] = 1  # episode 1: rows 0-2, terminated
    timeouts[6] = 1  # episode 2: rows 3-6, timed out; episode 3: rows 7-8 end by a jump
    timeouts[10] = 1  # episode 4: rows 9-10, the end of the data
    next_obs[8] = [50, 50]
    actions = rng.uniform(-2, 2, (n, 1)) if continuous else rng.integers(0, 3, n)
    return {
        "observations": obs,
        "actions": actions.astype(np.float32 if continuous else np.int32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_obs,
    }


def _write_d4rl_rows(path, transitions, metadata=None):
    convert.write(path, transitions, metadata or {}, "d4rl")


# --- D4RL corners ---


def test_n_by_1_columns_are_squeezed_as_d4rl_does(tmp_path):
    rows = {
        "observations": np.arange(8, dtype=np.float32)[:, None],
        "actions": np.zeros((8, 2), np.float32),
        "rewards": np.arange(8, dtype=np.float32)[:, None],
        "terminals": np.zeros((8, 1), bool),
        "timeouts": np.eye(8, dtype=bool)[3][:, None],
    }
    got = data.qlearning_arrays(rows)
    np.testing.assert_array_equal(got["rewards"], [0, 1, 2, 4, 5, 6])
    assert got["terminals"].shape == (6,)


def _d4rl_counter(terminals, max_episode_steps):
    """D4RL's qlearning_dataset without timeouts: the rows it keeps (its own counter)."""
    keep, step = [], 0
    for i in range(len(terminals) - 1):
        if step == max_episode_steps - 1:
            step = 0
            continue
        if terminals[i]:
            step = 0
        keep.append(i)
        step += 1
    return keep


def test_inferred_timeouts_count_from_each_episodes_first_row_unlike_d4rl():
    """Episode 1 terminates at row 1; episode 2 (rows 2-5) hits the limit of 4 steps at row 5.
    rljax drops row 5 (the timeout); D4RL's counter, one ahead after a terminal, drops row 4."""
    n = 8
    terminals = np.zeros(n, bool)
    terminals[1] = True
    rows = {
        "observations": np.arange(n, dtype=np.float32)[:, None],
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.zeros(n, np.float32),
        "terminals": terminals,
    }
    got = data.qlearning_arrays(rows, max_episode_steps=4)
    np.testing.assert_array_equal(got["observations"][:, 0], [0, 1, 2, 3, 4, 6])
    assert _d4rl_counter(terminals, 4) == [0, 1, 2, 3, 5, 6]


def test_max_episode_steps_is_refused_for_a_file_with_timeouts():
    rows = {
        "observations": np.zeros((4, 1), np.float32),
        "actions": np.zeros((4, 1), np.float32),
        "rewards": np.zeros(4, np.float32),
        "terminals": np.zeros(4, bool),
        "timeouts": np.zeros(4, bool),
    }
    with pytest.raises(data.MalformedDataset, match="has its own 'timeouts'"):
        data.qlearning_arrays(rows, max_episode_steps=3)
    del rows["timeouts"]
    with pytest.raises(data.MalformedDataset, match="max_episode_steps=0 must be >= 1"):
        data.qlearning_arrays(rows, max_episode_steps=0)


def test_load_takes_max_episode_steps_for_a_file_without_timeouts(tmp_path):
    n = 9
    rows = {
        "observations": np.arange(n, dtype=np.float32)[:, None],
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
    }
    data.write_d4rl(tmp_path / "old.hdf5", rows)
    with pytest.raises(data.MalformedDataset, match="--max-episode-steps"):
        data.load(tmp_path / "old.hdf5")
    dataset, _ = data.load(tmp_path / "old.hdf5", max_episode_steps=3)
    np.testing.assert_array_equal(dataset.observations[:, 0], [0, 1, 3, 4, 6, 7])


# --- convert ---


@pytest.mark.parametrize("continuous", [True, False])
@pytest.mark.parametrize("first", ["x.hdf5", "x.npz", "x_minari"])
def test_every_layout_round_trips_the_transitions(tmp_path, first, continuous):
    """D4RL -> first -> the other two -> D4RL: every hop loads the same six arrays."""
    want = _transitions(continuous)
    _write_d4rl_rows(tmp_path / "source.hdf5", want)
    names = [first, *(n for n in ("x.hdf5", "x.npz", "x_minari") if n != first), "end.hdf5"]
    source = tmp_path / "source.hdf5"
    for name in names:
        out = tmp_path / f"{name}"
        convert.convert(source, out, force=out.exists())
        got = data.load(out)[0].to_numpy()
        for key, value in want.items():
            if key == "timeouts":  # the jump after row 8 reads back as a timeout
                value = value.copy()
                value[8] = 1
            np.testing.assert_array_equal(got[key], value, err_msg=f"{name}: {key}")
        source = out


def test_ogbench_output_carries_rewards_only_when_there_are_some(tmp_path):
    transitions = _transitions()
    transitions["rewards"][:] = 0
    transitions["terminals"][:] = 0
    convert.write(tmp_path / "gc.npz", transitions, {}, "ogbench")
    with np.load(tmp_path / "gc.npz") as f:
        assert "rewards" not in f and "masks" not in f
    convert.write(tmp_path / "r.npz", _transitions(), {}, "ogbench")
    with np.load(tmp_path / "r.npz") as f:
        assert "rewards" in f and "masks" in f


def test_rescaled_actions_and_the_env_are_recorded(tmp_path):
    want = _transitions()
    _write_d4rl_rows(tmp_path / "raw.hdf5", want, {"env": "Pendulum-v1"})
    convert.convert(tmp_path / "raw.hdf5", tmp_path / "unit.hdf5", action_bounds=(-2.0, 2.0))
    dataset, metadata = data.load(tmp_path / "unit.hdf5")
    np.testing.assert_allclose(dataset.actions, want["actions"] / 2, atol=1e-6)
    assert metadata["env"] == {"name": "Pendulum-v1", "unit_actions": True}
    assert metadata["actions_rescaled_from"] == {"low": [-2.0], "high": [2.0]}
    assert metadata["converted_from"] == str(tmp_path / "raw.hdf5")
    with pytest.raises(data.DatasetError, match="already rescaled"):
        convert.convert(tmp_path / "unit.hdf5", tmp_path / "twice.hdf5", action_bounds=(-2, 2))


@pytest.mark.parametrize(
    "bounds, continuous, message",
    [
        ((-1.5, 1.5), True, "outside the bounds"),
        ((-3.0, 3.0), False, "discrete actions"),
        ((2.0, -2.0), True, "high > low"),
        ((-np.inf, np.inf), True, "must be finite"),
    ],
)
def test_bad_rescaling_is_named(tmp_path, bounds, continuous, message):
    _write_d4rl_rows(tmp_path / "raw.hdf5", _transitions(continuous), {"env": "Pendulum-v1"})
    with pytest.raises(data.DatasetError, match=message):
        convert.convert(tmp_path / "raw.hdf5", tmp_path / "out.hdf5", action_bounds=bounds)
    assert not (tmp_path / "out.hdf5").exists()


def test_unit_bounds_and_a_missing_env_are_named(tmp_path):
    _write_d4rl_rows(tmp_path / "raw.hdf5", _transitions())
    with pytest.raises(data.DatasetError, match="already \\[-1, 1\\]"):
        convert.rescale_actions(np.zeros((2, 1), np.float32), -1.0, 1.0)
    with pytest.raises(data.DatasetError, match="records no env"):
        convert.convert(tmp_path / "raw.hdf5", tmp_path / "out.hdf5", action_bounds=(-2, 2))


def test_convert_never_overwrites_without_force(tmp_path):
    _write_d4rl_rows(tmp_path / "raw.hdf5", _transitions())
    (tmp_path / "out.npz").write_bytes(b"mine")
    with pytest.raises(data.DatasetExists):
        convert.convert(tmp_path / "raw.hdf5", tmp_path / "out.npz")
    assert (tmp_path / "out.npz").read_bytes() == b"mine"
    convert.convert(tmp_path / "raw.hdf5", tmp_path / "out.npz", force=True)
    assert data.load(tmp_path / "out.npz")[0].size == 11
