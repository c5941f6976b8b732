"""ODICE: the Pearson chi^2 conjugate, the three terms of the value objective and which values
carry their gradients (by hand), the orthogonal projection (by hand, its 1e-10 guard included),
the whole value direction against a NumPy backpropagation with the projection over the flattened
parameters of both heads, the BC weights and the actor loss (by hand, weights held constant),
one update (value by Adam on that direction, EMA target, actor by PyTorch-style coupled L2 Adam
on weights from the pre-update residuals), reward preprocessing, jit/vmap agreement,
determinism, named errors for bad datasets and configs, and learning from a generated Pendulum
dataset through the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax.agents import odice
from rljax.data import Dataset, episode_returns
from rljax.runner.config import FieldOutOfRange, make_config
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

TINY = dict(batch_size=32, hidden_sizes=(16, 16))


def batch_of(dataset: Dataset, n=None) -> dict:
    return {k: getattr(dataset, k)[:n] for k in odice.BATCH_KEYS}


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def omega(x):
    """f*'(x) for Pearson chi^2, in NumPy."""
    return np.maximum(x / 2 + 1, 0)


# --- The conjugate ---


def test_f_star_and_its_derivative_by_hand():
    """f*(x) = x w - (w - 1)^2, w = max(x / 2 + 1, 0): -1 below -2, x^2 / 4 + x above, and its
    derivative is w (0 below -2); (f')^-1(x) = max(x, 0)."""
    x = jnp.array([-3.0, -2.5, 0.0, 1.0, 2.0])
    # w = [0, 0, 1, 1.5, 2]: f* = [0 - 1, 0 - 1, 0 - 0, 1.5 - 0.25, 4 - 1]
    np.testing.assert_allclose(odice.f_star(x), [-1.0, -1.0, 0.0, 1.25, 3.0], rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(odice.f_star))(x), [0, 0, 1, 1.5, 2], rtol=1e-6)
    np.testing.assert_allclose(odice.f_prime_inverse(x), [0, 0, 0, 1, 2])


# --- The value objective's terms ---


def dual_case():
    """Two heads, two samples (the second terminal); gamma 0.9, lambda 0.6, eta 0.5."""
    config = odice.Config(gamma=0.9, lam=0.6, eta=0.5)
    values = dict(
        v=np.array([[1.0, -0.5], [0.0, 2.0]]),
        v_next=np.array([[0.5, 1.0], [2.0, -1.0]]),
        target_v=np.array([0.2, 0.5]),
        target_v_next=np.array([1.0, 3.0]),
    )
    batch = {"rewards": np.array([0.5, -1.0]), "terminals": np.array([0.0, 1.0])}
    return config, values, batch


def test_dual_losses_by_hand():
    """d_f = r + gamma (1 - d) Vbar(s') - V(s) = [[0.4, -0.5], [1.4, -3.0]],
    d_b = r + gamma (1 - d) V(s') - Vbar(s) = [[0.75, -1.5], [2.1, -1.5]]."""
    config, values, batch = dual_case()
    jnp_values = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    mean_term, forward, backward, residual = odice.dual_losses(
        **jnp_values, batch=batch, config=config
    )
    discount = 0.9 * (1 - batch["terminals"])
    d_f = batch["rewards"] + discount * values["target_v_next"] - values["v"]
    d_b = batch["rewards"] + discount * values["v_next"] - values["target_v"]
    np.testing.assert_allclose(d_f, [[0.4, -0.5], [1.4, -3.0]], rtol=1e-12)
    np.testing.assert_allclose(d_b, [[0.75, -1.5], [2.1, -1.5]], rtol=1e-12)
    f_star = lambda x: x * omega(x) - (omega(x) - 1) ** 2  # noqa: E731
    np.testing.assert_allclose(residual, d_f, rtol=1e-6)
    np.testing.assert_allclose(mean_term, 0.4 * values["v"].mean(), rtol=1e-6)
    np.testing.assert_allclose(forward, 0.6 * f_star(d_f).mean(), rtol=1e-6)
    np.testing.assert_allclose(backward, 0.6 * 0.5 * f_star(d_b).mean(), rtol=1e-6)


@pytest.mark.parametrize("term", [0, 1, 2], ids=["mean", "forward", "backward"])
def test_which_values_carry_each_terms_gradient(term):
    """The forward term reaches V only through V(s), the backward term only through V(s'), the
    mean term through V(s); the target values carry no gradient into any term (stop-gradient),
    though the forward residual depends on Vbar(s') and the backward one on Vbar(s)."""
    config, values, batch = dual_case()
    names = ("v", "v_next", "target_v", "target_v_next")
    args = [jnp.asarray(values[k], jnp.float32) for k in names]

    def loss(*args):
        return odice.dual_losses(*args, batch, config)[term]

    grads = dict(zip(names, jax.grad(loss, argnums=(0, 1, 2, 3))(*args), strict=True))
    n = values["v"].size  # heads x batch
    d_f = np.array([[0.4, -0.5], [1.4, -3.0]])
    d_b = np.array([[0.75, -1.5], [2.1, -1.5]])
    discount = 0.9 * (1 - batch["terminals"])
    expected = {k: np.zeros_like(values[k]) for k in names}
    if term == 0:  # (1 - lambda) / n everywhere: 0.1
        expected["v"] = np.full((2, 2), 0.4 / n)
    elif term == 1:  # -lambda w(d_f) / n: w = [[1.2, 0.75], [1.7, 0]]
        expected["v"] = -0.6 * omega(d_f) / n
        np.testing.assert_allclose(expected["v"], [[-0.18, -0.1125], [-0.255, 0]], rtol=1e-12)
    else:  # lambda eta gamma (1 - d) w(d_b) / n, nothing through the terminal sample
        expected["v_next"] = 0.6 * 0.5 * discount * omega(d_b) / n
        np.testing.assert_allclose(expected["v_next"], [[0.0928125, 0], [0.138375, 0]])
    for name in names:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


# --- The orthogonal projection ---


def test_orthogonal_projection_by_hand():
    """g_f = (3, 4, 0), g_b = (1, 2, 5): c = 11 / 25, g_b_perp = (1 - 1.32, 2 - 1.76, 5); it is
    orthogonal to g_f, and g_b = g_b_perp + c g_f."""
    g_f, g_b = jnp.array([3.0, 4.0, 0.0]), jnp.array([1.0, 2.0, 5.0])
    np.testing.assert_allclose(odice.parallel_coefficient(g_f, g_b), 0.44, rtol=1e-6)
    projected = odice.orthogonal_projection(g_f, g_b)
    np.testing.assert_allclose(projected, [-0.32, 0.24, 5.0], rtol=1e-5)
    np.testing.assert_allclose(jnp.vdot(projected, g_f), 0.0, atol=1e-5)
    np.testing.assert_allclose(projected + 0.44 * g_f, g_b, rtol=1e-6)
    # A backward gradient along g_f (either way) is removed whole; one orthogonal to it is kept.
    np.testing.assert_allclose(odice.orthogonal_projection(g_f, -2 * g_f), 0.0, atol=1e-6)
    np.testing.assert_allclose(
        odice.orthogonal_projection(g_f, jnp.array([4.0, -3, 1])), [4, -3, 1]
    )


def test_orthogonal_projection_guard():
    """<g_f, g_f> is floored at 1e-10: a zero g_f (every d_f below -2) leaves g_b unchanged and
    finite; for g_f = (1e-6, 0, 0), c = 1e-6 / 1e-10 = 1e4 (unguarded it would be 1e6 and remove
    g_b's first entry whole)."""
    g_b = jnp.array([1.0, 2.0, 5.0])
    np.testing.assert_array_equal(odice.orthogonal_projection(jnp.zeros(3), g_b), g_b)
    tiny = jnp.array([1e-6, 0.0, 0.0])
    np.testing.assert_allclose(odice.parallel_coefficient(tiny, g_b), 1e4, rtol=1e-5)
    np.testing.assert_allclose(odice.orthogonal_projection(tiny, g_b), [0.99, 2, 5], rtol=1e-5)


# --- The value direction, against NumPy ---


def numpy_heads(params):
    """Each head's (W1, b1, w2, b2) as float64 arrays, from ValueHeads params with one hidden
    layer and no LayerNorm."""
    layers = params["params"]["VmapValue_0"]
    return [
        tuple(
            np.asarray(x, np.float64)[i]
            for x in (
                layers["Dense_0"]["kernel"],
                layers["Dense_0"]["bias"],
                layers["Dense_1"]["kernel"][..., 0],
                layers["Dense_1"]["bias"][..., 0],
            )
        )
        for i in range(layers["Dense_0"]["kernel"].shape[0])
    ]


def numpy_value_and_pullback(head, s):
    """V(s) = w2 . relu(s W1 + b1) + b2 per row, and c -> sum_j c_j grad V(s_j) by hand."""
    w1, b1, w2, b2 = head
    pre = s @ w1 + b1
    h = np.maximum(pre, 0)

    def pullback(c):
        dpre = c[:, None] * w2[None, :] * (pre > 0)
        return {"W1": s.T @ dpre, "b1": dpre.sum(0), "w2": h.T @ c, "b2": c.sum()}

    return h @ w2 + b2, pullback


def flat(grads_per_head):
    return np.concatenate(
        [np.ravel(g[k]) for g in grads_per_head for k in ("W1", "b1", "w2", "b2")]
    )


@pytest.mark.parametrize("eta", [1.0, 0.3, 0.0])
def test_value_gradient_matches_numpy_backpropagation(eta):
    """(1 - lambda) grad mean V(s) + g_f + g_b_perp, with g_f and g_b backpropagated by hand
    through each head (twin V, 2-3-1 networks) and the projection over the parameters of both
    heads at once; eta = 0 leaves the semi-gradient."""
    config = odice.Config(hidden_sizes=(3,), layer_norm=False, gamma=0.9, lam=0.6, eta=eta)
    _, value = odice._networks(config, 1)
    rng = np.random.default_rng(0)
    obs, next_obs = rng.normal(size=(2, 6, 2))
    batch = {
        "observations": jnp.asarray(obs, jnp.float32),
        "next_observations": jnp.asarray(next_obs, jnp.float32),
        "rewards": jnp.asarray(rng.uniform(-3, 3, 6), jnp.float32),
        "terminals": jnp.array([0.0, 0, 1, 0, 0, 0]),
    }
    online = value.init(jax.random.PRNGKey(1), jnp.zeros(2))
    target = value.init(jax.random.PRNGKey(2), jnp.zeros(2))
    direction, aux = odice.value_gradient(online, target, batch, config)

    heads, target_heads = numpy_heads(online), numpy_heads(target)
    r, discount = (
        np.asarray(batch["rewards"], np.float64),
        0.9 * (1 - np.asarray(batch["terminals"])),
    )
    target_v = np.min([numpy_value_and_pullback(h, obs)[0] for h in target_heads], 0)
    target_v_next = np.min([numpy_value_and_pullback(h, next_obs)[0] for h in target_heads], 0)
    n = 2 * 6
    g_mean, g_f, g_b = [], [], []
    for head in heads:
        v, pull = numpy_value_and_pullback(head, obs)
        v_next, pull_next = numpy_value_and_pullback(head, next_obs)
        d_f = r + discount * target_v_next - v
        d_b = r + discount * v_next - target_v
        g_mean.append(pull(np.full(6, 0.4 / n)))
        g_f.append(pull(-0.6 * omega(d_f) / n))
        g_b.append(pull_next(0.6 * eta * discount * omega(d_b) / n))
    g_mean, g_f, g_b = flat(g_mean), flat(g_f), flat(g_b)
    c = g_f @ g_b / max(g_f @ g_f, 1e-10)
    expected = g_mean + g_f + (g_b - c * g_f)
    np.testing.assert_allclose(aux["parallel_coef"], c, rtol=1e-4, atol=1e-7)

    layers = direction["params"]["VmapValue_0"]
    got = flat(
        [
            {
                "W1": layers["Dense_0"]["kernel"][i],
                "b1": layers["Dense_0"]["bias"][i],
                "w2": layers["Dense_1"]["kernel"][i, :, 0],
                "b2": layers["Dense_1"]["bias"][i, 0],
            }
            for i in range(2)
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    if eta == 0.0:  # no backward gradient: the semi-gradient of the V-DICE objective
        np.testing.assert_allclose(got, g_mean + g_f, rtol=1e-4, atol=1e-6)
    else:  # the test can tell: projecting each head's parameters on its own would differ
        assert abs(c) > 1e-3
        per_head = []
        for head in (slice(0, len(g_f) // 2), slice(len(g_f) // 2, None)):
            f, b = g_f[head], g_b[head]
            per_head.append(g_mean[head] + f + b - (f @ b / max(f @ f, 1e-10)) * f)
        assert np.abs(np.concatenate(per_head) - expected).max() > 1e-3


def test_value_gradient_with_layer_norm_matches_three_gradients():
    """With LayerNorm and the default sizes' shape (two hidden layers), the vjp/jacrev route
    agrees with three separate jax.grad calls, projected here in NumPy on ravelled vectors."""
    config = odice.Config(hidden_sizes=(8, 8), gamma=0.99, lam=0.7, eta=0.8)
    dataset = synthetic_dataset()
    state = odice.init(config, dataset, jax.random.PRNGKey(3))
    batch = batch_of(dataset, 16) | {"rewards": 5 * dataset.rewards[:16]}
    target = jax.tree.map(lambda x: 0.9 * x, state.params.value)
    direction, _ = odice.value_gradient(state.params.value, target, batch, config)
    _, value = odice._networks(config, 2)
    target_v = value.apply(target, batch["observations"]).min(0)
    target_v_next = value.apply(target, batch["next_observations"]).min(0)

    def term(params, i):
        v = value.apply(params, batch["observations"])
        v_next = value.apply(params, batch["next_observations"])
        return odice.dual_losses(v, v_next, target_v, target_v_next, batch, config)[i]

    g_mean, g_f, g_b = (
        np.asarray(ravel_pytree(jax.grad(term)(state.params.value, i))[0], np.float64)
        for i in range(3)
    )
    expected = g_mean + g_f + g_b - (g_f @ g_b / max(g_f @ g_f, 1e-10)) * g_f
    np.testing.assert_allclose(ravel_pytree(direction)[0], expected, rtol=1e-4, atol=1e-6)


# --- The actor ---


def test_bc_weight_by_hand():
    """min(max(d_f, 0), 100) per head, averaged over the heads, not divided by lambda, with no
    gradient into the residuals."""
    config = odice.Config(lam=0.5)
    residual = jnp.array([[-1.0, 0.5, 150.0], [1.0, 2.5, 50.0]])
    np.testing.assert_allclose(odice.bc_weight(residual, config), [0.5, 1.5, 75.0])
    grad = jax.grad(lambda r: odice.bc_weight(r, config).sum())(residual)
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_allclose(
        odice.bc_weight(residual, config.replace(max_weight=10.0)), [0.5, 1.5, 10]
    )


def test_actor_loss_by_hand():
    """pi = N(mu, I) with mu = (0.5, -2) (no tanh) and log_std 0: L = -mean(w log pi(a|s)); the
    gradient reaches the actor, not the weights."""
    config = odice.Config(hidden_sizes=(4,))
    params = odice.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params
    actor = jax.tree.map(jnp.zeros_like, params.actor)
    actor["params"]["Dense_1"]["bias"] = jnp.array([0.5, -2.0])
    batch = {
        "observations": jnp.zeros((3, 3)),
        "actions": jnp.array([[0.0, 0], [1, -1], [0.5, 0.5]]),
    }
    weight = jnp.array([1.0, 2.0, 0.0])
    loss, _ = odice.actor_loss(actor, params, weight, batch, config)
    a = np.asarray(batch["actions"], np.float64)
    log_prob = (-0.5 * (a - [0.5, -2.0]) ** 2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(loss, -(np.array([1.0, 2.0, 0.0]) * log_prob).mean(), rtol=1e-6)
    # d/dlog_std_k at 0 = -mean_j w_j ((a_jk - mu_k)^2 - 1)
    grads = jax.grad(lambda p: odice.actor_loss(p, params, weight, batch, config)[0])(actor)
    expected = -(np.array([1.0, 2.0, 0.0])[:, None] * ((a - [0.5, -2.0]) ** 2 - 1)).mean(0)
    np.testing.assert_allclose(grads["params"]["log_std"], expected, rtol=1e-5)
    grad_weight = jax.grad(lambda w: odice.actor_loss(actor, params, w, batch, config)[0])(weight)
    np.testing.assert_array_equal(grad_weight, 0.0)


# --- One update ---


def test_update_value_target_and_actor():
    """The value moves by Adam along value_gradient; the target by EMA towards the new value;
    the actor by Adam on grad + weight_decay * theta (PyTorch's coupled L2, first step:
    -lr g' / (|g'| + 1e-8)), with weights from the residuals before the value moved."""
    config = odice.Config(**TINY, tau=0.1, weight_decay=0.5, actor_lr=1e-3, value_lr=2e-3)
    dataset = synthetic_dataset()
    state = odice.init(config, dataset, jax.random.PRNGKey(5))
    # A target apart from the online value, so that the EMA is visible.
    state = state.replace(target_value=jax.tree.map(lambda x: 0.5 * x, state.target_value))
    batch = batch_of(dataset, 32)
    new, metrics = jax.jit(odice.update_on_batch)(config, state, batch)

    params = state.params

    @jax.jit
    def reference(state, batch):
        batch = batch | {
            "observations": (batch["observations"] - params.obs_mean) / params.obs_std,
            "next_observations": (batch["next_observations"] - params.obs_mean) / params.obs_std,
            "rewards": state.reward_scale * batch["rewards"],
        }
        direction, aux = odice.value_gradient(params.value, state.target_value, batch, config)
        updates, _ = optax.adam(2e-3).update(direction, state.value_opt)
        value = optax.apply_updates(params.value, updates)
        weight = odice.bc_weight(aux["forward_residual"], config)
        loss = lambda p: odice.actor_loss(p, params, weight, batch, config)[0]  # noqa: E731
        return value, jax.value_and_grad(loss)(params.actor)

    value, (loss, grads) = reference(state, batch)
    assert_trees_close(new.params.value, value, rtol=1e-4, atol=1e-6)
    target = jax.tree.map(lambda v, t: 0.9 * t + 0.1 * v, value, state.target_value)
    assert_trees_close(new.target_value, target, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["actor_loss"], loss, rtol=1e-5)
    for g, theta, got in zip(
        jax.tree.leaves(grads), jax.tree.leaves(params.actor), jax.tree.leaves(new.params.actor),
        strict=True,
    ):  # fmt: skip
        g = np.asarray(g, np.float64) + 0.5 * np.asarray(theta, np.float64)
        np.testing.assert_allclose(got, theta - 1e-3 * g / (np.abs(g) + 1e-8), rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1
    assert {"value_loss", "actor_loss", "parallel_coef", "v_mean", "td_mean"} <= set(metrics)


def test_reward_preprocessing():
    dataset = synthetic_dataset()
    state = odice.init(odice.Config(**TINY), dataset, jax.random.PRNGKey(0))
    returns = episode_returns(dataset.rewards, dataset.terminals, dataset.timeouts)
    np.testing.assert_allclose(state.reward_scale, 1000 / (returns.max() - returns.min()), 1e-5)
    assert float(state.reward_shift) == 0
    # AntMaze: 3 r - 3 sends the 0/1 rewards to -3/0, as the code's np.where(r == 0, -3, 0).
    antmaze = odice.init(odice.Config(**TINY, reward_preprocessing="antmaze"), dataset, state.rng)
    r = np.array([0.0, 1.0])
    np.testing.assert_array_equal(antmaze.reward_scale * r + antmaze.reward_shift, [-3.0, 0.0])
    none = odice.init(odice.Config(**TINY, reward_preprocessing="none"), dataset, state.rng)
    assert (float(none.reward_scale), float(none.reward_shift)) == (1.0, 0.0)
    with pytest.raises(ValueError, match="reward_preprocessing"):
        odice.init(odice.Config(**TINY), dataset.replace(rewards=jnp.zeros(64)), state.rng)


def test_networks_observation_normalization_and_act():
    """Twin heads (one without twin_v), LayerNorm only where asked; act normalizes by the
    dataset's statistics and returns the clipped mean (no tanh) when deterministic."""
    dataset = synthetic_dataset()
    config = odice.Config(**TINY)
    params = odice.init(config, dataset, jax.random.PRNGKey(0)).params
    actor, value = odice._networks(config, 2)
    assert value.apply(params.value, dataset.observations).shape == (2, 64)
    assert "LayerNorm_0" in params.value["params"]["VmapValue_0"]
    assert "LayerNorm_0" not in str(jax.tree_util.tree_structure(params.actor))
    single = odice.init(
        odice.Config(**TINY, twin_v=False, layer_norm=False), dataset, jax.random.PRNGKey(0)
    )
    assert jax.tree.leaves(single.params.value)[0].shape[0] == 1
    assert "LayerNorm_0" not in single.params.value["params"]["VmapValue_0"]

    obs = np.asarray(dataset.observations)
    np.testing.assert_allclose(params.obs_mean, obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(params.obs_std, obs.std(0) + 1e-3, rtol=1e-5)
    scaled = params.replace(actor=jax.tree.map(lambda x: 50 * x, params.actor))  # means beyond 1
    mean, _ = actor.apply(scaled.actor, (obs - obs.mean(0)) / (obs.std(0) + 1e-3))
    assert (np.abs(mean) > 1).any()
    action = odice.act(config, scaled, dataset.observations, None, deterministic=True)
    np.testing.assert_allclose(action, np.clip(mean, -1, 1), rtol=1e-4, atol=1e-6)
    sampled = odice.act(config, params, dataset.observations, jax.random.PRNGKey(1))
    assert sampled.shape == (64, 2) and (np.abs(sampled) <= 1).all()


def test_update_agrees_under_jit_and_vmap():
    dataset = synthetic_dataset()
    batch = batch_of(dataset, 32)
    configs = [
        odice.Config(**TINY, lam=lam, eta=eta, weight_decay=wd, actor_lr=lr)
        for lam, eta, wd, lr in ((0.6, 1.0, 1e-4, 2e-4), (0.8, 0.5, 1e-2, 1e-3))
    ]
    state = odice.init(configs[0], dataset, jax.random.PRNGKey(6))
    singles = [jax.jit(odice.update_on_batch)(c, state, batch) for c in configs]
    eager = odice.update_on_batch(configs[1], state, batch)
    assert_trees_close(eager, singles[1], rtol=1e-4, atol=1e-6)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(odice.update_on_batch, in_axes=(0, None, None)))(stacked, state, batch)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-4, atol=1e-6)
    assert float(singles[0][1]["value_loss"]) != float(singles[1][1]["value_loss"])


def test_train_is_finite_and_deterministic():
    dataset = synthetic_dataset()
    config = odice.Config(**TINY, total_updates=300)
    run = jax.jit(lambda key: odice.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(7))
    again, metrics_again = run(jax.random.PRNGKey(7))
    assert int(state.step) == 300
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
        np.testing.assert_array_equal(values, metrics_again[name], err_msg=name)
    assert_trees_close(state, again, rtol=0, atol=0)
    other, _ = run(jax.random.PRNGKey(8))
    assert not np.allclose(
        jax.tree.leaves(other.params.actor)[0], jax.tree.leaves(state.params.actor)[0]
    )


# --- Named errors ---


def test_init_names_bad_datasets():
    config = odice.Config(**TINY)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        odice.init(config, synthetic_dataset(action_scale=2.0), jax.random.PRNGKey(0))
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        odice.init(config, images, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: odice.init(config, d, jax.random.PRNGKey(0)))(synthetic_dataset())
    endless = synthetic_dataset().replace(terminals=jnp.zeros(64), timeouts=jnp.zeros(64))
    with pytest.raises(ValueError, match="0 complete episode"):
        odice.init(config, endless, jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "field, value",
    [
        ("lam", 0.0), ("lam", 1.0), ("eta", -0.1), ("tau", 0.0), ("gamma", 1.5),
        ("actor_lr", 0.0), ("value_lr", -1e-4), ("weight_decay", -1e-4), ("max_weight", 0.0),
        ("batch_size", 0), ("total_updates", 0), ("hidden_sizes", [64, 0]),
        ("reward_preprocessing", "mujoco"),
    ],
)  # fmt: skip
def test_bad_config_values_are_named(field, value):
    with pytest.raises(FieldOutOfRange, match=field):
        make_config(odice.Config, {field: value})


def test_log_std_bounds_must_be_ordered():
    """The rule across fields, in check (which the runner calls) and in init; skipped on traced
    values."""
    bad = make_config(odice.Config, {"log_std_min": 1.0, "log_std_max": -1.0})
    with pytest.raises(ValueError, match="log_std_min=1.0 must be below log_std_max=-1.0"):
        odice.check(bad)
    with pytest.raises(ValueError, match="log_std_min"):
        odice.init(bad, synthetic_dataset(), jax.random.PRNGKey(0))
    odice.check(odice.Config())
    jax.jit(lambda c: odice.check(c) or c.log_std_min)(odice.Config())


# --- Learning from a generated Pendulum dataset ---


@pytest.mark.slow
def test_odice_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum-v1 medium-replay data (as tests/test_offline_learning.py makes it:
    the recipe's SAC stopped at 48k steps, its replay up to the medium snapshot, ~23k
    transitions), ODICE with the paper's defaults (lambda 0.6, eta 1, learning rates 2e-4,
    twin LayerNorm value heads) but 64x64 networks reaches a far higher final normalized score
    than BC within 4000 updates (3 seeds, 20 evaluation episodes each, through the runner).

    Measured when written (CPU, 3 seeds): BC -49.8, -24.4, -28.8 (mean -34.3); ODICE 74.4,
    135.9, 82.8 (mean 97.7), a gap of 132. Two other runs of this configuration (one before a
    change that only reordered floating-point sums) gave ODICE means of 96.1 and 99.0, seeds
    from 63.5 to 142.7. On the same budget IQL scored 22.3, and ODICE with eta = 0 (no backward
    gradient) 70.3. The test asks for a gap of 60, leaving room for seed and platform noise.
    With 2500 updates ODICE scored only -3.7: V is still falling (the objective pushes it down;
    mean -34 at 2500 updates, -55 at 4000) and few residuals are positive (3-4% of a batch until
    2500 updates, 10% at 4000), so the actor clones little. About 50-65 s on one core: ~10 s
    generating the data, ~5 s BC, ~30-45 s ODICE (compilation included).
    """
    path, metadata = pendulum_medium_replay(tmp_path)
    assert metadata["transitions"] > 10_000

    def scores(algo):
        spec = RunSpec(
            algo=algo, env=metadata["env"], agent={"total_updates": 4000, "hidden_sizes": [64, 64]},
            seeds=3, dataset=str(path), eval_episodes=20, chunk_updates=2000,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc, odice_scores = scores("bc"), scores("odice")
    assert odice_scores.mean() >= bc.mean() + 60, (bc, odice_scores)
