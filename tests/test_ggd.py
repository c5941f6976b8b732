"""GGD's TD-error weighting in SAC's critic loss and PPO's value loss: the generalized-Gaussian
NLL and variance against hand values and numerical integrals, the batch inverse-variance (BIV)
weights against a hand computation and a float64 reference, the weighted losses by hand, the
beta-head's gradient kept off the critic, named errors, and the default left as it was.

``ggd_nll``, ``ggd_variance`` and ``biv_weights`` are one text in ppo.py and sac.py
(tests/test_inlined_copies.py); the tests here run sac.py's copy of them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import cli, envs
from rljax.agents import ppo, sac

HALF_LOG_PI = 0.5 * math.log(math.pi)  # log Gamma(1/2)
CRITIC_LOSS = jax.jit(sac.critic_loss)


# --- The generalized Gaussian ---


def test_ggd_nll_by_hand():
    """|d|^b - log b + log 2 + log Gamma(1/b), scale 1: b = 2 at d = 1 and 0 (the Gaussian of
    variance 1/2), b = 1 at d = -3 (the Laplace), b = 1/2 at d = 4 (|4|^(1/2) = 2, Gamma(2) = 1)."""
    delta = jnp.array([1.0, 0.0, -3.0, 4.0])
    beta = jnp.array([2.0, 2.0, 1.0, 0.5])
    expected = [
        1.0 + HALF_LOG_PI,
        HALF_LOG_PI,
        3.0 + math.log(2.0),
        2.0 + 2.0 * math.log(2.0),
    ]
    for fn in (sac.ggd_nll, jax.jit(sac.ggd_nll)):
        np.testing.assert_allclose(fn(delta, beta), expected, rtol=1e-6)
    # At delta = 0 the gradient in beta is finite: -1/beta - psi(1/beta) / beta^2.
    grad = jax.grad(lambda b: sac.ggd_nll(0.0, b))(2.0)
    digamma_half = -0.5772156649 - 2.0 * math.log(2.0)
    np.testing.assert_allclose(grad, -0.5 - digamma_half / 4.0, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 8.0])
def test_ggd_density_integrates_to_one_with_its_variance(beta):
    """exp(-NLL) integrates to 1 and its second moment is ggd_variance(beta) (1/2 at beta = 2,
    2 at beta = 1 by hand), by the trapezoid rule on a grid that is geometric away from the cusp
    at 0, out to where the density is below e^-50."""
    half = np.geomspace(1e-9, 50.0 ** (1 / beta), 200_001)
    x = np.concatenate([-half[::-1], [0.0], half])
    density = np.exp(-np.asarray(sac.ggd_nll(jnp.asarray(x), beta), np.float64))
    np.testing.assert_allclose(np.trapezoid(density, x), 1.0, rtol=1e-4)
    variance = float(sac.ggd_variance(beta))
    np.testing.assert_allclose(np.trapezoid(x**2 * density, x), variance, rtol=1e-3)
    hand = {1.0: 2.0, 2.0: 0.5}
    if beta in hand:
        np.testing.assert_allclose(variance, hand[beta], rtol=1e-5)


# --- Batch inverse-variance weights ---


def biv_reference(variance, minimal_size, valid=None):
    """IV-RL's rule in float64: xi = 0 if 1 / sum w^2 >= m = min(n - 1, minimal_size), else a
    plain bisection on xi to 1 / sum w^2 = m."""
    variance = np.maximum(np.asarray(variance, np.float64), 1e-8)
    valid = np.ones(variance.shape, bool) if valid is None else np.asarray(valid)
    n = valid.sum()
    m = min(n - 1, minimal_size)

    def weights(xi):
        inverse = np.where(valid, 1.0 / (variance + xi), 0.0)
        return inverse / inverse.sum()

    def effective(xi):
        return 1.0 / (weights(xi) ** 2).sum()

    if effective(0.0) >= m:
        return weights(0.0), 0.0
    low, high = 0.0, n * variance[valid].max()
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if effective(middle) < m else (low, middle)
    return weights(high), high


def test_biv_weights_by_hand():
    """Variances (1, 1, 4, 4): at xi = 0 the weights are (0.4, 0.4, 0.1, 0.1), an effective batch
    size of 1 / 0.34 = 2.94. That is enough for m = 2; m = 3 needs xi > 0 with
    (4 + xi) / (1 + xi) = 2 + sqrt(3), so xi = (2 - sqrt 3) / (1 + sqrt 3) = 0.0981 and the
    weights are (r, r, 1, 1) / (2 r + 2), r = 2 + sqrt 3."""
    variance = jnp.array([1.0, 1.0, 4.0, 4.0])
    weights, xi = sac.biv_weights(variance, 2)
    np.testing.assert_allclose(weights, [0.4, 0.4, 0.1, 0.1], rtol=1e-6)
    assert float(xi) == 0.0

    r = 2.0 + math.sqrt(3.0)
    for minimal_size in (3, 100):  # 100 is capped at B - 1 = 3
        weights, xi = jax.jit(sac.biv_weights)(variance, minimal_size)
        np.testing.assert_allclose(xi, (2 - math.sqrt(3)) / (1 + math.sqrt(3)), rtol=1e-4)
        expected = np.array([r, r, 1.0, 1.0]) / (2 * r + 2)
        np.testing.assert_allclose(weights, expected, rtol=1e-5)
        np.testing.assert_allclose(1.0 / np.sum(np.square(weights)), 3.0, rtol=1e-5)


@pytest.mark.parametrize("minimal_size", [4, 16, 40, 63, 1000])
def test_biv_effective_batch_size_reaches_m(minimal_size):
    """64 variances spread over six orders of magnitude, three of them 0 (terminal targets):
    the weights sum to 1, fall as the variance grows, and their effective batch size is
    m = min(63, minimal_size) once xi > 0 (at xi = 0 it is at least m); the same numbers as a
    float64 bisection, under jit and vmap."""
    rng = np.random.default_rng(0)
    variance = np.exp(rng.uniform(-7, 7, 64)).astype(np.float32)
    variance[[3, 10, 50]] = 0.0
    m = min(63, minimal_size)
    want_weights, want_xi = biv_reference(variance, minimal_size)
    vmapped = jax.vmap(sac.biv_weights, in_axes=(0, None))
    runs = [
        sac.biv_weights,
        jax.jit(sac.biv_weights),
        lambda v, s: [x[0] for x in vmapped(v[None], s)],
    ]
    for fn in runs:
        weights, xi = fn(jnp.asarray(variance), minimal_size)
        weights = np.asarray(weights, np.float64)
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
        order = np.argsort(variance, kind="stable")
        assert (np.diff(weights[order]) <= 1e-7).all()
        effective = 1.0 / np.sum(weights**2)
        if want_xi > 0:
            assert float(xi) > 0
            np.testing.assert_allclose(effective, m, rtol=1e-4)
            np.testing.assert_allclose(xi, want_xi, rtol=1e-3)
        else:
            assert float(xi) == 0.0 and effective >= m
        np.testing.assert_allclose(weights, want_weights, rtol=1e-3, atol=1e-7)


def test_biv_invalid_samples_weigh_nothing_and_scale_does_not_matter():
    """Masked samples get weight 0 and the rest are BIV over the valid ones alone (their own
    n - 1 caps m); scaling every variance by 1000 leaves the weights as they were."""
    rng = np.random.default_rng(1)
    variance = np.exp(rng.uniform(-3, 3, 20)).astype(np.float32)
    valid = rng.random(20) < 0.5
    weights, _ = sac.biv_weights(jnp.asarray(variance), 50, jnp.asarray(valid))
    subset, _ = sac.biv_weights(jnp.asarray(variance[valid]), 50)
    np.testing.assert_array_equal(np.asarray(weights)[~valid], 0.0)
    np.testing.assert_allclose(np.asarray(weights)[valid], subset, rtol=1e-4)
    scaled, _ = sac.biv_weights(jnp.asarray(variance * 1000), 8)
    np.testing.assert_allclose(scaled, sac.biv_weights(jnp.asarray(variance), 8)[0], rtol=1e-4)
    nothing, xi = sac.biv_weights(jnp.asarray(variance), 8, jnp.zeros(20, bool))
    np.testing.assert_array_equal(nothing, 0.0)
    assert np.isfinite(xi)


# --- SAC's critic loss ---


def sac_case(weighting, minimal_size=2):
    config = sac.Config(
        hidden_sizes=(8,), buffer_size=16, learning_starts=0, gamma=0.5,
        critic_weighting=weighting, biv_minimal_size=minimal_size,
    )  # fmt: skip
    env, env_params = envs.make("Pendulum-v1")
    state = sac.init(config, env, env_params, jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
    batch = {
        "obs": obs,
        "action": jnp.array([[0.5], [-1.0], [1.5], [0.0]]),
        "reward": jnp.array([1.0, -1.0, 0.5, 2.0]),
        "next_obs": obs[::-1],
        "terminated": jnp.array([0.0, 1.0, 0.0, 0.0]),
    }
    next_action, next_log_prob = jnp.array([[0.2], [1.5], [-0.7], [1.9]]), jnp.zeros(4)
    target_critic = jax.tree.map(lambda x: x + 0.3 * jnp.sin(x), state.params.critic)
    args = (batch, next_action, next_log_prob, target_critic, 0.1, config)
    return config, state.params.critic, args


def sac_by_hand(config, critic_params, args):
    """(q, target, per-sample target variance over the twin target critics) with numpy."""
    batch, next_action, next_log_prob, target_critic, alpha, _ = args
    _, critic = sac._networks(config, 1)
    q_next = np.asarray(critic.apply(target_critic, batch["next_obs"], next_action))
    discount = 0.5 * (1.0 - np.asarray(batch["terminated"]))
    target = np.asarray(batch["reward"]) + discount * (q_next.min(0) - alpha * next_log_prob)
    variance = discount**2 * ((q_next[0] - q_next[1]) / 2) ** 2
    q = np.asarray(critic.apply(critic_params, batch["obs"], batch["action"]))
    return q, target, variance


def test_sac_biv_critic_loss_by_hand():
    """BIV: sigma^2 = gamma^2 (1 - terminated) ((Qbar_1 - Qbar_2) / 2)^2 (0 for the terminal
    sample, which therefore weighs most), weights from the float64 reference, and L_Q =
    1/2 sum_critics sum_i w_i (Q - y)^2; the weights carry no gradient."""
    for minimal_size in (1, 2):  # xi = 0, and xi > 0
        config, params, args = sac_case("biv", minimal_size)
        q, target, variance = sac_by_hand(config, params, args)
        assert variance[1] == 0 and (variance[[0, 2, 3]] > 0).all()
        weights, xi = biv_reference(variance, minimal_size)
        assert (xi > 0) == (minimal_size == 2)
        loss, metrics = CRITIC_LOSS(params, *args)
        expected = 0.5 * (weights * (q - target) ** 2).sum()
        np.testing.assert_allclose(loss, expected, rtol=1e-4)
        assert weights.argmax() == 1
        np.testing.assert_allclose(metrics["effective_batch_size"], 1 / (weights**2).sum(), 1e-4)


def test_sac_ggd_critic_loss_and_its_beta_head():
    """GGD: the same weighted error, with Var(beta(s, a)) (mean over the twins) added to the
    ensemble variance, plus the beta-heads' NLL of the TD errors; the critics' own weights get
    exactly the gradient of the weighted error (the beta-head reads stopped features), the
    beta-heads only that of the NLL."""
    config, params, args = sac_case("ggd")
    q, target, variance = sac_by_hand(config, params, args)
    assert "beta_head" in params["params"]["VmapCritic_0"]
    _, critic = sac._networks(config, 1)
    _, beta = critic.clone(beta_head=True).apply(params, args[0]["obs"], args[0]["action"])
    beta = np.asarray(beta, np.float64)
    assert ((beta > sac.BETA_MIN) & (beta < sac.BETA_MAX)).all()
    variance = variance + np.mean([[float(sac.ggd_variance(b)) for b in row] for row in beta], 0)
    weights, _ = biv_reference(variance, 2)
    delta = target - q
    nll = np.abs(delta) ** beta - np.log(beta) + np.log(2)
    nll += np.vectorize(math.lgamma)(1 / beta)
    loss, metrics = CRITIC_LOSS(params, *args)
    expected = 0.5 * (weights * delta**2).sum() + nll.mean(-1).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(metrics["ggd_nll"], nll.mean(-1).sum(), rtol=1e-4)

    grads = jax.jit(jax.grad(lambda p: sac.critic_loss(p, *args)[0]))(params)
    grads = grads["params"]["VmapCritic_0"]
    w = jnp.asarray(weights, jnp.float32)
    y = jnp.asarray(target, jnp.float32)

    def weighted_error(p):
        q = critic.apply(p, args[0]["obs"], args[0]["action"])
        return 0.5 * (w * jnp.square(q - y)).sum()

    plain = jax.grad(weighted_error)(params)["params"]["VmapCritic_0"]
    for name, grad in grads.items():
        if name == "beta_head":
            assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grad))
            continue
        for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(plain[name]), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_sac_equal_variances_weigh_uniformly():
    """Weighting reduces to the plain loss when every variance is alike: targets whose twin
    spreads are equal give weights 1/B, and L_Q equals the default config's mean."""
    config, params, args = sac_case("biv")
    batch, next_action, next_log_prob, _, alpha, _ = args
    batch = dict(batch, terminated=jnp.zeros(4))
    # Target critics that differ by a constant: every sample's spread is the same.
    target = jax.tree.map(lambda x: jnp.stack([x[0], x[0]]), params)
    last = target["params"]["VmapCritic_0"]["Dense_1"]["bias"]
    target["params"]["VmapCritic_0"]["Dense_1"]["bias"] = last.at[1].add(0.7)
    args = (batch, next_action, next_log_prob, target, alpha)
    loss, metrics = CRITIC_LOSS(params, *args, config)
    plain, plain_metrics = CRITIC_LOSS(params, *args, config.replace(critic_weighting="uniform"))
    np.testing.assert_allclose(loss, plain, rtol=1e-5)
    np.testing.assert_allclose(metrics["effective_batch_size"], 4.0, rtol=1e-5)
    assert set(plain_metrics) == {"q_mean"}


# --- PPO's value loss ---


def test_ppo_weighted_value_loss_by_hand():
    """weighted_value_loss: PPO's clipped value error (the larger of the plain and the clipped
    square: clipping chosen for samples 0, 2 and 3), weighed instead of averaged; weights 1/B
    give ppo_loss's value loss."""
    value = jnp.array([1.5, 1.5, 0.1, -0.5, 0.0])
    old_value = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0])
    targets = jnp.array([2.0, 1.0, 1.0, -1.0, 0.0])
    squared_errors = np.array([0.8**2, 0.5**2, 0.9**2, 0.8**2, 0.0])
    weights = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    loss = ppo.weighted_value_loss(value, old_value, targets, jnp.asarray(weights), 0.2)
    np.testing.assert_allclose(loss, 0.5 * (weights * squared_errors).sum(), rtol=1e-6)
    zeros = jnp.zeros(5)
    _, parts = ppo.ppo_loss(zeros, zeros, zeros, value, old_value, targets, zeros, ppo.Config())
    uniform = ppo.weighted_value_loss(value, old_value, targets, jnp.full(5, 0.2), 0.2)
    np.testing.assert_allclose(uniform, parts["value_loss"], rtol=1e-6)


def test_ppo_ggd_trains_with_a_beta_head():
    """value_weighting='ggd' on CartPole: the beta-head's weights join the params (act and the
    rollout ignore them), beta stays in its range, every minibatch's effective batch size is at
    least m = 8, and every metric is finite; the default config has no head."""
    env, env_params = envs.make("CartPole-v1")
    tiny = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2)
    config = ppo.Config(**tiny, total_timesteps=4 * 64, value_weighting="ggd", biv_minimal_size=8)
    state, metrics = jax.jit(lambda k: ppo.train(config, env, env_params, k))(jax.random.PRNGKey(0))
    assert "beta_head" in state.params.net["params"]
    for name, values in metrics.items():
        if not name.startswith("episode_"):
            assert np.isfinite(values).all(), name
    beta = np.asarray(metrics["ggd_beta"])
    assert ((beta > ppo.BETA_MIN) & (beta < ppo.BETA_MAX)).all()
    assert (np.asarray(metrics["effective_batch_size"]) >= 8 - 1e-3).all()
    obs = jnp.zeros((3, 4))
    assert ppo.act(config, state.params, obs, jax.random.PRNGKey(1)).shape == (3,)
    default = ppo.init(ppo.Config(**tiny), env, env_params, jax.random.PRNGKey(0))
    assert "beta_head" not in default.params.net["params"]


# --- Named errors ---


@pytest.mark.parametrize(
    "args, message",
    [
        (["sac", "--set", "critic_weighting=ggx"], "choose one of ['uniform', 'biv', 'ggd']"),
        (["sac", "--set", "biv_minimal_size=0"], "biv_minimal_size=0 is out of range"),
        (["ppo", "--set", "value_weighting=biv"], "choose one of ['uniform', 'ggd']"),
    ],
)
def test_bad_weighting_values_get_named_errors(tmp_path, capsys, args, message):
    algo, *rest = args
    status = cli.main(["train", algo, "--env", "Pendulum-v1", *rest, "--out", str(tmp_path / "r")])
    assert status == 2 and message in capsys.readouterr().err


def test_init_names_an_unknown_weighting():
    """Without the runner's checks, init still names the field and its choices."""
    env, env_params = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match=r"critic_weighting='ggx' is not allowed"):
        sac.init(sac.Config(critic_weighting="ggx"), env, env_params, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"value_weighting='biv' is not allowed"):
        ppo.init(ppo.Config(value_weighting="biv"), env, env_params, jax.random.PRNGKey(0))
