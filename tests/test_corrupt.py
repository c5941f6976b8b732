"""``rljax data corrupt``: RIQL's attack.py random and adversarial corruption of one field."""

from types import SimpleNamespace

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import quiet

from rljax import agents, data
from rljax.data import convert
from rljax.data import corrupt as dc
from rljax.generate import corrupt as gc
from rljax.runner.loop import train
from rljax.runner.policy import restore
from rljax.runner.spec import RunSpec

N, OBS, ACT = 200, 3, 1


def _transitions(n: int = N, seed: int = 0, obs_dim: int = OBS) -> dict:
    """Episodes of 20 steps on a random walk; features of different scales, so that the noise
    per feature must follow each one's std."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n + 1, obs_dim)) * np.arange(1, obs_dim + 1)
    walk = np.cumsum(steps, axis=0).astype(np.float32)
    obs, next_obs = walk[:-1].copy(), walk[1:].copy()
    timeouts = np.zeros(n, np.float32)
    timeouts[19::20] = 1
    next_obs[timeouts > 0] += 0.5  # an episode's last next observation is its own
    terminals = np.zeros(n, np.float32)
    terminals[-1], timeouts[-1] = 1, 0
    return {
        "observations": obs,
        "actions": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "next_observations": next_obs,
    }


def _attack_py_random(transitions, what, rate, range_, seed):
    """attack.py's random mode, line for line (sample_indexs, sample_data, corrupt_*)."""
    np_rng = np.random.RandomState(seed)
    indexs = np.arange(len(transitions["rewards"]))
    attack_indexs = indexs[np.where(np_rng.random(len(indexs)) < rate)[0]]
    dataset = {k: v.copy() for k, v in transitions.items()}
    original = transitions[what][attack_indexs].copy()
    std = np.std(transitions[what], axis=0, keepdims=True)
    noise = np_rng.uniform(-range_, range_, size=original.shape)
    dataset[what][attack_indexs] = noise * 30 if what == "rewards" else original + noise * std
    return dataset, attack_indexs


# --- Random mode ---


@pytest.mark.parametrize("what", dc.TARGETS)
def test_random_mode_is_attack_py_and_touches_only_its_field(what):
    transitions = _transitions()
    got, indices = dc.corrupt(transitions, what, "random", rate=0.3, range_=0.5, seed=7)
    want, want_indices = _attack_py_random(transitions, what, 0.3, 0.5, 7)
    if what == "actions":  # the one departure: actions in [-1, 1] stay there
        assert np.abs(want[what]).max() > 1
        want[what] = np.clip(want[what], -1, 1)
    np.testing.assert_array_equal(indices, want_indices)
    assert 0.2 * N < len(indices) < 0.4 * N  # the authors' rule: u_i < rate, about rate * N
    for key in data.dataset.FIELDS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        if key != what:
            np.testing.assert_array_equal(got[key], transitions[key], err_msg=key)
    changed = np.flatnonzero(np.any((got[what] != transitions[what]).reshape(N, -1), axis=1))
    np.testing.assert_array_equal(changed, indices)
    assert np.array_equal(transitions[what], _transitions()[what])  # the input is left as is


@pytest.mark.parametrize("what", ["observations", "actions", "next_observations"])
def test_random_noise_is_bounded_by_range_times_each_features_std(what):
    transitions = _transitions()
    got, indices = dc.corrupt(transitions, what, "random", rate=1.0, range_=0.7, seed=1)
    noise = got[what] - transitions[what]
    bound = 0.7 * np.std(transitions[what], axis=0)
    assert np.all(np.abs(noise) <= bound * (1 + 1e-5) + 1e-6)
    assert np.all(np.abs(noise).max(axis=0) > 0.9 * bound)  # it spans the range, per feature


def test_random_rewards_are_replaced_by_30_range_uniform_and_adversarial_ones_flipped():
    transitions = _transitions()
    got, indices = dc.corrupt(transitions, "rewards", "random", rate=0.5, range_=0.2, seed=3)
    assert np.abs(got["rewards"][indices]).max() <= 30 * 0.2
    assert np.abs(got["rewards"][indices]).max() > 0.8 * 30 * 0.2
    got, indices = dc.corrupt(transitions, "rewards", "adversarial", rate=0.5, range_=0.2, seed=3)
    np.testing.assert_allclose(got["rewards"][indices], -0.2 * transitions["rewards"][indices])
    kept = np.setdiff1d(np.arange(N), indices)
    np.testing.assert_array_equal(got["rewards"][kept], transitions["rewards"][kept])


def test_rate_0_changes_nothing_and_rate_1_everything():
    transitions = _transitions()
    got, indices = dc.corrupt(transitions, "observations", "random", rate=0.0, seed=0)
    assert len(indices) == 0
    for key in transitions:
        np.testing.assert_array_equal(got[key], transitions[key])
    got, indices = dc.corrupt(transitions, "observations", "random", rate=1.0, seed=0)
    np.testing.assert_array_equal(indices, np.arange(N))
    assert np.all(got["observations"] != transitions["observations"])


def test_a_seed_reproduces_its_corruption_and_another_seed_does_not():
    transitions = _transitions()
    a, ia = dc.corrupt(transitions, "actions", "random", rate=0.3, seed=11)
    b, ib = dc.corrupt(transitions, "actions", "random", rate=0.3, seed=11)
    c, ic = dc.corrupt(transitions, "actions", "random", rate=0.3, seed=12)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    assert not np.array_equal(ia, ic)


# --- Named errors ---


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.3", True])
def test_a_rate_outside_0_1_is_a_named_error(rate):
    with pytest.raises(dc.RateOutOfRange, match=r"\[0, 1\]"):
        dc.corrupt(_transitions(), "observations", rate=rate)


@pytest.mark.parametrize("range_", [0, -1.0, float("inf"), float("nan")])
def test_a_range_not_above_0_is_a_named_error(range_):
    with pytest.raises(dc.RangeNotPositive, match="> 0"):
        dc.corrupt(_transitions(), "observations", range_=range_)


def test_unknown_fields_and_modes_list_the_valid_ones():
    with pytest.raises(dc.UnknownCorruption, match="next_observations"):
        dc.corrupt(_transitions(), "obs")
    with pytest.raises(dc.UnknownCorruption, match="adversarial"):
        dc.corrupt(_transitions(), "observations", "gaussian")
    with pytest.raises(dc.CorruptionError, match="seed"):
        dc.corrupt(_transitions(), "observations", seed=-1)
    assert issubclass(dc.CorruptionError, data.DatasetError)  # the CLI reports it as such


@pytest.mark.parametrize("what", ["observations", "actions", "next_observations"])
def test_a_gradient_attack_needs_a_critic_and_random_mode_refuses_one(what, tmp_path):
    source = tmp_path / "source.hdf5"
    convert.write(source, _transitions(), {}, "d4rl")
    with pytest.raises(dc.CriticRequired, match="--critic RUN_DIR"):
        dc.corrupt(_transitions(), what, "adversarial")
    with pytest.raises(dc.CriticRequired, match="--critic RUN_DIR"):
        gc.attack_dataset(source, tmp_path / "out.hdf5", what, "adversarial")
    with pytest.raises(dc.CriticRequired, match="uses no critic"):
        gc.attack_dataset(source, tmp_path / "out.hdf5", what, "random", critic=tmp_path)
    with pytest.raises(dc.CriticRequired, match="uses no critic"):
        gc.attack_dataset(source, tmp_path / "o.hdf5", "rewards", "adversarial", critic=tmp_path)
    assert not (tmp_path / "out.hdf5").exists()


def test_discrete_actions_are_refused():
    transitions = _transitions() | {"actions": np.zeros(N, np.int32)}
    with pytest.raises(dc.CorruptionError, match="discrete"):
        dc.corrupt(transitions, "actions")


def test_an_existing_output_needs_force_and_the_source_is_never_overwritten(tmp_path):
    source, out = tmp_path / "source.hdf5", tmp_path / "out.hdf5"
    convert.write(source, _transitions(), {}, "d4rl")
    out.write_text("keep")
    with pytest.raises(data.DatasetExists, match="--force"):
        dc.corrupt_dataset(source, out, "observations")
    assert out.read_text() == "keep"
    dc.corrupt_dataset(source, out, "observations", force=True)
    before = source.read_bytes()
    with pytest.raises(dc.CorruptionError, match="source"):
        dc.corrupt_dataset(source, source, "observations", force=True)
    with pytest.raises(dc.CorruptionError, match="source"):
        dc.corrupt_dataset(source, tmp_path / "source", "observations", force=True)
    assert source.read_bytes() == before


# --- Files ---


@pytest.mark.parametrize("suffix", [".hdf5", ".npz", ""])
@pytest.mark.parametrize("what", dc.TARGETS)
def test_the_copy_is_written_in_the_sources_layout_and_loads_back(tmp_path, suffix, what):
    source = tmp_path / f"source{suffix}"
    layout = dc.source_layout(source) if suffix else "minari"
    transitions = _transitions()
    metadata = {"env": {"name": "Pendulum-v1"}, "policy": "random-walk"}
    convert.write(source, transitions, metadata, layout)
    out = tmp_path / "corrupt"  # no suffix: the source's layout, its suffix added
    written = dc.corrupt_dataset(source, out, what, rate=0.4, range_=0.5, seed=5)
    assert written == tmp_path / f"corrupt{suffix}"
    dataset, got = data.load(written)
    want, indices = dc.corrupt(data.load(source)[0].to_numpy(), what, rate=0.4, range_=0.5, seed=5)
    loaded = dataset.to_numpy()
    for key in ("observations", "actions", "rewards", "terminals", "next_observations"):
        np.testing.assert_array_equal(loaded[key], want[key], err_msg=key)
    assert got["env"] == metadata["env"] and got["policy"] == "random-walk"
    record = got["corruption"]
    assert {k: record[k] for k in ("what", "mode", "rate", "range", "seed")} == {
        "what": what, "mode": "random", "rate": 0.4, "range": 0.5, "seed": 5,
    }  # fmt: skip
    assert record["source"] == str(source) and record["transitions"] == N
    np.testing.assert_array_equal(dc.corrupted_indices(got), indices)
    # A corrupted observation ends the episode before it, a next observation its own: the
    # layouts keep the next observation as the following row's observation.
    if what in ("observations", "next_observations"):
        ends = indices - 1 if what == "observations" else indices
        ends = ends[(ends >= 0) & (transitions["terminals"][ends] == 0)]
        assert np.all(loaded["timeouts"][ends] == 1)
        other = np.setdiff1d(np.arange(N), ends)
        np.testing.assert_array_equal(loaded["timeouts"][other], transitions["timeouts"][other])
    else:
        np.testing.assert_array_equal(loaded["timeouts"], transitions["timeouts"])


def test_out_suffix_names_the_layout(tmp_path):
    source = tmp_path / "source.hdf5"
    convert.write(source, _transitions(), {}, "d4rl")
    written = dc.corrupt_dataset(source, tmp_path / "corrupt.npz", "rewards", rate=0.5)
    assert written.suffix == ".npz"
    assert data.load(written)[1]["corruption"]["what"] == "rewards"


def test_many_indices_are_recorded_as_a_bit_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(dc, "MAX_LISTED", 10)
    source = tmp_path / "source.npz"
    convert.write(source, _transitions(), {}, "ogbench")
    written = dc.corrupt_dataset(source, tmp_path / "c.npz", "actions", rate=0.5, seed=2)
    record = data.read_metadata(written)["corruption"]
    assert "indices" not in record and record["count"] > 10
    _, indices = dc.corrupt(_transitions(), "actions", rate=0.5, seed=2)
    np.testing.assert_array_equal(dc.corrupted_indices(record), indices)
    assert record["count"] == len(indices)


def test_corrupting_a_corrupted_dataset_keeps_the_first_record(tmp_path):
    source = tmp_path / "source.hdf5"
    convert.write(source, _transitions(), {}, "d4rl")
    first = dc.corrupt_dataset(source, tmp_path / "first.hdf5", "rewards", rate=0.2)
    second = dc.corrupt_dataset(first, tmp_path / "second.hdf5", "actions", rate=0.2)
    record = data.read_metadata(second)["corruption"]
    assert record["what"] == "actions" and record["previous"]["what"] == "rewards"
    assert record["previous"]["source"] == str(source)


# --- Adversarial mode, against a hand-built ensemble critic ---

K, H = 4, 16


def _critic_params(obs_dim: int = OBS, seed: int = 0) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "w": jax.random.normal(keys[0], (K, obs_dim, H)) / obs_dim,
        "v": jax.random.normal(keys[1], (K, ACT, H)),
        "u": jax.random.normal(keys[2], (K, H)),
        "pi": jax.random.normal(keys[3], (obs_dim, ACT)) / obs_dim,
    }


def q_values(params, obs, actions):
    """A stand-in ensemble: Q_k(s, a) = u_k . tanh(W_k s + V_k a), (K, B)."""
    hidden = jnp.tanh(
        jnp.einsum("bo,koh->kbh", obs, params["w"])
        + jnp.einsum("ba,kah->kbh", actions, params["v"])
    )
    return jnp.einsum("kbh,kh->kb", hidden, params["u"])


def policy(params, obs):
    return jnp.tanh(obs @ params["pi"])


def _value(what, transitions, field, indices, params):
    s, a = transitions["observations"][indices], transitions["actions"][indices]
    if what == "observations":
        return float(jnp.mean(q_values(params, field[indices], a)))
    if what == "actions":
        return float(jnp.mean(q_values(params, s, field[indices])))
    x = field[indices]
    return float(jnp.mean(q_values(params, x, policy(params, x))))


@pytest.mark.parametrize("what", ["observations", "actions", "next_observations"])
def test_the_gradient_attack_lowers_the_value_more_than_random_noise_within_its_range(what):
    transitions, params, range_ = _transitions(), _critic_params(), 0.5
    attack = gc.make_attack(what, q_values, policy, params, range_, seed=0)
    got, indices = dc.corrupt(transitions, what, "adversarial", 0.3, range_, seed=4, attack=attack)
    noisy, noisy_indices = dc.corrupt(transitions, what, "random", 0.3, range_, seed=4)
    np.testing.assert_array_equal(indices, noisy_indices)  # the same transitions
    clean = _value(what, transitions, transitions[what], indices, params)
    attacked = _value(what, transitions, got[what], indices, params)
    random = _value(what, transitions, noisy[what], indices, params)
    assert attacked < random - 0.1 and attacked < clean - 0.1
    delta = got[what] - transitions[what]
    bound = range_ * np.std(transitions[what], axis=0)
    assert np.all(np.abs(delta) <= bound * (1 + 1e-5) + 1e-6)
    for key in data.dataset.FIELDS:
        if key != what:
            np.testing.assert_array_equal(got[key], transitions[key], err_msg=key)
    again, _ = dc.corrupt(transitions, what, "adversarial", 0.3, range_, seed=4, attack=attack)
    np.testing.assert_array_equal(again[what], got[what])


def test_one_step_is_attack_py_fresh_adam_step_then_the_clamp():
    """With a fresh torch Adam per step, each step is -lr * g / (|g| + eps), then clamp."""
    x, sigma = jnp.array([[1.0, 2.0]]), jnp.array([[2.0, 0.5]])
    key = jax.random.PRNGKey(3)

    def loss(p):
        return jnp.mean(jnp.sum((x + p * sigma) * jnp.array([1.0, -3.0]), axis=1))

    got = gc.gradient_attack(loss, x, sigma, 0.5, key, steps=1, step_size=0.01)
    p0 = jax.random.uniform(key, x.shape, x.dtype, -0.5, 0.5) * sigma
    g = jax.grad(loss)(p0)
    want = x + jnp.clip(p0 - 0.005 * g / (jnp.abs(g) + 1e-8), -0.5, 0.5) * sigma
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # 100 steps of 0.01 range cross the whole box: a linear loss ends at its corner.
    got = gc.gradient_attack(loss, x, sigma, 0.5, key, steps=100, step_size=0.01)
    np.testing.assert_allclose(got, x + jnp.array([[-0.5, 0.5]]) * sigma, atol=1e-6)


# --- Adversarial mode from a run directory ---


def _fake_edac_restore(obs_dim: int = OBS, env=True):
    """What runner.policy.restore gives for an edac run, with the stand-in critic as its
    module's q_values and act (two members, stacked)."""
    module = SimpleNamespace(
        q_values=lambda config, params, obs, actions: q_values(params, obs, actions),
        act=lambda config, params, obs, rng, deterministic=False: policy(params, obs),
    )
    stacked = jax.tree.map(
        lambda *x: jnp.stack(x), _critic_params(obs_dim), _critic_params(obs_dim, 1)
    )
    made, made_params = gymnax.make("Pendulum-v1") if env else (None, None)
    program = SimpleNamespace(
        spec=SimpleNamespace(algo="edac"), agent=SimpleNamespace(module=module),
        members=[(0, 0), (0, 1)], stacked={"gamma": jnp.zeros(2)}, env=made, env_params=made_params,
    )  # fmt: skip
    return lambda run_dir: (program, SimpleNamespace(params=stacked), 42)


@pytest.mark.parametrize("what", ["observations", "actions", "next_observations"])
def test_attack_dataset_against_a_run_writes_and_records_the_critic(tmp_path, monkeypatch, what):
    monkeypatch.setattr(gc, "restore", _fake_edac_restore())
    source = tmp_path / "source.hdf5"
    transitions = _transitions()
    convert.write(source, transitions, {}, "d4rl")
    written = gc.attack_dataset(
        source, tmp_path / "adv.hdf5", what, "adversarial", 0.3, 0.5, seed=4, critic=tmp_path
    )
    dataset, metadata = data.load(written)
    record = metadata["corruption"]
    assert record["mode"] == "adversarial" and record["what"] == what
    assert record["critic"] == {
        "run_dir": str(tmp_path), "algo": "edac", "member": 0, "update": 42,
        "steps": 100, "step_size": 0.01,
    }  # fmt: skip
    attack = gc.make_attack(what, q_values, policy, _critic_params(), 0.5, seed=4)
    want, indices = dc.corrupt(transitions, what, "adversarial", 0.3, 0.5, 4, attack=attack)
    np.testing.assert_array_equal(dataset.to_numpy()[what], want[what])
    np.testing.assert_array_equal(dc.corrupted_indices(metadata), indices)


def test_a_critic_whose_shapes_do_not_fit_the_dataset_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "source.hdf5"
    convert.write(source, _transitions(obs_dim=2), {}, "d4rl")
    monkeypatch.setattr(gc, "restore", _fake_edac_restore())  # Pendulum: observations (3,)
    with pytest.raises(gc.CriticShapeMismatch, match=r"observations \(3,\)"):
        gc.attack_dataset(source, tmp_path / "a.hdf5", "actions", "adversarial", critic=tmp_path)
    monkeypatch.setattr(gc, "restore", _fake_edac_restore(env=False))
    with pytest.raises(gc.CriticShapeMismatch, match="does not take"):
        gc.attack_dataset(source, tmp_path / "a.hdf5", "actions", "adversarial", critic=tmp_path)
    monkeypatch.setattr(gc, "restore", _fake_edac_restore())
    with pytest.raises(dc.CorruptionError, match="member=2"):
        gc.attack_dataset(
            source, tmp_path / "a.hdf5", "actions", "adversarial", critic=tmp_path, member=2
        )
    assert not (tmp_path / "a.hdf5").exists()


def test_an_existing_output_is_refused_before_the_critic_is_restored(tmp_path, monkeypatch):
    def restore(run_dir):
        raise AssertionError("restored")

    monkeypatch.setattr(gc, "restore", restore)
    source, out = tmp_path / "source.hdf5", tmp_path / "out.hdf5"
    convert.write(source, _transitions(), {}, "d4rl")
    out.write_text("keep")
    with pytest.raises(data.DatasetExists):
        gc.attack_dataset(source, out, "observations", "adversarial", critic=tmp_path)


@pytest.fixture(scope="module")
def corrupted_pendulum(tmp_path_factory):
    """Pendulum transitions under a random policy, their observations corrupted, and a BC run
    trained on the corrupted copy through the runner."""
    env, params = gymnax.make("Pendulum-v1")
    episodes, horizon = 4, 25

    def episode(key):
        obs, state = env.reset(key, params)

        def step(carry, key):
            obs, state = carry
            action = jax.random.uniform(key, (1,), minval=-1, maxval=1)
            next_obs, state, reward, *_ = env.step(key, state, 2 * action, params)
            return (next_obs, state), (obs, action, reward, next_obs)

        return jax.lax.scan(step, (obs, state), jax.random.split(key, horizon))[1]

    rows = jax.vmap(episode)(jax.random.split(jax.random.PRNGKey(0), episodes))
    n = episodes * horizon
    obs, actions, rewards, next_obs = (np.asarray(x).reshape(n, -1) for x in rows)
    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1
    directory = tmp_path_factory.mktemp("corrupt")
    source = directory / "pendulum-random.hdf5"
    arrays = {
        "observations": obs, "actions": actions, "rewards": rewards[:, 0],
        "terminals": np.zeros(n, np.float32), "timeouts": timeouts.ravel(),
        "next_observations": next_obs,
    }  # fmt: skip
    env_spec = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": horizon}
    convert.write(source, arrays, {"env": env_spec}, "d4rl")
    out = dc.corrupt_dataset(source, directory / "pendulum-corrupt", "observations", rate=0.3)
    spec = RunSpec(
        algo="bc", agent={"hidden_sizes": [8], "batch_size": 16, "total_updates": 4},
        chunk_updates=2, dataset=str(out), eval_episodes=1,
    )  # fmt: skip
    train(spec, directory / "run", print_fn=quiet)
    return source, out, directory / "run"


def test_a_corrupted_copy_trains_through_the_runner(corrupted_pendulum):
    _, out, run = corrupted_pendulum
    assert data.read_metadata(out)["corruption"]["what"] == "observations"
    _, state, step = restore(run)
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_a_critic_run_of_another_algorithm_is_refused_by_name(corrupted_pendulum, tmp_path):
    source, _, run = corrupted_pendulum
    with pytest.raises(gc.NotAnEdacRun, match="is a bc run"):
        gc.attack_dataset(source, tmp_path / "a.hdf5", "observations", "adversarial", critic=run)


@pytest.mark.skipif("edac" not in agents.ALGORITHMS, reason="rljax/agents/edac.py not there yet")
def test_the_attack_against_a_trained_edac_run_lowers_its_value(corrupted_pendulum, tmp_path):
    source, _, _ = corrupted_pendulum
    spec = RunSpec(
        algo="edac", agent={"batch_size": 16, "total_updates": 20}, chunk_updates=10,
        dataset=str(source), eval_episodes=1,
    )  # fmt: skip
    train(spec, tmp_path / "edac", print_fn=quiet)
    program, q, pi, params, _ = gc.edac_critic(tmp_path / "edac")
    written = gc.attack_dataset(
        source, tmp_path / "adv.hdf5", "observations", "adversarial", 0.5, 0.5,
        critic=tmp_path / "edac",
    )  # fmt: skip
    got, metadata = data.load(written)
    clean = data.load(source)[0].to_numpy()
    indices = dc.corrupted_indices(metadata)
    noisy, _ = dc.corrupt(clean, "observations", "random", 0.5, 0.5)

    def value(obs):
        return float(jnp.mean(q(params, obs[indices], clean["actions"][indices])))

    assert value(got.to_numpy()["observations"]) < value(noisy["observations"])
