"""MOPO and its dynamics ensemble (the reference copy of the section that the model-based agents
share): the ensemble's loss and which terms carry gradients, on a hand-set linear ensemble; the
soft clamp of the log-variance; recovery of a known linear system's next state and reward;
elites chosen by holdout error (models trained on shuffled targets are left out); early
stopping freezing a model (weights and Adam moments); the termination table on hand-made
observations; MOPO's penalty by hand; the model replay's masked ring writes; rollouts that stop
storing a row after its terminal step; the mixed batch's composition; the SAC target by hand;
jit/vmap agreement; determinism; named errors; and learning from a generated Pendulum dataset
against BC."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax.agents import mopo
from rljax.data import Dataset

# A small ensemble and policy for the fast tests.
SMALL = dict(
    num_models=4, num_elites=2, model_hidden_sizes=(32, 32), model_weight_decay=(1e-4, 1e-4, 1e-4),
    model_batch_size=32, holdout_interval=20, model_updates=40, hidden_sizes=(16, 16),
    batch_size=32, total_updates=20, rollout_freq=10, rollout_batch_size=16, rollout_length=3,
    model_retain_epochs=2,
)  # fmt: skip


def linear_dataset(
    n=1500, obs_dim=3, action_dim=2, seed=0
) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """s' = s + [s, a] M, r = [s, a] w, no noise; returns the dataset, M and w."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, action_dim)).astype(np.float32)
    inputs = np.concatenate([obs, actions], 1)
    m = (0.3 * rng.normal(size=(obs_dim + action_dim, obs_dim))).astype(np.float32)
    w = rng.normal(size=obs_dim + action_dim).astype(np.float32)
    dataset = Dataset.from_arrays(
        observations=obs, actions=actions, rewards=inputs @ w, terminals=np.zeros(n, np.float32),
        timeouts=np.zeros(n, np.float32), next_observations=obs + inputs @ m,
    )  # fmt: skip
    return dataset, m, w


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def fit_models(config, dataset, key, steps=None):
    steps = config.model_updates if steps is None else steps
    state = mopo.init(config, dataset, key)

    def run(state):
        return jax.lax.scan(lambda s, _: mopo.update_model(config, dataset, s), state, None, steps)

    return jax.jit(run)(state)


# --- The dynamics ensemble ---


def test_soft_clamp_keeps_the_log_variance_inside_the_learned_bounds():
    """OfflineRL-Kit's soft clamp: max - softplus(max - x), then min + softplus(x - min)."""
    layers = {"kernels": (jnp.zeros((1, 2)),), "biases": (jnp.array([0.0, 1.0]),)}
    bounds = {"max_logvar": jnp.array([0.5]), "min_logvar": jnp.array([-10.0])}
    raw = np.array([-50.0, -10.0, 0.0, 0.5, 50.0], np.float32)
    logvars = [float(mopo.model_forward(layers | {"biases": (jnp.array([0.0, x]),)}, bounds,
                                        jnp.zeros(1))[1][0]) for x in raw]  # fmt: skip
    upper = 0.5 - np.log1p(np.exp(0.5 - raw))
    expected = -10 + np.log1p(np.exp(upper + 10))
    np.testing.assert_allclose(logvars, expected, rtol=1e-5)
    # The second softplus lifts the top by softplus(-10.5) ~ 3e-5: "soft" bounds.
    assert -10 <= min(logvars) and max(logvars) < 0.5 + 1e-4
    np.testing.assert_allclose(logvars[0], -10, atol=1e-6)
    np.testing.assert_allclose(logvars[-1], 0.5, atol=1e-4)


def test_ensemble_loss_by_hand_and_its_gradients():
    """Two linear models (no hidden layer) on one (s, a) -> one output: per model mean (mu -
    y)^2 exp(-logvar) + logvar + decay w |K|^2 / 2, summed over the active models, plus 0.01
    (max_logvar - min_logvar). A stopped model gets no gradient; the bounds get the 0.01."""
    config = mopo.Config(
        num_models=2, num_elites=1, model_hidden_sizes=(), model_weight_decay=(0.1,)
    )
    kernels = jnp.array([[[1.0, 0.5]], [[-2.0, 0.0]]])  # (N=2, in=1, 2 outputs: mean, logvar)
    weights = {
        "layers": {"kernels": (kernels,), "biases": (jnp.array([[0.0, -1.0], [1.0, 0.0]]),)},
        "bounds": {"max_logvar": jnp.array([30.0]), "min_logvar": jnp.array([-30.0])},
    }
    inputs = jnp.array([[[1.0], [2.0]], [[1.0], [-1.0]]])  # (N, B=2, 1)
    targets = jnp.array([[[0.0], [1.0]], [[0.0], [0.0]]])
    active = jnp.array([True, False])
    loss, aux = mopo.ensemble_loss(weights, inputs, targets, active, config)
    # Model 0: mu = x, raw logvar = 0.5 x - 1 (the wide bounds leave it unchanged to 1e-6).
    x, y = np.array([1.0, 2.0]), np.array([0.0, 1.0])
    lv = 0.5 * x - 1
    nll0 = np.mean((x - y) ** 2 * np.exp(-lv) + lv)
    decay0 = 0.1 * 0.5 * (1.0 + 0.25)
    np.testing.assert_allclose(aux["nll"][0], nll0, rtol=1e-5)
    np.testing.assert_allclose(aux["decay"], [decay0, 0.1 * 0.5 * 4.0], rtol=1e-6)
    np.testing.assert_allclose(loss, nll0 + decay0 + 0.01 * 60.0, rtol=1e-5)
    grads = jax.grad(lambda w: mopo.ensemble_loss(w, inputs, targets, active, config)[0])(weights)
    assert np.all(np.asarray(grads["layers"]["kernels"][0][1]) == 0)
    assert np.all(np.asarray(grads["layers"]["biases"][0][1]) == 0)
    assert np.abs(grads["layers"]["kernels"][0][0]).max() > 0
    # Far from the clamp the bounds' gradient is the 0.01 term alone.
    np.testing.assert_allclose(grads["bounds"]["max_logvar"], [0.01], atol=1e-6)
    np.testing.assert_allclose(grads["bounds"]["min_logvar"], [-0.01], atol=1e-6)


def test_ensemble_recovers_a_linear_system():
    """s' = s + [s, a] M, r = [s, a] w without noise (1500 rows, 300 held out): 1500 steps of
    4 models (two hidden layers of 32) bring the elites' predicted means on 200 fresh inputs
    within 0.1 of the true next-state change and reward everywhere and 0.02 in root mean square
    (measured, seeds 0 and 1: max 0.035 and 0.034, rms 0.0055 and 0.0062; after 600 steps max
    0.084), their predicted std under 0.05 (measured 0.012, 0.013), holdout mean squared
    error under 1e-3 (measured 5e-5) from about 1 before training."""
    dataset, m, w = linear_dataset()
    config = mopo.Config(**SMALL | dict(model_updates=1500, holdout_interval=50))
    state, metrics = fit_models(config, dataset, jax.random.PRNGKey(0))
    assert metrics["model_holdout_mse"][-1] < 1e-3 < metrics["model_holdout_mse"][0]
    ensemble = mopo.ensemble_fitted(config, dataset, state.training)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(200, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (200, 2)).astype(np.float32)
    inputs = np.concatenate([obs, actions], 1)
    mean, std = mopo.ensemble_predict(ensemble, obs, actions)
    elites = np.asarray(ensemble.elites)
    truth = np.concatenate([inputs @ m, (inputs @ w)[:, None]], 1)
    error = np.abs(np.asarray(mean)[elites] - truth)
    assert error.max() < 0.1 and np.sqrt(np.square(error).mean()) < 0.02
    assert np.asarray(std)[elites].max() < 0.05


def test_elites_are_the_models_with_the_lowest_holdout_error():
    """Models 0 and 2 are trained on targets shuffled across the batch, 1 and 3 on the true
    ones: the two elites are 1 and 3, and their best snapshots are what the ensemble uses."""
    dataset, _, _ = linear_dataset()
    config = mopo.Config(**SMALL)
    training = mopo.init(config, dataset, jax.random.PRNGKey(2)).training
    shuffled = jnp.array([True, False, True, False])
    active = jnp.ones(4, bool)

    @jax.jit
    def step(training, key):
        row_key, perm_key = jax.random.split(key)
        rows = training.train_rows[
            jax.random.randint(row_key, (4, 32), 0, training.train_rows.size)
        ]
        inputs, targets = mopo._model_rows(dataset, rows)
        inputs = (inputs - training.input_mean) / training.input_std
        permuted = targets[:, jax.random.permutation(perm_key, 32)]
        targets = jnp.where(shuffled[:, None, None], permuted, targets)
        grads = jax.grad(lambda w: mopo.ensemble_loss(w, inputs, targets, active, config)[0])(
            training.weights
        )
        weights, opt = {}, {}
        for part in ("layers", "bounds"):
            weights[part], opt[part] = mopo._adam_step(
                1e-3, grads[part], training.opt[part], training.weights[part]
            )
        return training.replace(weights=weights, opt=opt), None

    training, _ = jax.lax.scan(step, training, jax.random.split(jax.random.PRNGKey(3), 300))
    ensemble = mopo.ensemble_fitted(config, dataset, training)
    assert sorted(np.asarray(ensemble.elites).tolist()) == [1, 3]
    assert_trees_close(ensemble.weights["layers"], training.weights["layers"], rtol=0, atol=0)


def test_holdout_check_snapshots_only_an_improvement_above_one_percent():
    dataset, _, _ = linear_dataset()
    config = mopo.Config(**SMALL | dict(patience=2))
    training = mopo.init(config, dataset, jax.random.PRNGKey(4)).training
    errors = mopo.holdout_errors(dataset, training)
    np.testing.assert_allclose(training.holdout_mse, errors, rtol=1e-6)
    best = jnp.array([errors[0] * 1.005, errors[1] * 1.02, jnp.inf, errors[3] * 0.9])
    marker = jax.tree.map(lambda x: jnp.full_like(x, 7.0), training.best_layers)
    training = training.replace(best_loss=best, best_layers=marker, since_best=jnp.ones(4, int))
    checked = mopo.ensemble_evaluate(config, dataset, training)
    np.testing.assert_array_equal(checked.since_best, [2, 0, 0, 2])
    np.testing.assert_allclose(checked.best_loss, [best[0], errors[1], errors[2], best[3]])
    for new, current in zip(jax.tree.leaves(checked.best_layers),
                            jax.tree.leaves(training.weights["layers"]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(new[jnp.array([1, 2])], current[jnp.array([1, 2])])
        np.testing.assert_array_equal(new[jnp.array([0, 3])], 7.0)


def test_early_stopping_freezes_a_model_and_skips_when_all_have_stopped():
    """A model past its patience keeps its weights and Adam moments while the others train;
    with every model stopped the step changes nothing, the bounds included."""
    dataset, _, _ = linear_dataset()
    config = mopo.Config(**SMALL | dict(patience=3, holdout_interval=1000))
    training = mopo.init(config, dataset, jax.random.PRNGKey(5)).training
    training = training.replace(since_best=jnp.array([3, 0, 0, 5]))
    update = jax.jit(lambda t, k: mopo.ensemble_update(config, dataset, t, k))
    new, metrics = update(training, jax.random.PRNGKey(0))
    new, metrics = update(new, jax.random.PRNGKey(1))
    for tree in ("weights", "opt"):
        old_layers = getattr(training, tree)["layers"]
        new_layers = getattr(new, tree)["layers"]
        for before, after in zip(jax.tree.leaves(old_layers), jax.tree.leaves(new_layers),
                                 strict=True):  # fmt: skip
            if before.ndim == 0:
                continue
            np.testing.assert_array_equal(after[jnp.array([0, 3])], before[jnp.array([0, 3])])
            if tree == "weights":
                assert not np.allclose(after[1], before[1])
    assert int(metrics["models_training"]) == 2
    stopped = training.replace(since_best=jnp.full(4, 3))
    after, metrics = update(stopped, jax.random.PRNGKey(0))
    assert_trees_close(after.weights, stopped.weights, rtol=0, atol=0)
    assert_trees_close(after.opt, stopped.opt, rtol=0, atol=0)
    assert int(after.step) == 1 and int(metrics["models_training"]) == 0


def test_patience_runs_out_during_training():
    """Evaluating every step with patience 1 on a 1e-9 learning rate: no model improves by 1 %
    after its first evaluation, so every model has stopped after the second."""
    dataset, _, _ = linear_dataset()
    config = mopo.Config(**SMALL | dict(patience=1, holdout_interval=1, model_lr=1e-9))
    state, metrics = fit_models(config, dataset, jax.random.PRNGKey(6), steps=4)
    np.testing.assert_array_equal(metrics["models_training"], [4, 0, 0, 0])
    assert np.isfinite(state.training.best_loss).all()


def test_termination_table_on_hand_made_observations():
    """brax's healthy ranges: hopper z = obs[0] > 0.7, |angle = obs[1]| < 0.2, |obs[1:]| < 100;
    walker2d 0.8 < z < 2, |angle| < 1; Pendulum and halfcheetah never end."""
    hopper = np.zeros((5, 11), np.float32)
    hopper[:, 0] = [1.2, 0.6, 1.2, 1.2, 1.2]
    hopper[2, 1], hopper[3, 1], hopper[4, 7] = 0.25, -0.19, 150.0
    walker = np.zeros((5, 17), np.float32)
    walker[:, 0] = [1.2, 0.7, 2.1, 1.2, 1.2]
    walker[3, 1], walker[4, 1] = -1.1, 0.9
    check = lambda name, obs: np.asarray(mopo.TERMINATIONS[name](None, None, obs))  # noqa: E731
    np.testing.assert_array_equal(check("brax/hopper", hopper), [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(check("brax/walker2d", walker), [0, 1, 1, 1, 0])
    for name in ("Pendulum-v1", "brax/halfcheetah"):
        assert not check(name, hopper).any()
    config = mopo.Config(termination="none")
    assert not np.asarray(mopo.terminates(config, None, None, hopper)).any()
    assert set(mopo.TERMINATION_CHOICES) == {"none", *mopo.TERMINATIONS}


# --- MOPO: the penalty, the model replay, rollouts, batches ---


def test_penalty_is_the_largest_models_std_norm():
    """u = max over all N models (elites or not) of |sigma_i|_2 over the S + 1 outputs."""
    std = jnp.array([
        [[3.0, 4.0], [1.0, 0.0]],   # model 0: norms 5, 1
        [[0.0, 1.0], [6.0, 8.0]],   # model 1: norms 1, 10
        [[1.0, 1.0], [0.0, 2.0]],   # model 2: norms sqrt 2, 2
    ])  # fmt: skip
    np.testing.assert_allclose(mopo.uncertainty_penalty(std), [5.0, 10.0], rtol=1e-6)
    np.testing.assert_allclose(
        mopo.penalized_reward(jnp.array([1.0, -1.0]), std, 0.5), [-1.5, -6.0], rtol=1e-6
    )
    reference = np.amax(np.linalg.norm(np.asarray(std), axis=2), axis=0)  # OfflineRL-Kit's
    np.testing.assert_allclose(mopo.uncertainty_penalty(std), reference, rtol=1e-6)


def test_replay_store_writes_only_the_stored_rows_and_wraps():
    capacity = 5
    empty = {k: jnp.zeros((capacity, 2)) for k in ("observations", "actions", "next_observations")}
    empty |= {"rewards": jnp.zeros(capacity), "terminals": jnp.zeros(capacity)}
    replay = mopo.Replay(empty, jnp.array(3), jnp.array(3))
    rows = {k: jnp.broadcast_to(jnp.arange(1.0, 5.0).reshape(4, *[1] * (v.ndim - 1)),
                                (4, *v.shape[1:])) for k, v in empty.items()}  # fmt: skip
    stored = jnp.array([True, False, True, True])
    new = mopo.replay_store(replay, rows, stored)
    # Rows 1, 3, 4 go to slots 3, 4, 0 (wrapping); row 2 is dropped; slots 1 and 2 untouched.
    np.testing.assert_array_equal(new.data["rewards"], [4.0, 0.0, 0.0, 1.0, 3.0])
    np.testing.assert_array_equal(new.data["observations"][:, 0], [4.0, 0.0, 0.0, 1.0, 3.0])
    assert int(new.ptr) == 1 and int(new.size) == 5


def hand_ensemble(obs_dim, action_dim, num_models=3, num_elites=2, delta=0.0, log_std=-8.0):
    """Models with no hidden layer predicting s' - s = delta, r = 1 with std exp(log_std)
    (far inside wide log-variance bounds): the config and the Ensemble."""
    changes = dict(num_models=num_models, num_elites=num_elites, model_hidden_sizes=(),
                   model_weight_decay=(0.0,))  # fmt: skip
    out = obs_dim + 1
    bias = jnp.concatenate([jnp.full(obs_dim, delta), jnp.ones(1), jnp.full(out, 2 * log_std)])
    weights = {
        "layers": {
            "kernels": (jnp.zeros((num_models, obs_dim + action_dim, 2 * out)),),
            "biases": (jnp.tile(bias, (num_models, 1)),),
        },
        "bounds": {"max_logvar": jnp.full(out, 40.0), "min_logvar": jnp.full(out, -40.0)},
    }
    ensemble = mopo.Ensemble(
        weights, jnp.zeros(obs_dim + action_dim), jnp.ones(obs_dim + action_dim),
        jnp.arange(num_elites),
    )  # fmt: skip
    return mopo.Config(**SMALL | changes), ensemble


def test_rollouts_stop_storing_a_row_after_its_terminal_step():
    """Walker2d's rule on a model that keeps the state (s' = s): rows starting at height 0.5
    terminate at once (stored once, terminal), rows at height 1.2 never (stored h times); the
    stored reward is 1 - lambda u with u = sqrt(S + 1) exp(log_std)."""
    obs_dim, n, h = 17, 64, 3
    obs = np.zeros((n, obs_dim), np.float32)
    obs[:, 0] = np.where(np.arange(n) % 2 == 0, 0.5, 1.2)
    dataset = Dataset.from_arrays(
        observations=obs, actions=np.zeros((n, 2), np.float32), rewards=np.ones(n, np.float32),
        terminals=(obs[:, 0] < 0.8).astype(np.float32), timeouts=np.zeros(n, np.float32),
        next_observations=obs,
    )  # fmt: skip
    config, ensemble = hand_ensemble(obs_dim, 2, log_std=-4.0)
    config = config.replace(termination="brax/walker2d", rollout_length=h, penalty_coef=0.5)
    state = mopo.init(config, dataset, jax.random.PRNGKey(0))
    policy = mopo.begin_policy(config, dataset, state).replace(ensemble=ensemble)
    empty = jax.tree.map(jnp.zeros_like, policy.replay.data)
    policy = policy.replace(replay=mopo.Replay(empty, jnp.array(0), jnp.array(0)))
    replay, stats = jax.jit(lambda p, k: mopo.rollout(config, dataset, p, k))(
        policy, jax.random.PRNGKey(1)
    )
    size = int(replay.size)
    data = jax.tree.map(lambda x: np.asarray(x)[:size], replay.data)
    low = np.abs(data["observations"][:, 0] - 0.5) < 0.1
    assert low.sum() + (~low).sum() / h == config.rollout_batch_size
    assert (~low).sum() % h == 0 and low.any() and (~low).any()
    np.testing.assert_array_equal(data["terminals"], low.astype(np.float32))
    penalty = np.sqrt(obs_dim + 1) * np.exp(-4.0)
    np.testing.assert_allclose(stats["rollout_penalty"], penalty, rtol=1e-4)
    np.testing.assert_allclose(data["rewards"].mean(), 1 - 0.5 * penalty, atol=0.01)
    assert float(stats["rollout_transitions"]) == size


def test_out_of_bounds_rollouts_are_counted_not_clipped():
    """A model that moves every state by +100 sends every next state outside the dataset's
    range: the fraction is 1 and the stored next states keep the +100."""
    dataset = synthetic_dataset(n=400)
    config, ensemble = hand_ensemble(3, 2, delta=100.0)
    state = mopo.init(config.replace(termination="brax/halfcheetah"), dataset,
                      jax.random.PRNGKey(0))  # fmt: skip
    config = config.replace(termination="brax/halfcheetah")
    policy = mopo.begin_policy(config, dataset, state).replace(ensemble=ensemble)
    empty = jax.tree.map(jnp.zeros_like, policy.replay.data)
    policy = policy.replace(replay=mopo.Replay(empty, jnp.array(0), jnp.array(0)))
    replay, stats = mopo.rollout(config, dataset, policy, jax.random.PRNGKey(1))
    np.testing.assert_allclose(stats["rollout_out_of_bounds"], 1.0)
    size = int(replay.size)
    assert size == config.rollout_batch_size * config.rollout_length
    moved = replay.data["next_observations"][:size] - replay.data["observations"][:size]
    np.testing.assert_allclose(moved, 100.0, atol=1e-3)


def test_mixed_batch_takes_floor_real_ratio_dataset_rows_first():
    """Dataset rewards are within +-5, the model replay's -1000: the first floor(0.25 * 32) = 8
    rows are dataset rows, the rest model rows."""
    dataset = synthetic_dataset(n=400)
    config = mopo.Config(**SMALL | dict(real_ratio=0.25, termination="brax/halfcheetah"))
    policy = mopo.begin_policy(config, dataset, mopo.init(config, dataset, jax.random.PRNGKey(0)))
    data = policy.replay.data | {"rewards": jnp.full_like(policy.replay.data["rewards"], -1000.0)}
    policy = policy.replace(replay=policy.replay.replace(data=data))
    batch = mopo.sample_batch(config, dataset, policy, jax.random.PRNGKey(1))
    real = np.asarray(batch["rewards"]) > -100
    np.testing.assert_array_equal(real, np.arange(32) < 8)
    assert all(v.shape[0] == 32 for v in batch.values())


# --- The SAC step ---


def test_soft_target_takes_the_min_of_the_two_target_critics():
    """Linear critics (no hidden layer) Q_j = w_j . [s, a] + b_j: y = r + gamma (1 - d) (min_j
    Q_j(s', a') - alpha log pi)."""
    config = mopo.Config(hidden_sizes=(), gamma=0.5)
    target = {"params": {"Dense_0": {"kernel": jnp.array([[[1.0], [0.0]], [[0.0], [2.0]]]),
                                     "bias": jnp.array([[0.0], [1.0]])}}}  # fmt: skip
    batch = {
        "next_observations": jnp.array([[1.0], [3.0]]),
        "rewards": jnp.array([1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0]),
    }
    next_action, log_prob = jnp.array([[2.0], [0.0]]), jnp.array([0.5, 0.5])
    y = mopo.soft_target(batch, next_action, log_prob, target, 0.2, config)
    # Row 0: Q = (1, 5), min 1, 1 + 0.5 (1 - 0.1) = 1.45; row 1 terminal: 2.
    np.testing.assert_allclose(y, [1.45, 2.0], rtol=1e-6)


def test_update_order_critics_then_actor_then_temperature():
    """The critics step on the old actor and alpha; the actor on the new critics; alpha on the
    actor's log-probabilities before its step (OfflineRL-Kit's SACPolicy.learn)."""
    dataset = synthetic_dataset(n=400)
    config = mopo.Config(**SMALL | dict(termination="brax/halfcheetah", tau=0.1))
    state = mopo.begin_policy(config, dataset, mopo.init(config, dataset, jax.random.PRNGKey(3)))
    batch = {k: getattr(dataset, k)[:32] for k in mopo.BATCH_KEYS}
    new, metrics = jax.jit(mopo.update_on_batch, static_argnums=0)(config, state, batch)
    _, next_key, actor_key = jax.random.split(state.rng, 3)
    p = state.params
    actor = mopo._actor(config, 2)
    alpha = jnp.exp(p.log_alpha)
    a2, lp2 = mopo.sample_action(*actor.apply(p.actor, batch["next_observations"]), next_key)
    y = mopo.soft_target(batch, a2, lp2, state.target_critic, alpha, config)
    grads = jax.grad(lambda c: mopo.twin_critic_loss(c, batch, y, config)[0])(p.critic)
    critic, _ = mopo._adam_step(config.critic_lr, grads, state.critic_opt, p.critic)
    assert_trees_close(new.params.critic, critic, rtol=1e-5, atol=1e-7)
    loss = lambda a: mopo.policy_loss(a, critic, batch["observations"], actor_key, alpha, 2,  # noqa: E731
                                      config)[0]  # fmt: skip
    np.testing.assert_allclose(metrics["actor_loss"], loss(p.actor), rtol=1e-5)
    actor_params, _ = mopo._adam_step(config.actor_lr, jax.grad(loss)(p.actor), state.actor_opt,
                                      p.actor)  # fmt: skip
    assert_trees_close(new.params.actor, actor_params, rtol=1e-5, atol=1e-7)
    _, (log_prob, _) = mopo.policy_loss(p.actor, critic, batch["observations"], actor_key, alpha,
                                        2, config)  # fmt: skip
    np.testing.assert_allclose(
        metrics["alpha_loss"], mopo.alpha_loss(p.log_alpha, log_prob, -2.0), rtol=1e-5, atol=1e-8
    )
    expected = jax.tree.map(lambda q, t: 0.9 * t + 0.1 * q, critic, state.target_critic)
    assert_trees_close(new.target_critic, expected, rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1


# --- jit, vmap, determinism ---


def test_update_model_agrees_under_vmap_over_seeds_and_learning_rates():
    dataset = synthetic_dataset(n=400)
    config = mopo.Config(**SMALL | dict(termination="brax/halfcheetah", holdout_interval=2))
    configs = [config, config.replace(model_lr=3e-3)]
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    states = [mopo.init(c, dataset, k) for c, k in zip(configs, keys, strict=True)]

    def three(config, state):
        return jax.lax.scan(lambda s, _: mopo.update_model(config, dataset, s), state, None, 3)

    singles = [jax.jit(three)(c, s) for c, s in zip(configs, states, strict=True)]
    stack = lambda *x: jnp.stack(x)  # noqa: E731
    swept = jax.jit(jax.vmap(three))(jax.tree.map(stack, *configs), jax.tree.map(stack, *states))
    for i, single in enumerate(singles):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], swept), single, rtol=1e-5, atol=1e-6)


def test_update_agrees_under_jit_and_vmap_over_penalty_and_real_ratio():
    """Two members with different penalty_coef and real_ratio, at a step where rollouts are
    due: each member of the vmapped update is its own jitted update."""
    dataset = synthetic_dataset(n=400)
    config = mopo.Config(**SMALL | dict(termination="brax/halfcheetah"))
    configs = [config, config.replace(penalty_coef=2.0, real_ratio=0.5)]
    state = mopo.begin_policy(config, dataset, mopo.init(config, dataset, jax.random.PRNGKey(5)))
    state = state.replace(step=jnp.array(config.rollout_freq))
    update = lambda c, s: mopo.update(c, dataset, s)  # noqa: E731
    singles = [jax.jit(update)(c, state) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(update, in_axes=(0, None)))(stacked, state)
    for i, single in enumerate(singles):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], swept), single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0][1]["batch_reward"], singles[1][1]["batch_reward"])
    assert int(singles[0][0].replay.size) == 2 * config.rollout_batch_size * config.rollout_length


def test_train_is_finite_and_deterministic():
    dataset = synthetic_dataset(n=400)
    config = mopo.Config(**SMALL | dict(termination="brax/halfcheetah"))
    run = jax.jit(lambda key: mopo.train(config, dataset, key))
    state, (model_metrics, metrics) = run(jax.random.PRNGKey(7))
    again, (_, metrics_again) = run(jax.random.PRNGKey(7))
    assert model_metrics["model_loss"].shape == (config.model_updates,)
    assert metrics["critic_loss"].shape == (config.total_updates,)
    for name, values in (model_metrics | metrics).items():
        assert np.isfinite(values).all(), name
    for name, values in metrics.items():
        np.testing.assert_array_equal(values, metrics_again[name])
    assert_trees_close(state.params, again.params, rtol=0, atol=0)
    assert {"rollout_penalty", "rollout_out_of_bounds", "rollout_reward"} <= set(metrics)
    obs = dataset.observations[:5]
    for deterministic in (True, False):
        action = mopo.act(config, state.params, obs, jax.random.PRNGKey(1), deterministic)
        assert action.shape == (5, 2) and (jnp.abs(action) <= 1).all()


# --- Named errors ---


def test_named_errors():
    key = jax.random.PRNGKey(0)
    config = mopo.Config(**SMALL | dict(termination="brax/hopper"))
    with pytest.raises(ValueError, match="num_elites=5 exceeds num_models=4"):
        mopo.init(config.replace(num_elites=5), synthetic_dataset(), key)
    with pytest.raises(ValueError, match="model_weight_decay has 3 entries"):
        mopo.check(config.replace(model_hidden_sizes=(8,)))
    with pytest.raises(ValueError, match="too few for the model's held-out split"):
        mopo.init(config, synthetic_dataset(n=30), key)  # 6 held out, 24 < 32 to train on
    with pytest.raises(ValueError, match="holds out 0"):
        mopo.init(config.replace(holdout_fraction=0.001), synthetic_dataset(n=400), key)
    with pytest.raises(ValueError, match=r"termination='none' but the dataset holds 1 terminal"):
        mopo.init(config.replace(termination="none"), synthetic_dataset(n=400), key)
    with pytest.raises(ValueError, match="termination='brax/ant'"):
        mopo.check(config.replace(termination="brax/ant"))
    with pytest.raises(ValueError, match="vector observations"):
        images = synthetic_dataset(n=400).replace(observations=jnp.zeros((400, 4, 4)))
        mopo.init(config, images, key)
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        mopo.init(config, synthetic_dataset(n=400, action_scale=2.0), key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: mopo.init(config, d, key))(synthetic_dataset(n=400))


# --- Learning from a Pendulum dataset ---

PENDULUM = dict(
    num_models=5, num_elites=3, model_hidden_sizes=(64, 64),
    model_weight_decay=(2.5e-5, 5e-5, 1e-4), model_updates=5000, holdout_interval=250,
    hidden_sizes=(64, 64), total_updates=6000,
    rollout_freq=250, rollout_batch_size=1000, rollout_length=5, actor_lr=1e-3, critic_lr=1e-3,
    alpha_lr=1e-3, termination="Pendulum-v1",
)  # fmt: skip


@pytest.mark.slow
def test_mopo_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum medium-replay data (as tests/test_offline_edac.py: the recipe's SAC
    stopped at 48k steps; ~23k transitions), MOPO with OfflineRL-Kit's penalty (lambda 0.5), real
    ratio (0.05) and rollout length (5), but CI-sized models and networks (5 models of 64x64,
    3 elites, 5000 model steps; actor and critics 64x64, learning rates 1e-3, 6000 updates,
    rollouts from 1000 states every 250 updates), reaches a final normalized score (20 greedy
    episodes) far above BC's after 5000 updates: 184 (seeds 159, 229, 165) against -41 (-41,
    -34, -49) when this was written. The margin asked, 100, is under half the gap (225); the
    worst seed alone clears it. The policy budget matters: in a separate run (other seeds) 6000
    updates scored 220, 228, 222, 4000 updates 166, 40, 34, and 2000 model steps with 4000
    updates -2, -47, -27 (no better than BC). 76 s of CPU time in all (BC through the runner,
    then one vmapped program over MOPO's 3 seeds), 5.5 min of wall time on 2 busy cores."""
    from rljax import envs
    from rljax.data.files import load
    from rljax.data.scores import normalized_score, references
    from rljax.runner import evaluation
    from rljax.runner.loop import train
    from rljax.runner.spec import RunSpec

    path, metadata = pendulum_medium_replay(tmp_path)
    spec = RunSpec(
        algo="bc", env=metadata["env"], agent={"total_updates": 5000, "hidden_sizes": [64, 64]},
        seeds=3, dataset=str(path), eval_episodes=20, chunk_updates=2500,
    )  # fmt: skip
    summary = train(spec, tmp_path / "bc", print_fn=quiet)
    bc = np.array([m["final_score"] for m in summary["final_returns"]])

    dataset, metadata = load(path)
    dataset = jax.tree.map(jnp.asarray, dataset)
    config = mopo.Config(**PENDULUM)
    env, env_params = envs.make(**metadata["env"])

    def run(key):
        train_key, eval_key = jax.random.split(key)
        params = mopo.train(config, dataset, train_key)[0].params
        policy = lambda obs, _, k: mopo.act(config, params, obs, k, deterministic=True)  # noqa: E731
        return evaluation.evaluate_policy(policy, env, env_params, 20, eval_key).mean()

    returns = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 3))
    scores = normalized_score(np.asarray(returns), *references(metadata))
    assert scores.mean() >= bc.mean() + 100, (bc, scores)
