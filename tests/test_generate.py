"""Dataset generation: rollout layout, the medium snapshot rule, the written files, and names."""

import dataclasses

import jax
import numpy as np
import pytest

from rljax import agents, data, envs
from rljax.data import DatasetNotFound, load_d4rl, read_d4rl, references
from rljax.generate import d4rl as gen
from rljax.generate import recipes
from rljax.runner import config as config_lib

# A behaviour SAC that learns in 4000 steps: 40 snapshots of 100 env steps, 100-step episodes,
# normalized observations (so the recorder must store raw ones). Its learning rates of 3e-3
# leave a margin: it ends near -425 against the random policy's -599 (at 1e-3 it ended level
# with random, and on which side depended on float rounding).
TINY = dataclasses.replace(
    gen.RECIPES["Pendulum-v1"],
    env={"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": 100,
         "normalize_obs": True},
    agent={**gen.RECIPES["Pendulum-v1"].agent, "total_timesteps": 4000, "learning_starts": 400,
           "batch_size": 64, "num_envs": 4, "utd_ratio": 1.0, "actor_lr": 3e-3,
           "critic_lr": 3e-3, "alpha_lr": 3e-3},
    transitions=1000,
    rollout_envs=4,
    eval_episodes=8,
    reference_evals=2,
    chunk_updates=25,
)  # fmt: skip


def pendulum_step(obs, actions):
    """gymnax Pendulum's dynamics and reward in float64, for unit actions (torque = 2 a)."""
    cos, sin, thdot = np.asarray(obs, np.float64).T
    theta = np.arctan2(sin, cos)  # in (-pi, pi]: angle_normalize is the identity here
    u = np.clip(2.0 * np.asarray(actions, np.float64)[:, 0], -2.0, 2.0)
    reward = -(theta**2 + 0.1 * thdot**2 + 0.001 * u**2)
    # thdot' = thdot + (3 g / (2 l) sin(theta) + 3 / (m l^2) u) dt, g=10, m=l=1, dt=0.05
    new_thdot = np.clip(thdot + (15.0 * np.sin(theta) + 3.0 * u) * 0.05, -8.0, 8.0)
    new_theta = theta + new_thdot * 0.05
    return np.stack([np.cos(new_theta), np.sin(new_theta), new_thdot], -1), reward


def check_layout(rows, stream_length, episode_length):
    """Rows are env streams of `stream_length`, episode after episode; every transition is the
    env's true one (raw observations, reward, next observation before any reset)."""
    n = len(rows["rewards"])
    t = np.arange(n) % stream_length
    expected = ((t + 1) % episode_length == 0) | (t == stream_length - 1) | (np.arange(n) == n - 1)
    np.testing.assert_array_equal(rows["timeouts"], expected)
    assert not rows["terminals"].any()  # Pendulum never terminates
    assert np.abs(rows["actions"]).max() <= 1.0
    next_obs, reward = pendulum_step(rows["observations"], rows["actions"])
    np.testing.assert_allclose(rows["next_observations"], next_obs, atol=2e-4)
    np.testing.assert_allclose(rows["rewards"], reward, rtol=1e-4, atol=1e-4)
    inside = ~expected[:-1]  # within an episode, the next row starts where this one ended
    np.testing.assert_allclose(  # up to XLA fusing the same float32 step differently
        rows["observations"][1:][inside], rows["next_observations"][:-1][inside], atol=1e-5
    )
    # After each end the next row is a fresh reset, not the final observation.
    ends = np.flatnonzero(expected[:-1])
    assert not np.allclose(rows["observations"][ends + 1], rows["next_observations"][ends])


def test_rollout_rows_are_episode_contiguous_with_true_next_observations():
    env, env_params = envs.make("Pendulum-v1", unit_actions=True, max_steps_in_episode=7)

    def wild(obs, env_state, key):  # often outside [-1, 1]: stored clipped, as executed
        return 3.0 * jax.random.normal(key, (obs.shape[0], 1))

    # 3 streams of 15 steps, cut to 43 rows: time limits at t = 6, 13, stream ends at t = 14,
    # and the last stream cut after t = 12.
    rows = gen.rollout(env, env_params, wild, 43, jax.random.PRNGKey(0), num_envs=3)
    assert {k: v.shape for k, v in rows.items()} == {
        "observations": (43, 3), "actions": (43, 1), "rewards": (43,), "terminals": (43,),
        "timeouts": (43,), "next_observations": (43, 3),
    }  # fmt: skip
    np.testing.assert_array_equal(np.flatnonzero(rows["timeouts"]), [6, 13, 14, 21, 28, 29, 36, 42])
    check_layout(rows, stream_length=15, episode_length=7)
    assert (np.abs(rows["actions"]) == 1.0).mean() > 0.3  # the clip did happen


def test_streams_end_with_a_timeout_unless_they_terminated():
    streams = {
        "rewards": np.zeros((2, 3)),
        "terminals": np.array([[False, False, True], [False, True, False]]),
        "timeouts": np.array([[True, False, False], [False, False, False]]),
    }
    rows = gen.streams_to_rows(streams)
    np.testing.assert_array_equal(rows["terminals"], [0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(rows["timeouts"], [1, 0, 0, 0, 0, 1])
    cut = gen.streams_to_rows(streams, num_transitions=5)  # the cut row ends too
    np.testing.assert_array_equal(cut["timeouts"], [1, 0, 0, 0, 0])
    cut = gen.streams_to_rows(streams, num_transitions=4)
    np.testing.assert_array_equal(cut["timeouts"], [1, 0, 0, 1])


def test_medium_is_the_first_snapshot_a_third_of_the_way_to_expert():
    # random -1200, expert -150: the target is -1200 + 1050 / 3 = -850.
    returns = [-1300.0, -1000.0, -851.0, -850.0, -400.0, -900.0, -150.0]
    assert gen.medium_index(returns, -1200.0, -150.0) == 3  # reaching it exactly counts
    assert gen.medium_index([-1000.0, -300.0], -1200.0, -150.0) == 1
    assert gen.medium_index([-1000.0, -900.0], -1200.0, -150.0) == 1  # never reached: the last
    with pytest.raises(gen.BehaviourFailed, match="not above the random"):
        gen.medium_index(returns, -150.0, -150.0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("datasets")
    written = gen.generate_all("Pendulum-v1", out, recipe=TINY, print_fn=lambda *_: None)
    return out, written


def test_generate_all_writes_every_kind_with_references(generated):
    out, written = generated
    assert sorted(written) == sorted(gen.KINDS)
    for kind, (path, metadata) in written.items():
        assert path == out / f"pendulum-{kind}.hdf5"
        dataset, loaded = load_d4rl(path)  # checks the .sha256 sidecar too
        assert loaded == metadata
        assert metadata["kind"] == kind
        assert metadata["env"] == {
            "name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": 100
        }  # fmt: skip
        assert metadata["behaviour"]["env"]["normalize_obs"] is True
        assert metadata["behaviour"]["config"]["total_timesteps"] == 4000
        random, expert = references(loaded)
        assert random == written["random"][1]["ref_min_score"] < expert
        assert expert == metadata["behaviour"]["expert_return"]
        rows, _ = read_d4rl(path)
        # qlearning_dataset semantics: every timeout row and the last row are dropped.
        assert dataset.size == len(rows["rewards"]) - rows["timeouts"].sum()
        assert metadata["transitions"] == len(rows["rewards"])
        assert np.isclose(
            metadata["returns"]["mean"], np.mean(gen._complete_returns(rows, 100)), rtol=1e-6
        )
    for kind in ("random", "medium", "expert"):
        assert written[kind][1]["transitions"] == 1000
        assert written[kind][1]["episodes"] == 8  # 4 streams of 250 steps: 2 whole episodes each
    mean = {kind: written[kind][1]["returns"]["mean"] for kind in gen.KINDS}
    assert mean["random"] < mean["expert"]


def test_rollouts_and_replay_hold_raw_true_transitions(generated):
    _, written = generated
    for kind in ("random", "medium", "expert"):
        rows, _ = read_d4rl(written[kind][0])
        check_layout(rows, stream_length=250, episode_length=100)
    rows, metadata = read_d4rl(written["medium-replay"][0])
    # The behaviour agent's own steps until the medium snapshot, 4 envs' streams in a row.
    steps = metadata["behaviour"]["medium_env_steps"]
    assert metadata["transitions"] == steps and steps % 100 == 0 and steps < 4000
    check_layout(rows, stream_length=steps // 4, episode_length=100)


def test_medium_expert_is_medium_then_expert(generated):
    _, written = generated
    medium, expert, both = (
        read_d4rl(written[k][0])[0] for k in gen.KINDS[1:3] + ("medium-expert",)
    )
    for key in both:
        np.testing.assert_array_equal(both[key], np.concatenate([medium[key], expert[key]]))


def test_missing_dataset_names_the_path_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RLJAX_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path
    with pytest.raises(DatasetNotFound) as error:
        data.resolve("pendulum-medium-replay")
    assert str(tmp_path / "pendulum-medium-replay.hdf5") in str(error.value)
    assert "rljax data generate Pendulum-v1 --kind medium-replay" in str(error.value)
    with pytest.raises(
        DatasetNotFound, match="rljax data generate brax/hopper --kind medium-expert"
    ):
        data.resolve("hopper-medium-expert")
    elsewhere = tmp_path / "elsewhere" / "walker2d-random.hdf5"
    with pytest.raises(DatasetNotFound) as error:
        data.resolve(elsewhere)
    assert f"rljax data generate brax/walker2d --kind random --out {elsewhere.parent}" in str(
        error.value
    )
    (tmp_path / "pendulum-medium.hdf5").write_bytes(b"")
    assert data.resolve("pendulum-medium") == tmp_path / "pendulum-medium.hdf5"
    assert data.resolve(tmp_path / "pendulum-medium.hdf5") == tmp_path / "pendulum-medium.hdf5"


def test_unknown_names_list_what_exists():
    with pytest.raises(recipes.UnknownRecipe) as error:
        gen.generate_dataset("CartPole-v1", "medium")
    for name in ("Pendulum-v1", "brax/hopper", "brax/halfcheetah", "brax/walker2d"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="medium-replay"):
        gen.generate_dataset("Pendulum-v1", "med")
    # Datasets store actions in [-1, 1]: an env in torque units is refused before training.
    raw = dataclasses.replace(TINY, env={"name": "Pendulum-v1"})
    with pytest.raises(ValueError, match="unit_actions=True"):
        gen.behaviour(raw)


def test_recipes_build_and_divide_into_chunks():
    tags = [recipe.tag for recipe in gen.RECIPES.values()]
    assert len(set(tags)) == len(tags)
    assert set(gen.RECIPES) == set(data.GENERATED_TAGS)  # every recipe's files have a name
    for recipe in gen.RECIPES.values():
        config = config_lib.make_config(agents.get(recipe.algo).Config, recipe.agent)
        assert config.num_updates % recipe.chunk_updates == 0
        assert "normalize_obs" not in recipes.data_env(recipe)
    assert gen.RECIPES["Pendulum-v1"].env["unit_actions"] is True
