"""RAVL: the batch composition by hand (floor(ratio B) dataset rows, the rest from the model
replay's filled rows), the model replay's ring buffer with dropped rows, rollouts that store the
model's own rewards (no penalty) and stop at termination, the dynamics ensemble through RAVL's
phases (a linear system recovered, elites by held-out loss), jit/vmap agreement, determinism,
named errors, and learning from a generated Pendulum dataset against BC. EDAC's terms are
EDAC's file's (tests/test_inlined_copies.py holds them identical; their hand-computed cases are
in tests/test_offline_edac.py)."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import pendulum_medium_replay, synthetic_dataset

from rljax import envs
from rljax.agents import bc, ravl
from rljax.data import Dataset, load, normalized_score


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def filled_replay(capacity, rows, obs_dim=3, action_dim=2):
    """A replay whose first ``rows`` rows hold reward -(i + 1) and the observation's first
    entry 1000 + i."""
    replay = ravl.model_replay_init(capacity, obs_dim, action_dim)
    i = jnp.arange(rows, dtype=jnp.float32)
    transitions = {
        "observations": jnp.zeros((rows, obs_dim)).at[:, 0].set(1000 + i),
        "actions": jnp.zeros((rows, action_dim)),
        "rewards": -(i + 1),
        "terminals": jnp.zeros(rows),
        "next_observations": jnp.zeros((rows, obs_dim)),
    }
    return ravl.model_replay_add(replay, transitions, jnp.ones(rows, bool))


# --- Batch composition ---


def test_batch_of_256_at_5_percent_is_12_dataset_rows_and_244_model_rows():
    """The authors' int(0.05 * 256) = 12 dataset rows first, then 244 model rows, drawn only
    from the replay's filled rows (30 of 100: rewards -1..-30, never an empty row's 0); the
    dataset's rewards here are positive, the model's negative."""
    dataset = synthetic_dataset(n=64)
    dataset = dataset.replace(rewards=jnp.arange(1, 65, dtype=jnp.float32))
    replay = filled_replay(100, 30)
    batch = jax.jit(ravl.composed_batch, static_argnums=3)(
        dataset, replay, 0.05, 256, jax.random.PRNGKey(0)
    )
    rewards = np.asarray(batch["rewards"])
    assert (rewards[:12] > 0).all() and (rewards[12:] < 0).all()
    assert (rewards[12:] >= -30).all() and len(np.unique(rewards[12:])) > 20
    # each row is one whole transition of its source
    rows = rewards[:12].astype(int) - 1
    np.testing.assert_array_equal(batch["observations"][:12], dataset.observations[rows])
    np.testing.assert_array_equal(batch["actions"][:12], dataset.actions[rows])
    np.testing.assert_array_equal(batch["observations"][12:, 0], 999 - rewards[12:])
    assert set(batch) == set(ravl.BATCH_KEYS)


@pytest.mark.parametrize(
    "ratio, batch_size, from_dataset", [(0.0, 256, 0), (1.0, 256, 256), (0.7, 10, 7), (0.5, 5, 2)]
)
def test_dataset_rows_are_the_floor_and_the_ratio_may_be_traced(ratio, batch_size, from_dataset):
    """floor(ratio B) as Python's int of the product (0.7 * 10: 7 though float32 gives
    6.9999...), with the ratio a traced (vmapped) number."""
    dataset = synthetic_dataset(n=64).replace(rewards=jnp.ones(64))
    replay = filled_replay(50, 50)
    compose = jax.vmap(ravl.composed_batch, in_axes=(None, None, 0, None, None))
    batch = jax.jit(compose, static_argnums=3)(
        dataset, replay, jnp.array([ratio]), batch_size, jax.random.PRNGKey(1)
    )
    assert int((batch["rewards"][0] > 0).sum()) == from_dataset
    assert (batch["rewards"][0][:from_dataset] > 0).all()


# --- The model replay ---


def test_model_replay_keeps_the_kept_rows_in_order_and_wraps():
    """Rows 0..5 with rows 1 and 4 dropped go in as 0, 2, 3, 5; a second add of 3 rows into a
    capacity of 6 overwrites the oldest (the write pointer wraps), the size stops at 6."""
    replay = ravl.model_replay_init(6, 1, 1)

    def rows(values):
        values = jnp.asarray(values, jnp.float32)
        n = values.shape[0]
        return {
            "observations": values[:, None], "actions": jnp.zeros((n, 1)), "rewards": values,
            "terminals": jnp.zeros(n), "next_observations": values[:, None],
        }  # fmt: skip

    keep = jnp.array([1, 0, 1, 1, 0, 1], bool)
    replay = jax.jit(ravl.model_replay_add)(replay, rows([0, 1, 2, 3, 4, 5]), keep)
    np.testing.assert_array_equal(replay.data["rewards"], [0, 2, 3, 5, 0, 0])
    assert int(replay.size) == 4 and int(replay.pointer) == 4
    replay = ravl.model_replay_add(replay, rows([10, 11, 12]), jnp.ones(3, bool))
    np.testing.assert_array_equal(replay.data["rewards"], [12, 2, 3, 5, 10, 11])
    np.testing.assert_array_equal(replay.data["observations"][:, 0], [12, 2, 3, 5, 10, 11])
    assert int(replay.size) == 6 and int(replay.pointer) == 1


# --- Rollouts ---

TINY = dict(
    batch_size=32, hidden_sizes=(16, 16), num_critics=3, model_hidden_sizes=(16, 16),
    model_weight_decay=(2.5e-5, 5e-5, 1e-4), model_batch_size=32, holdout_interval=10,
    rollout_batch_size=16, rollout_length=3, rollout_freq=4, model_retain_epochs=2,
    model_updates=20, total_updates=8,
)  # fmt: skip


def model_free(n=200, obs_dim=3, seed=0) -> Dataset:
    """synthetic_dataset without terminals (for termination="none")."""
    dataset = synthetic_dataset(n=n, obs_dim=obs_dim, seed=seed)
    return dataset.replace(terminals=jnp.zeros(n))


def fit(config, dataset, state):
    """The model phase's ``model_updates`` steps, as train runs them."""
    return jax.jit(
        lambda s: jax.lax.scan(
            lambda s, _: ravl.update_model(config, dataset, s), s, None, config.model_updates
        )[0]
    )(state)


@pytest.fixture(scope="module")
def fitted():
    """(config, dataset, the policy phase's state after TINY's model phase, a jitted update
    taking the config as an argument: one compilation serves every traced variant)."""
    config = ravl.Config(**TINY)
    dataset = model_free()
    state = ravl.init(config, dataset, jax.random.PRNGKey(0))
    state = fit(config, dataset, state)
    update = jax.jit(lambda config, state: ravl.update(config, dataset, state))
    return config, dataset, ravl.begin_policy(config, dataset, state), update


def test_rollouts_store_the_models_sampled_rewards_without_penalty(fitted):
    """Step by step with the same keys: the policy samples, one elite's Gaussian gives (s', r),
    and the stored reward is that r itself (no penalty); each step starts where the last
    ended; Pendulum-like "none" keeps every row; the statistics are the rows'."""
    config, dataset, state, _ = fitted
    key = jax.random.PRNGKey(3)
    rows, keep, stats = ravl.rollout(
        config, state.model, state.params, dataset, state.obs_bounds, key
    )
    k, r = config.rollout_length, config.rollout_batch_size
    assert rows["rewards"].shape == (k * r,) and bool(keep.all())
    start_key, rng = jax.random.split(key)
    obs = dataset.observations[jax.random.randint(start_key, (r,), 0, 200)]
    for t, step_key in enumerate(jax.random.split(rng, k)):
        action_key, model_key = jax.random.split(step_key)
        action = ravl.act(config, state.params, obs, action_key)
        next_obs, reward, (mean, std) = ravl.ensemble_sample(state.model, obs, action, model_key)
        at = slice(t * r, (t + 1) * r)
        np.testing.assert_allclose(rows["observations"][at], obs, rtol=1e-6)
        np.testing.assert_allclose(rows["actions"][at], action, rtol=1e-6)
        np.testing.assert_allclose(rows["rewards"][at], reward, rtol=1e-6)
        np.testing.assert_allclose(rows["next_observations"][at], next_obs, rtol=1e-6)
        assert float(std.min()) > 0  # sampled, not the mean
        obs = next_obs
    np.testing.assert_array_equal(rows["terminals"], 0.0)
    deterministic = ravl.act(config, state.params, rows["observations"], None, True)
    assert not np.allclose(rows["actions"], deterministic)  # the policy's rollouts sample
    np.testing.assert_allclose(stats["rollout_reward_mean"], rows["rewards"].mean(), rtol=1e-5)
    low, high = state.obs_bounds
    outside = ((rows["next_observations"] < low) | (rows["next_observations"] > high)).any(-1)
    np.testing.assert_allclose(stats["rollout_out_of_bounds"], outside.mean(), rtol=1e-6)
    assert float(stats["rollout_length_mean"]) == k


def test_begin_policy_fills_the_replay_and_update_rolls_out_every_rollout_freq(fitted):
    """begin_policy stores one rollout (16 rows x 3 steps); the updates at steps 1-3 roll out
    nothing, those at steps 4 and 8 (rollout_freq 4) one each; the capacity (2 rollouts) caps
    the size, the third rollout overwriting the first."""
    config, dataset, state, update = fitted
    rows = config.rollout_batch_size * config.rollout_length
    assert int(state.replay.size) == rows and int(state.step) == 0
    np.testing.assert_array_equal(state.params.log_alpha, 0.0)
    sizes = []
    for _ in range(9):
        state, metrics = update(config, state)
        sizes.append(int(state.replay.size))
        assert all(np.isfinite(v).all() for v in metrics.values())
        assert set(ravl.ROLLOUT_METRICS) <= set(metrics)
    assert sizes == [rows] * 4 + [2 * rows] * 5  # the third rollout (step 8) overwrote the first
    assert int(state.replay.pointer) == rows


def test_a_terminated_rollout_stops():
    """brax/hopper's rule on a hand-set model that lowers the torso height by 0.3 a step (its
    mean; log-variance at its floor): from height 1.25 the second step ends at 0.65 < 0.7, so
    each row keeps 2 of its 3 steps, the second one terminal."""
    config = ravl.Config(**TINY, termination="brax/hopper")
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.05, 0.05, (200, 11)).astype(np.float32)
    obs[:, 0] = 1.25
    dataset = Dataset.from_arrays(
        observations=obs, actions=rng.uniform(-1, 1, (200, 3)), rewards=np.ones(200),
        terminals=np.zeros(200), timeouts=np.zeros(200), next_observations=obs,
    )  # fmt: skip
    state = ravl.init(config, dataset, jax.random.PRNGKey(0))
    model = ravl.ensemble_fitted(config, dataset, state.model)
    layers = jax.tree.map(jnp.zeros_like, model.weights["layers"])
    out = jnp.zeros(2 * 12).at[0].set(-0.3).at[12:].set(-100.0)  # mean dz, then log-variances
    layers["biases"] = (*layers["biases"][:-1], jnp.broadcast_to(out, (7, 24)))
    model = model.replace(weights=model.weights | {"layers": layers})
    bounds = (jnp.asarray(obs.min(0)), jnp.asarray(obs.max(0)))
    rows, keep, stats = ravl.rollout(
        config, model, state.params, dataset, bounds, jax.random.PRNGKey(1)
    )
    keep = np.asarray(keep).reshape(3, -1)
    np.testing.assert_array_equal(keep, [[True] * 16, [True] * 16, [False] * 16])
    terminals = np.asarray(rows["terminals"]).reshape(3, -1)
    np.testing.assert_array_equal(terminals[:2], [[0] * 16, [1] * 16])
    np.testing.assert_allclose(stats["rollout_length_mean"], 2.0)
    replay = ravl.model_replay_add(ravl.model_replay_init(96, 11, 3), rows, keep.reshape(-1))
    assert int(replay.size) == 32  # the third steps are not stored
    # the model's heights 0.95 and 0.65 lie below the dataset's 1.25: counted, not clipped
    np.testing.assert_allclose(stats["rollout_out_of_bounds"], 1.0)
    np.testing.assert_allclose(rows["next_observations"][16:32, 0], 0.65, atol=0.05)


def test_termination_rules_on_hand_made_observations():
    """brax's healthy ranges: hopper z > 0.7, |angle| < 0.2, |obs[1:]| < 100; walker2d
    0.8 < z < 2, |angle| < 1; Pendulum and halfcheetah never; "none" never."""
    hopper = np.zeros((5, 11), np.float32)
    hopper[:, 0] = [1.0, 0.69, 1.0, 1.0, 1.0]
    hopper[2, 1], hopper[3, 1], hopper[4, 7] = 0.21, -0.19, 150.0
    walker = np.zeros((5, 17), np.float32)
    walker[:, 0] = [1.2, 0.79, 2.01, 1.2, 1.2]
    walker[3, 1], walker[4, 1] = -1.01, 0.99
    cases = {
        "brax/hopper": (hopper, [False, True, True, False, True]),
        "brax/walker2d": (walker, [False, True, True, True, False]),
        "brax/halfcheetah": (np.full((2, 17), 1e3, np.float32), [False, False]),
        "Pendulum-v1": (np.full((2, 3), 1e3, np.float32), [False, False]),
        "none": (np.full((2, 3), 1e3, np.float32), [False, False]),
    }
    for name, (next_obs, done) in cases.items():
        config = ravl.Config(termination=name)
        got = ravl.terminates(config, None, None, jnp.asarray(next_obs))
        np.testing.assert_array_equal(got, done, err_msg=name)


# --- The dynamics ensemble through RAVL's model phase ---


def linear_system(n=2000, seed=0) -> Dataset:
    """s' = A s + B a, r = c.s + d.a with s in R^3, a in [-1, 1]^2, no noise."""
    rng = np.random.default_rng(seed)
    a_matrix = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.2], [-0.1, 0.0, 0.95]])
    b_matrix = np.array([[0.5, 0.0], [0.0, 0.3], [0.2, -0.2]])
    obs = rng.normal(size=(n, 3))
    actions = rng.uniform(-1, 1, (n, 2))
    return Dataset.from_arrays(
        observations=obs, actions=actions, rewards=obs @ [1.0, -0.5, 0.2] + actions @ [0.3, 0.1],
        terminals=np.zeros(n), timeouts=np.zeros(n),
        next_observations=obs @ a_matrix.T + actions @ b_matrix.T,
    )  # fmt: skip


def test_the_model_phase_recovers_a_linear_system_and_picks_elites_by_holdout_error():
    """1500 model steps on a noiseless linear system (2000 rows, 400 held out): the elites'
    predicted (s', r) on fresh rows within 0.05 RMS of the truth (measured: about 0.01; the
    targets' own RMS is about 1). Then two models' weights are broken (scaled by 3) and their
    records cleared: begin_policy's last holdout check sees their errors and leaves them out of
    the elites."""
    config = ravl.Config(
        **TINY | dict(model_updates=1500, holdout_interval=100, model_hidden_sizes=(64, 64),
                      model_batch_size=64, patience=50)
    )  # fmt: skip
    dataset = linear_system()
    state = ravl.init(config, dataset, jax.random.PRNGKey(1))
    state, metrics = jax.jit(
        lambda s: jax.lax.scan(
            lambda s, _: ravl.update_model(config, dataset, s), s, None, config.model_updates
        )
    )(state)
    assert int(state.step) == 1500 and np.isfinite(metrics["model_loss"]).all()
    fresh = linear_system(n=500, seed=1)
    policy = ravl.begin_policy(config, dataset, state)
    mean, _ = ravl.ensemble_predict(policy.model, fresh.observations, fresh.actions)
    truth = np.c_[fresh.next_observations - fresh.observations, fresh.rewards]
    rms = np.sqrt(np.mean((np.asarray(mean)[np.asarray(policy.model.elites)] - truth) ** 2))
    assert rms < 0.05, rms

    broken = state.model
    scale = jnp.where(jnp.isin(jnp.arange(7), jnp.array([2, 5])), 3.0, 1.0)
    layers = jax.tree.map(
        lambda x: x * scale.reshape(-1, *[1] * (x.ndim - 1)), broken.weights["layers"]
    )
    broken = broken.replace(
        weights=broken.weights | {"layers": layers},
        best_layers=layers,
        best_loss=broken.best_loss.at[jnp.array([2, 5])].set(jnp.inf),
    )
    elites = ravl.begin_policy(config, dataset, state.replace(model=broken)).model.elites
    assert sorted(np.asarray(elites).tolist()) == [0, 1, 3, 4, 6]


def test_a_stopped_model_keeps_its_weights():
    """A model whose evaluations without improvement reached ``patience`` is frozen: its
    layers and Adam moments stay as they were while the others move."""
    config = ravl.Config(**TINY)
    dataset = model_free()
    state = ravl.init(config, dataset, jax.random.PRNGKey(2))
    model = state.model.replace(since_best=state.model.since_best.at[3].set(config.patience))
    new, metrics = ravl.update_model(config, dataset, state.replace(model=model))
    assert int(metrics["models_training"]) == 6
    for old, moved in zip(
        jax.tree.leaves(model.weights["layers"]),
        jax.tree.leaves(new.model.weights["layers"]),
        strict=True,
    ):
        np.testing.assert_array_equal(old[3], moved[3])
        assert not np.allclose(np.delete(old, 3, 0), np.delete(moved, 3, 0))


# --- jit, vmap, determinism ---


def test_update_agrees_under_jit_and_vmap_over_traced_fields(fitted):
    """Two configs (another eta, dataset_ratio and critic lr) stacked in one vmapped update,
    at a step where a rollout is due, give each one's own jitted update."""
    config, dataset, state, update = fitted
    state = state.replace(step=jnp.asarray(config.rollout_freq, jnp.int32))
    configs = [config, config.replace(eta=0.0, dataset_ratio=0.5, critic_lr=1e-3)]
    singles = [update(c, state) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(lambda c: ravl.update(c, dataset, state)))(stacked)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-5, atol=1e-6)
    assert int(singles[0][0].replay.size) > int(state.replay.size)
    critic = [jax.tree.leaves(s[0].params.critic)[1] for s in singles]
    assert not np.allclose(critic[0], critic[1])


def test_train_runs_both_phases_deterministically():
    """train = init, model_updates model steps, begin_policy, total_updates policy steps: the
    model phase's and the policy phase's metrics come apart, finite, equal for equal keys, and
    the two vmapped seeds differ. (That a vmapped member is its own run: the update test.)"""
    config = ravl.Config(**TINY)
    dataset = model_free()
    run = jax.jit(jax.vmap(lambda key: ravl.train(config, dataset, key)))
    keys = jnp.stack([jax.random.PRNGKey(5), jax.random.PRNGKey(6)])
    state, (model_metrics, metrics) = run(keys)
    again = run(keys)
    assert_trees_close((state, model_metrics, metrics), (again[0], *again[1]), rtol=0, atol=0)
    assert model_metrics["model_loss"].shape == (2, config.model_updates)
    assert metrics["critic_loss"].shape == (2, config.total_updates)
    assert "model_loss" not in metrics and "critic_loss" not in model_metrics
    for values in (*model_metrics.values(), *metrics.values()):
        assert np.isfinite(values).all()
    np.testing.assert_array_equal(state.step, config.total_updates)
    assert not np.allclose(metrics["critic_loss"][0], metrics["critic_loss"][1])
    obs = dataset.observations[:5]
    params = jax.tree.map(lambda x: x[0], state.params)
    for deterministic in (True, False):
        action = ravl.act(config, params, obs, jax.random.PRNGKey(1), deterministic)
        assert action.shape == (5, 2) and (jnp.abs(action) <= 1).all()


# --- Named errors ---


def test_bad_configs_and_datasets_are_named():
    key = jax.random.PRNGKey(0)
    config = ravl.Config(**TINY)
    with pytest.raises(ValueError, match="num_critics=1"):
        ravl.init(config.replace(num_critics=1), model_free(), key)
    with pytest.raises(ValueError, match="num_elites=8 exceeds num_models=7"):
        ravl.init(config.replace(num_elites=8), model_free(), key)
    with pytest.raises(ValueError, match="too few for the model's held-out split"):
        ravl.init(config, model_free(n=35), key)  # 7 held out leave 28 < model_batch_size
    with pytest.raises(ValueError, match="too few"):
        ravl.init(config.replace(holdout_fraction=0.01), model_free(n=60), key)  # 0 held out
    with pytest.raises(ValueError, match="termination='none'.*brax/hopper"):
        ravl.init(config, synthetic_dataset(n=200), key)  # row 23 terminates
    with pytest.raises(ValueError, match="vector observations"):
        ravl.init(config, model_free().replace(observations=jnp.zeros((200, 3, 2))), key)
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        ravl.init(config, model_free().replace(actions=2 * model_free().actions), key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: ravl.init(config, d, key))(model_free())
    with pytest.raises(ValueError, match="termination='hopper'"):
        ravl.check(config.replace(termination="hopper"))


# --- Learning from a Pendulum dataset ---


def greedy_returns(agent, config, params, key, episodes=20):
    """Mean return of ``episodes`` Pendulum-v1 episodes of the deterministic policy (actions in
    [-1, 1] scaled to the env's torque bound 2), params stacked on a leading seed axis."""
    env, env_params = gymnax.make("Pendulum-v1")

    def episode(params, key):
        obs, env_state = env.reset(key, env_params)

        def step(carry, key):
            obs, env_state, total = carry
            action = agent.act(config, params, obs, key, deterministic=True)
            obs, env_state, reward, _, _ = env.step_env(key, env_state, 2 * action, env_params)
            return (obs, env_state, total + reward), None

        keys = jax.random.split(key, env_params.max_steps_in_episode)
        return jax.lax.scan(step, (obs, env_state, 0.0), keys)[0][2]

    keys = jax.random.split(key, episodes)
    per_seed = jax.vmap(lambda p: jax.vmap(episode, in_axes=(None, 0))(p, keys).mean())
    return np.asarray(jax.jit(per_seed)(params))


# EDAC's Pendulum preset (configs/edac/pendulum.yaml: N = 10, eta = 1, 64x64, learning rates
# 1e-3, normalized observations) on the paper's 5% dataset rows and k = 5 rollouts, with a
# smaller model and fewer, smaller rollouts than the paper's, for a CPU.
CI_PENDULUM = dict(
    hidden_sizes=(64, 64), normalize_obs=True, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
    total_updates=8000, model_updates=3000, model_hidden_sizes=(200, 200, 200),
    model_weight_decay=(2.5e-5, 5e-5, 7.5e-5, 1e-4), holdout_interval=250,
    rollout_batch_size=2000, rollout_freq=250, termination="Pendulum-v1",
)  # fmt: skip


@pytest.mark.slow
def test_ravl_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum medium-replay data (tests/runs.py, ~23k transitions, as the other
    offline checks), RAVL with CI_PENDULUM (3000 model steps, then 8000 policy updates) reached
    final normalized scores 182 and 230 (mean 206; greedy returns -369 and -155 over 20
    episodes) on this test's 2 seeds when this was written, against BC's -34 and -40 (mean -37;
    5000 updates, 64x64). The margin asked, 100, is under half the measured gap of 243. About 4
    min of CPU on 2 cores (BC's part 12 s), most of it the model phase and the 8000 updates of
    10 critics: longer than the other learning checks, because a cheaper budget did not learn:
    with a model of two layers of 128 trained 1500 steps (elites' holdout mse 0.09 against
    0.002 here) and 4000 updates RAVL scored -47, -65, -62 (3 seeds), no better than BC; with
    3x200 trained 2000 steps and 5000 updates, 108 and -39."""
    path, _ = pendulum_medium_replay(tmp_path)
    dataset, metadata = load(str(path))
    references = float(metadata["ref_min_score"]), float(metadata["ref_max_score"])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)

    def scores(agent, config):
        state, _ = jax.jit(jax.vmap(lambda key: agent.train(config, dataset, key)))(keys)
        returns = greedy_returns(agent, config, state.params, jax.random.PRNGKey(1))
        return normalized_score(returns, *references)

    baseline = scores(bc, bc.Config(total_updates=5000, hidden_sizes=(64, 64)))
    config = ravl.Config(**CI_PENDULUM)
    ours = scores(ravl, config)
    assert ours.mean() >= baseline.mean() + 100, (baseline, ours)


def test_the_true_dynamics_are_the_envs_own_step():
    """true_dynamics='Pendulum-v1' (the edge-of-reach diagnostic) steps rollouts as
    rljax.make('Pendulum-v1', unit_actions=True) does, next observation and reward, and refuses
    a dataset of other shapes by name."""
    env, params = envs.make("Pendulum-v1", unit_actions=True)
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    obs, states = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    actions = jax.random.uniform(jax.random.PRNGKey(1), (16, 1), minval=-1, maxval=1)
    next_obs, _, rewards, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
        keys, states, actions, params
    )
    ours, our_rewards = ravl.TRUE_DYNAMICS["Pendulum-v1"](obs, actions)
    np.testing.assert_allclose(ours, next_obs, atol=1e-5)
    np.testing.assert_allclose(our_rewards, rewards, atol=1e-5)
    config = ravl.Config(true_dynamics="Pendulum-v1", termination="Pendulum-v1", num_critics=2)
    with pytest.raises(ValueError, match="true_dynamics='Pendulum-v1'.*has 5 and 2"):
        ravl.init(config, synthetic_dataset(n=2000, obs_dim=5, action_scale=0.5), keys[0])
