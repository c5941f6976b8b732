"""CQL: the importance-weighted logsumexp by hand (with and without importance sampling, its
stop-gradients), the critic loss with its conservative term, the Lagrange multiplier, the
squashed Gaussian's density, jit/vmap agreement, determinism, named init errors and the offline
contract (declared constants, update sampling its own batch, train as a scan of update, act from
Params' action_dim)."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.agents import cql
from rljax.data import Dataset

LOG2 = np.log(2.0)


def _lse(v, t):
    return t * np.log(np.exp(np.asarray(v) / t).sum())


def test_logsumexp_with_importance_weights_by_hand():
    """|A| = 2, n = 2, T = 2: uniform actions lose their log density -2 log 2, policy actions
    their log pi; Q(s, a_D) is not among the values."""
    config = cql.Config(cql_temperature=2.0)
    q_random, q_next_pi, log_pi_next = (
        jnp.array([1.0, 2.0]),
        jnp.array([0.0, 3.0]),
        jnp.array([-1.0, 0.5]),
    )
    q_pi, log_pi, q_data = jnp.array([2.0, -1.0]), jnp.array([0.2, -0.3]), jnp.array(5.0)
    args = (q_random, q_next_pi, log_pi_next, q_pi, log_pi, q_data, 2, config)
    values = [1 + 2 * LOG2, 2 + 2 * LOG2, 0 + 1, 3 - 0.5, 2 - 0.2, -1 + 0.3]
    np.testing.assert_allclose(cql.cql_logsumexp(*args), _lse(values, 2.0), rtol=1e-6)
    # dC/dq_j = softmax(values / T)_j; no gradient into the log densities
    grads = jax.grad(lambda *a: cql.cql_logsumexp(*a, 5.0, 2, config), argnums=range(5))(*args[:5])
    weights = np.exp(np.array(values) / 2) / np.exp(np.array(values) / 2).sum()
    np.testing.assert_allclose(grads[0], weights[:2], rtol=1e-5)
    np.testing.assert_allclose(grads[1], weights[2:4], rtol=1e-5)
    np.testing.assert_allclose(grads[3], weights[4:], rtol=1e-5)
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[4], 0.0)


def test_logsumexp_without_importance_sampling_includes_the_data_action():
    config = cql.Config(cql_temperature=1.0, cql_importance_sample=False)
    q_random, q_next_pi, q_pi, q_data = jnp.array([1.0]), jnp.array([0.5]), jnp.array([-2.0]), 3.0
    got = cql.cql_logsumexp(q_random, q_next_pi, jnp.array([9.0]), q_pi, jnp.array([9.0]),
                            jnp.array(q_data), 4, config)  # fmt: skip
    np.testing.assert_allclose(got, _lse([1.0, 3.0, 0.5, -2.0], 1.0), rtol=1e-6)


def _constant_critic(config, offsets):
    """Critic params with Q_i(s, a) = offsets[i] everywhere (every weight 0 but the output bias)."""
    _, critic = cql._networks(config, 2)
    params = critic.init(jax.random.PRNGKey(0), jnp.zeros(3), jnp.zeros(2))
    params = jax.tree.map(jnp.zeros_like, params)
    out = f"Dense_{len(config.hidden_sizes)}"
    inner = params["params"]["VmapCritic_0"]
    inner[out]["bias"] = jnp.asarray(offsets, jnp.float32).reshape(2, 1)
    return params


def _cql_inputs(n=3):
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    batch = {
        "observations": jnp.array([[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0]]),
        "actions": jnp.array([[0.5, -0.5], [0.0, 0.9]]),
    }
    random_actions = jax.random.uniform(keys[0], (2, n, 2), minval=-1, maxval=1)
    log_pi_next = jnp.array([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]])
    log_pi = jnp.array([[0.5, 0.5, -0.5], [0.2, 0.1, 0.0]])
    cql_actions = (
        random_actions,
        (jnp.tanh(jax.random.normal(keys[1], (2, n, 2))), log_pi_next),
        (jnp.tanh(jax.random.normal(keys[2], (2, n, 2))), log_pi),
    )
    return batch, cql_actions, log_pi_next, log_pi


@pytest.mark.parametrize("lagrange", [False, True])
def test_critic_loss_by_hand_with_constant_critics(lagrange):
    """With Q_i = c_i everywhere, C_i = c_i + T log sum_j exp(-w_j / T) where w_j is each
    sampled action's log density (-2 log 2 for uniform, log pi for policy actions), so
    L_Q = sum_i [mean((c_i - y)^2) + alpha (C_i - c_i)] and dL/dc_i = 2 mean(c_i - y): the
    conservative term's gradient is zero when Q is flat, since it pushes down Q(s, a~) as much as
    it pushes up Q(s, a_D)."""
    config = cql.Config(
        hidden_sizes=(4,), cql_alpha=3.0, cql_temperature=0.5, cql_lagrange=lagrange
    )
    config = config.replace(cql_target_action_gap=0.7)
    batch, cql_actions, log_pi_next, log_pi = _cql_inputs()
    offsets, y, alpha_prime = np.array([1.0, -2.0]), np.array([0.5, 1.5]), 2.5
    params = _constant_critic(config, offsets)
    loss, (gap, _) = cql.critic_loss(
        params, batch, jnp.asarray(y), cql_actions, alpha_prime, config
    )
    gaps = [
        _lse(
            np.concatenate([[2 * LOG2] * 3, -np.asarray(log_pi_next[b]), -np.asarray(log_pi[b])]),
            0.5,
        )
        for b in range(2)
    ]  # C_i - c_i for each sample, the same for both critics
    np.testing.assert_allclose(gap, [np.mean(gaps)] * 2, rtol=1e-5)
    weight = 3.0 * alpha_prime if lagrange else 3.0
    shift = 0.7 if lagrange else 0.0
    want = sum(((c - y) ** 2).mean() + weight * (np.mean(gaps) - shift) for c in offsets)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    grads = jax.grad(
        lambda p: cql.critic_loss(p, batch, jnp.asarray(y), cql_actions, alpha_prime, config)[0]
    )(params)
    bias_grad = grads["params"]["VmapCritic_0"]["Dense_1"]["bias"][:, 0]
    np.testing.assert_allclose(bias_grad, [2 * (c - y).mean() for c in offsets], atol=1e-5)


def test_alpha_prime_ascends_the_gap_above_its_target():
    """L = -alpha_cql alpha' mean_i (gap_i - target); dL/dlog alpha' = L (alpha' = e^log),
    and no gradient reaches the gaps."""
    config = cql.Config(cql_alpha=2.0, cql_target_action_gap=1.0)
    gap, log_alpha_prime = jnp.array([3.0, 2.0]), jnp.log(0.5)
    loss, grads = jax.value_and_grad(cql.alpha_prime_loss, argnums=(0, 1))(
        log_alpha_prime, gap, config
    )
    np.testing.assert_allclose(loss, -2.0 * 0.5 * 1.5, rtol=1e-6)  # mean(3 - 1, 2 - 1) = 1.5
    np.testing.assert_allclose(grads[0], loss, rtol=1e-6)
    np.testing.assert_array_equal(grads[1], 0.0)


def test_squashed_gaussian_density_matches_distrax():
    mean = jnp.array([[0.3, -1.0], [2.0, 0.1]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -1.0]])
    action, log_prob = cql.sample_action(mean, log_std, jax.random.PRNGKey(3))
    reference = distrax.Transformed(
        distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), distrax.Block(distrax.Tanh(), 1)
    )
    assert (jnp.abs(action) < 1).all()
    np.testing.assert_allclose(log_prob, reference.log_prob(action), rtol=1e-3, atol=1e-3)


def _dataset(n=64, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n + 1, 3)).astype(np.float32) * [1.0, 5.0, 0.1] + [0.0, 3.0, -1.0]
    actions = np.tanh(obs[:-1, :2] + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    return Dataset.from_arrays(
        observations=obs[:-1],
        actions=actions,
        rewards=-((actions[:, 0] - 0.5) ** 2),
        terminals=(np.arange(n) % 16 == 15).astype(np.float32),
        timeouts=np.zeros(n),
        next_observations=obs[1:],
    )


def test_update_agrees_under_jit_and_vmap_over_configs():
    """(Eager execution of the whole update takes a minute on 2 cores: the losses' eager
    values are covered by the hand-computed tests above.)"""
    dataset = _dataset()
    configs = [cql.Config(hidden_sizes=(8,), batch_size=16, cql_alpha=a) for a in (0.0, 5.0)]
    batch = {k: getattr(dataset, k)[:16] for k in cql.BATCH_KEYS}
    state = cql.init(configs[0], dataset, jax.random.PRNGKey(0))
    jitted = [jax.jit(cql.update_on_batch)(c, state, batch)[1]["critic_loss"] for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    vmapped = jax.vmap(cql.update_on_batch, in_axes=(0, None, None))(stacked, state, batch)[1]
    np.testing.assert_allclose(vmapped["critic_loss"], jitted, rtol=1e-5)
    assert jitted[0] < jitted[1]  # the conservative term is positive here


@pytest.mark.parametrize("lagrange", [False, True])
def test_train_is_finite_and_deterministic(lagrange):
    config = cql.Config(hidden_sizes=(16, 16), batch_size=32, cql_lagrange=lagrange)
    dataset = _dataset()
    run = jax.jit(lambda key: cql.train(config, dataset, key, num_updates=200))
    state, metrics = run(jax.random.PRNGKey(0))
    _, metrics_again = run(jax.random.PRNGKey(0))
    assert ("alpha_prime" in metrics) == lagrange
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
        np.testing.assert_array_equal(values, metrics_again[name])
    obs = dataset.observations[:5]
    for deterministic in (True, False):
        action = cql.act(config, state.params, obs, jax.random.PRNGKey(1), deterministic)
        assert action.shape == (5, 2) and (jnp.abs(action) <= 1).all()
    # act normalizes with the dataset's statistics
    actor, _ = cql._networks(config, 2)
    normalized = (obs - state.params.obs_mean) / (state.params.obs_std + 1e-3)
    mean, _ = actor.apply(state.params.actor, normalized)
    np.testing.assert_allclose(
        cql.act(config, state.params, obs, None, True), jnp.tanh(mean), rtol=1e-6
    )
    np.testing.assert_allclose(state.params.obs_mean, dataset.observations.mean(0), rtol=1e-5)


def test_init_errors_are_named():
    dataset = _dataset()
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        cql.init(cql.Config(), dataset.replace(actions=dataset.actions * 3), jax.random.PRNGKey(0))
    images = dataset.replace(observations=jnp.zeros((64, 3, 2)))
    with pytest.raises(ValueError, match="vector observations"):
        cql.init(cql.Config(), images, jax.random.PRNGKey(0))


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)
