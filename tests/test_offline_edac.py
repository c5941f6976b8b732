"""EDAC and SAC-N: the gradient-diversity term against a numpy double loop (hand-set action
gradients, then linear critics whose action gradients are their weights), its second-order path
into the critics' weights (and none with one action dimension), the target's min over the N
target critics, the critic and actor losses and their stop-gradients, the update order (alpha,
actor, critics, targets), ``q_values`` on raw observations, EDAC's initialization, jit/vmap
agreement over eta (SAC-N and EDAC in one program), determinism, named errors, the presets, and
learning from a generated Pendulum dataset."""

from pathlib import Path

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax.agents import edac
from rljax.data import Dataset
from rljax.runner import config as config_lib

REPO = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=32, hidden_sizes=(16, 16), num_critics=3)


def linear_critics(slopes, offsets, obs_dim=3):
    """Ensemble weights (hidden_sizes=(|A|,)) with Q_j(s, a) = <slopes[j], a + 10> + offsets[j]:
    hidden units relu(a + 10) (observation weights 0, positive for |a| <= 1), output layer
    slopes[j], offsets[j]; so grad_a Q_j = slopes[j] everywhere."""
    slopes = jnp.asarray(slopes, jnp.float32)
    n, action_dim = slopes.shape
    kernel = jnp.zeros((n, obs_dim + action_dim, action_dim))
    kernel = kernel.at[:, obs_dim:, :].set(jnp.eye(action_dim))
    return {
        "params": {
            "Dense_0": {"kernel": kernel, "bias": jnp.full((n, action_dim), 10.0)},
            "Dense_1": {
                "kernel": slopes[:, :, None],
                "bias": jnp.asarray(offsets, jnp.float32).reshape(n, 1),
            },
        }
    }


def constant_actor(mean, log_std, obs_dim=3):
    """Actor weights (hidden_sizes=(1,)) whose Gaussian before the tanh is N(mean, exp(log_std))
    for every observation: hidden unit relu(1), heads with zero kernels."""
    mean, log_std = jnp.atleast_1d(jnp.asarray(mean, jnp.float32)), jnp.asarray(log_std)
    action_dim = mean.shape[0]
    head = lambda bias: {"kernel": jnp.zeros((1, action_dim)), "bias": bias}  # noqa: E731
    return {
        "params": {
            "Dense_0": {"kernel": jnp.zeros((obs_dim, 1)), "bias": jnp.ones(1)},
            "mean": head(mean),
            "log_std": head(jnp.broadcast_to(log_std, (action_dim,)).astype(jnp.float32)),
        }
    }


def batch_of(dataset: Dataset, n=None) -> dict:
    return {k: getattr(dataset, k)[:n] for k in edac.BATCH_KEYS}


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


# --- The diversity term ---


def diversity_reference(grads):
    """1 / (N - 1) mean_b sum_{i != j} cos(grad_i, grad_j), as a double loop (eps 1e-10)."""
    grads = np.asarray(grads, np.float64)
    n, batch, _ = grads.shape
    total = 0.0
    for b in range(batch):
        unit = [g / (np.linalg.norm(g) + 1e-10) for g in grads[:, b]]
        total += sum(unit[i] @ unit[j] for i in range(n) for j in range(n) if i != j)
    return total / batch / (n - 1)


def test_diversity_loss_by_hand():
    """Row 0: (1, 0), (0, 2), (-3, 0) normalize to e1, e2, -e1: the pairs (1, 3) and (3, 1)
    give -1 each, the others 0, so ES = -2 / 2 = -1. Row 1: three equal directions, 6 pairs of
    +1, ES = 3. Mean -> 1; and random gradients against the loop."""
    grads = np.array(
        [[[1.0, 0.0], [2.0, 2.0]], [[0.0, 2.0], [1.0, 1.0]], [[-3.0, 0.0], [0.5, 0.5]]],
        np.float32,
    )  # (N = 3, B = 2, |A| = 2)
    np.testing.assert_allclose(edac.diversity_loss(jnp.asarray(grads)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(diversity_reference(grads), 1.0, rtol=1e-9)
    random = np.random.default_rng(0).normal(size=(5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(
        jax.jit(edac.diversity_loss)(random), diversity_reference(random), rtol=1e-5
    )


def test_diversity_loss_of_a_zero_gradient_is_zero_and_differentiable():
    """A critic flat in the action contributes nothing (0 / (0 + eps)), and the loss's own
    gradient there is finite (the norm's gradient at 0 is taken as 0, as PyTorch does)."""
    grads = jnp.array([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(edac.diversity_loss(grads), 0.0, atol=1e-7)
    assert np.isfinite(jax.grad(edac.diversity_loss)(grads)).all()


def test_linear_critics_action_gradients_are_their_slopes():
    config = edac.Config(hidden_sizes=(2,), num_critics=3)
    slopes, offsets = [[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], [0.5, -1.0, 2.0]
    critic = linear_critics(slopes, offsets)
    obs = jnp.array([[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0]])
    actions = jnp.array([[0.5, -0.5], [0.0, 0.9]])
    q, grads = edac.values_and_action_grads(critic, obs, actions, config)
    expected_q = (np.asarray(actions)[None] + 10) @ np.array(slopes).T
    np.testing.assert_allclose(q, expected_q.transpose(2, 1, 0)[:, :, 0] + np.c_[offsets], 1e-6)
    np.testing.assert_allclose(grads, np.broadcast_to(np.array(slopes)[:, None], (3, 2, 2)))
    batch = {"observations": obs, "actions": actions}
    _, aux = edac.critic_loss(critic, batch, jnp.zeros(2), config)
    np.testing.assert_allclose(aux["diversity"], -1.0, rtol=1e-6)  # row 0 of the hand case


def test_diversity_gradient_reaches_the_critics_through_their_action_gradients():
    """The critic loss's gradient with eta = 2 less that with eta = 0 is 2 dES/dtheta. For linear
    critics ES = 1 / (N - 1) sum_{i != j} <u_i, u_j>, u = w / |w|, so on the output kernels
    dES/dw_j = 2 / (N - 1) (I - u_j u_j^T) / |w_j| sum_{i != j} u_i, and the output biases, which
    leave grad_a Q unchanged, get none: the term reaches the weights only through grad_a Q."""
    slopes = np.array([[1.0, 0.5], [0.3, 2.0], [-3.0, 1.0]])
    critic = linear_critics(slopes, [0.0, 0.0, 0.0])
    batch = {
        "observations": jnp.array([[0.1, 0.2, 0.3], [-1.0, 0.0, 2.0]]),
        "actions": jnp.array([[0.5, -0.5], [0.0, 0.9]]),
    }
    target = jnp.array([1.0, -2.0])

    def grads(eta):
        config = edac.Config(hidden_sizes=(2,), num_critics=3, eta=eta)
        return jax.grad(lambda c: edac.critic_loss(c, batch, target, config)[0])(critic)

    with_term, without = grads(2.0), grads(0.0)
    diff = jax.tree.map(lambda a, b: a - b, with_term, without)["params"]
    units = slopes / np.linalg.norm(slopes, axis=1, keepdims=True)
    expected = [
        2 / 2 * (np.eye(2) - np.outer(u, u)) / np.linalg.norm(w) @ (units.sum(0) - u)
        for w, u in zip(slopes, units, strict=True)
    ]
    np.testing.assert_allclose(
        diff["Dense_1"]["kernel"][..., 0], 2 * np.array(expected), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(diff["Dense_1"]["bias"], 0.0, atol=1e-6)
    assert np.abs(diff["Dense_0"]["kernel"]).max() > 1e-3  # grad_a Q runs through them too
    # and the target is a constant: no gradient reaches it
    config = edac.Config(hidden_sizes=(2,), num_critics=3)
    np.testing.assert_array_equal(
        jax.grad(lambda y: edac.critic_loss(critic, batch, y, config)[0])(target), 0.0
    )


def test_diversity_has_no_gradient_with_one_action_dimension():
    """With |A| = 1, u_j = sign(dQ_j/da): ES (here (2 * -1 + 2 * -1 + 2 * 1) / 2 = -1) is
    piecewise constant in the weights, so its gradient is ~0 and EDAC trains as SAC-N."""
    config = edac.Config(hidden_sizes=(1,), num_critics=3)
    critic = linear_critics([[1.0], [-2.0], [0.5]], [0.0, 0.0, 0.0])
    batch = {"observations": jnp.zeros((2, 3)), "actions": jnp.array([[0.3], [-0.8]])}

    def diversity(c):
        return edac.critic_loss(c, batch, jnp.zeros(2), config)[1]["diversity"]

    np.testing.assert_allclose(diversity(critic), -1.0, rtol=1e-6)
    for leaf in jax.tree.leaves(jax.grad(diversity)(critic)):
        assert np.abs(leaf).max() < 1e-6


# --- Critic target and losses ---


def test_critic_target_takes_the_min_over_the_target_critics():
    """Target critics Qbar_1 = a, Qbar_2 = -a, Qbar_3 = 5: min_j = -|a'|, per row; then
    y = r + gamma (1 - d) (-|a'| - alpha log pi(a'|s'))."""
    config = edac.Config(hidden_sizes=(1,), num_critics=3, gamma=0.9)
    target_critic = linear_critics([[1.0], [-1.0], [0.0]], [-10.0, 10.0, 5.0])
    batch = {
        "rewards": jnp.array([1.0, -1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0, 0.0]),
        "next_observations": jnp.zeros((3, 3)),
    }
    next_action = jnp.array([[0.5], [-0.25], [-0.75]])
    next_log_prob = jnp.array([0.2, -1.0, 0.4])
    y = edac.critic_target(batch, next_action, next_log_prob, target_critic, 0.5, config)
    # [1 + 0.9 (-0.5 - 0.1), -1, 2 + 0.9 (-0.75 - 0.2)]
    np.testing.assert_allclose(y, [0.46, -1.0, 1.145], rtol=1e-5)


def test_critic_loss_sums_the_critics_mean_squared_errors():
    """Constant critics c = (0.5, 2, -1) and y = (1.9, 2): sum_j mean (c_j - y)^2 =
    (1.96 + 2.25) / 2 + (0.01 + 0) / 2 + (8.41 + 9) / 2 = 10.815;
    flat critics have zero action gradients, so ES = 0 whatever eta; dL/dc_j = 2 mean(c_j - y)."""
    config = edac.Config(hidden_sizes=(1,), num_critics=3, eta=5.0)
    critic = linear_critics([[0.0], [0.0], [0.0]], [0.5, 2.0, -1.0])
    batch = {"observations": jnp.zeros((2, 3)), "actions": jnp.array([[0.1], [-0.2]])}
    target = jnp.array([1.9, 2.0])
    loss, aux = edac.critic_loss(critic, batch, target, config)
    np.testing.assert_allclose(
        [loss, aux["bellman"], aux["diversity"]], [10.815, 10.815, 0.0], 1e-5
    )
    grads = jax.grad(lambda c: edac.critic_loss(c, batch, target, config)[0])(critic)
    expected = [2 * np.mean(c - np.array([1.9, 2.0])) for c in (0.5, 2.0, -1.0)]
    np.testing.assert_allclose(grads["params"]["Dense_1"]["bias"][:, 0], expected, rtol=1e-5)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))


def test_actor_loss_by_hand():
    """pi = tanh(N(0.3, e^-1)) everywhere; critics a, -a: min_j Q_j = -|a~|. L = mean(alpha log
    pi(a~) + |a~|) with log pi(a~) = log N(u) - log(1 - tanh(u)^2) at the reparameterized
    u = 0.3 + e^-1 eps; the gradient on the mean is mean(2 alpha tanh(u) + sign(u) (1 -
    tanh(u)^2)): alpha and the critics are constants, the action carries the gradient."""
    config = edac.Config(hidden_sizes=(1,), num_critics=2)
    state = edac.init(config, synthetic_dataset(action_dim=1), jax.random.PRNGKey(0))
    params = state.params.replace(critic=linear_critics([[1.0], [-1.0]], [-10.0, 10.0]))
    actor = constant_actor(0.3, -1.0)
    obs, key, alpha = jnp.zeros((6, 3)), jax.random.PRNGKey(7), 0.4
    loss, aux = edac.actor_loss(actor, params, obs, key, alpha, config)

    eps = np.asarray(jax.random.normal(key, (6, 1)), np.float64)[:, 0]
    u = 0.3 + np.exp(-1.0) * eps
    log_prob = -0.5 * eps**2 + 1.0 - 0.5 * np.log(2 * np.pi) - np.log(1 - np.tanh(u) ** 2)
    np.testing.assert_allclose(loss, np.mean(alpha * log_prob + np.abs(np.tanh(u))), rtol=1e-4)
    np.testing.assert_allclose(aux["entropy"], -log_prob.mean(), rtol=1e-4)
    grads = jax.grad(lambda a: edac.actor_loss(a, params, obs, key, alpha, config)[0])(actor)
    expected = np.mean(2 * alpha * np.tanh(u) + np.sign(u) * (1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(grads["params"]["mean"]["bias"], [expected], rtol=1e-4)


def test_squashed_gaussian_density_matches_distrax():
    mean = jnp.array([[0.3, -1.0], [2.0, 0.1]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -1.0]])
    action, log_prob = edac.sample_action(mean, log_std, jax.random.PRNGKey(3))
    reference = distrax.Transformed(
        distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), distrax.Block(distrax.Tanh(), 1)
    )
    assert (jnp.abs(action) < 1).all()
    np.testing.assert_allclose(log_prob, reference.log_prob(action), rtol=1e-3, atol=1e-3)


def test_alpha_loss_holds_the_log_prob_fixed():
    log_prob = jnp.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(edac.alpha_loss(0.3, log_prob, -2.0), -0.3 * -1.5, rtol=1e-6)
    grad_alpha, grad_log_prob = jax.grad(edac.alpha_loss, argnums=(0, 1))(0.3, log_prob, -2.0)
    np.testing.assert_allclose(grad_alpha, 1.5, rtol=1e-6)
    np.testing.assert_array_equal(grad_log_prob, 0.0)


# --- The update ---


def test_update_order_alpha_actor_critics_targets():
    """The actor's loss uses the alpha after this step's alpha update, the critics' target the
    actor and alpha after theirs; then Qbar <- 0.9 Qbar + 0.1 Q (tau = 0.1)."""
    config = edac.Config(**TINY, normalize_obs=True, tau=0.1, alpha_lr=0.1)
    dataset = synthetic_dataset()
    state = edac.init(config, dataset, jax.random.PRNGKey(5))
    state = state.replace(params=state.params.replace(log_alpha=jnp.asarray(0.3)))
    batch = batch_of(dataset, 32)
    new, metrics = jax.jit(edac.update_on_batch)(config, state, batch)

    old = state.params
    normalized = batch | {
        k: (batch[k] - old.obs_mean) / old.obs_std for k in ("observations", "next_observations")
    }
    _, actor_key, next_key = jax.random.split(state.rng, 3)
    actor = edac.Actor(2, TINY["hidden_sizes"])
    obs = normalized["observations"]
    (log_prob, _), _ = edac.policy_terms(old.actor, old, obs, actor_key, config)
    np.testing.assert_allclose(metrics["alpha_loss"], -0.3 * (log_prob.mean() - 2.0), rtol=1e-5)
    alpha = jnp.exp(new.params.log_alpha)
    assert abs(float(new.params.log_alpha) - 0.3) > 0.05  # the step moved it
    np.testing.assert_allclose(metrics["alpha"], alpha, rtol=1e-6)

    # the actor's loss and gradient: on the same sample, with the new alpha
    def actor_loss(actor_params, alpha):
        return edac.actor_loss(actor_params, old, obs, actor_key, alpha, config)[0]

    np.testing.assert_allclose(metrics["actor_loss"], actor_loss(old.actor, alpha), rtol=1e-5)
    grads = jax.grad(actor_loss)(old.actor, alpha)
    np.testing.assert_allclose(metrics["actor_grad_norm"], optax.tree.norm(grads), rtol=1e-4)
    stale = optax.tree.norm(jax.grad(actor_loss)(old.actor, jnp.exp(0.3)))
    assert abs(float(stale) - float(metrics["actor_grad_norm"])) > 1e-5

    def critic_loss(actor_params):
        next_action, next_log_prob = edac.sample_action(
            *actor.apply(actor_params, normalized["next_observations"]), next_key
        )
        target = edac.critic_target(
            normalized, next_action, next_log_prob, state.target_critic, alpha, config
        )
        return edac.critic_loss(old.critic, normalized, target, config)[0]

    np.testing.assert_allclose(metrics["critic_loss"], critic_loss(new.params.actor), rtol=1e-5)
    assert abs(float(critic_loss(old.actor)) - float(metrics["critic_loss"])) > 1e-6
    expected = jax.tree.map(lambda q, t: 0.9 * t + 0.1 * q, new.params.critic, state.target_critic)
    assert_trees_close(new.target_critic, expected, rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1


def test_update_agrees_under_jit_and_vmap_over_eta():
    """SAC-N (eta = 0) and EDAC (eta = 2, another critic lr) stacked in one vmapped update give
    each one's own jitted update; the diversity term changes the critics."""
    dataset = synthetic_dataset()
    batch = batch_of(dataset, 32)
    configs = [edac.Config(**TINY, eta=0.0), edac.Config(**TINY, eta=2.0, critic_lr=1e-3)]
    state = edac.init(configs[0], dataset, jax.random.PRNGKey(6))
    singles = [jax.jit(edac.update_on_batch)(c, state, batch) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.vmap(edac.update_on_batch, in_axes=(0, None, None))(stacked, state, batch)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-5, atol=1e-6)
    critic = [jax.tree.leaves(s[0].params.critic)[1] for s in singles]
    assert not np.allclose(critic[0], critic[1])
    np.testing.assert_allclose(
        singles[1][1]["critic_loss"],
        singles[1][1]["bellman_loss"] + 2.0 * singles[1][1]["diversity"],
        rtol=1e-5,
    )


def test_train_is_finite_and_deterministic():
    dataset = synthetic_dataset()
    config = edac.Config(**TINY, total_updates=200)
    run = jax.jit(lambda key: edac.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(7))
    again, metrics_again = run(jax.random.PRNGKey(7))
    assert int(state.step) == 200
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
        np.testing.assert_array_equal(values, metrics_again[name])
    assert {"critic_loss", "bellman_loss", "diversity", "actor_loss", "alpha"} <= set(metrics)
    assert_trees_close(state.params, again.params, rtol=0, atol=0)
    obs = dataset.observations[:5]
    for deterministic in (True, False):
        action = edac.act(config, state.params, obs, jax.random.PRNGKey(1), deterministic)
        assert action.shape == (5, 2) and (jnp.abs(action) <= 1).all()


# --- q_values, act, initialization ---


def test_q_values_take_raw_observations_and_are_differentiable():
    """q_values normalizes with the dataset's statistics as training does: (N, B) for a batch,
    (N,) for one row, and its gradient in the observations (an attack's) is the chain rule's."""
    dataset = synthetic_dataset()
    config = edac.Config(**TINY, normalize_obs=True)
    params = edac.init(config, dataset, jax.random.PRNGKey(8)).params
    obs, actions = dataset.observations[:5], dataset.actions[:5]
    every = np.asarray(dataset.observations)
    np.testing.assert_allclose(params.obs_mean, every.mean(0), rtol=1e-5)
    np.testing.assert_allclose(params.obs_std, every.std(0) + 1e-3, rtol=1e-5)
    normalized = (obs - params.obs_mean) / params.obs_std
    critic = edac.Critic(TINY["hidden_sizes"])
    each = [
        critic.apply(jax.tree.map(lambda x, j=j: x[j], params.critic), normalized, actions)
        for j in range(3)
    ]
    q = jax.jit(edac.q_values, static_argnums=0)(config, params, obs, actions)
    assert q.shape == (3, 5)
    np.testing.assert_allclose(q, np.stack(each), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(edac.q_values(config, params, obs[0], actions[0]), q[:, 0], 1e-5)
    attack = jax.grad(lambda o: edac.q_values(config, params, o, actions).min(0).sum())(obs)
    by_normalized = jax.grad(
        lambda z: edac._ensemble(config, params.critic, z, actions).min(0).sum()
    )(normalized)
    np.testing.assert_allclose(attack, by_normalized / params.obs_std, rtol=1e-4, atol=1e-7)
    assert np.abs(attack).max() > 0


def test_act_is_the_tanh_of_the_mean_when_deterministic():
    dataset = synthetic_dataset()
    config = edac.Config(**TINY, normalize_obs=True)
    params = edac.init(config, dataset, jax.random.PRNGKey(9)).params
    params = params.replace(actor=jax.tree.map(lambda x: 50 * x, params.actor))
    obs = dataset.observations[:6]
    normalized = (obs - params.obs_mean) / params.obs_std
    mean, _ = edac.Actor(2, TINY["hidden_sizes"]).apply(params.actor, normalized)
    np.testing.assert_allclose(edac.act(config, params, obs, None, True), jnp.tanh(mean), 1e-6)
    sampled = edac.act(config, params, obs, jax.random.PRNGKey(0))
    assert (jnp.abs(sampled) <= 1).all() and not np.allclose(sampled, jnp.tanh(mean))


def test_initialization_as_edac():
    """Hidden biases 0.1 and PyTorch's default weights U(+-1/sqrt(fan_in)); the critics' output
    layer U(+-3e-3), the actor's heads U(+-1e-3); N independently drawn critics, the targets a
    copy; log alpha 0; observations unnormalized by default (as CORL)."""
    dataset = synthetic_dataset()
    config = edac.Config(hidden_sizes=(32, 32), num_critics=4)
    state = edac.init(config, dataset, jax.random.PRNGKey(10))
    critic, actor = state.params.critic["params"], state.params.actor["params"]
    for layers in (critic, actor):
        for name in ("Dense_0", "Dense_1"):
            np.testing.assert_allclose(layers[name]["bias"], 0.1, rtol=1e-7)
            fan_in = layers[name]["kernel"].shape[-2]
            assert np.abs(layers[name]["kernel"]).max() <= 1 / np.sqrt(fan_in)
            assert np.abs(layers[name]["kernel"]).max() > 0.5 / np.sqrt(fan_in)
    assert critic["Dense_2"]["kernel"].shape == (4, 32, 1)
    for leaf in jax.tree.leaves(critic["Dense_2"]):
        assert 0 < np.abs(leaf).max() <= 3e-3
    for head in ("mean", "log_std"):
        for leaf in jax.tree.leaves(actor[head]):
            assert 0 < np.abs(leaf).max() <= 1e-3
    kernels = np.asarray(critic["Dense_1"]["kernel"])
    assert all(not np.allclose(kernels[0], kernels[j]) for j in range(1, 4))
    assert_trees_close(state.target_critic, state.params.critic, rtol=0, atol=0)
    assert float(state.params.log_alpha) == 0.0
    np.testing.assert_array_equal(state.params.obs_mean, 0.0)
    np.testing.assert_array_equal(state.params.obs_std, 1.0)


# --- Named errors ---


def test_init_names_bad_datasets():
    config = edac.Config(**TINY)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        edac.init(config, synthetic_dataset(action_scale=2.0), key)
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        edac.init(config, images, key)
    broken = synthetic_dataset().replace(observations=jnp.full((64, 3), jnp.nan))
    with pytest.raises(ValueError, match="NaN"):
        edac.init(config, broken, key)
    discrete = synthetic_dataset().replace(actions=jnp.zeros((64, 2), jnp.int32))
    with pytest.raises(ValueError, match="continuous"):
        edac.init(config, discrete, key)
    empty = synthetic_dataset().replace(observations=jnp.zeros((0, 3)), actions=jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="no transitions"):
        edac.init(config, empty, key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: edac.init(config, d, key))(synthetic_dataset())


def test_config_errors_are_named():
    """The runner checks each field's bounds (FieldOutOfRange); check(), which init calls too,
    refuses fewer than 2 critics on a Config made directly."""
    for field, value in [("num_critics", 1), ("eta", -0.5), ("tau", 0.0), ("gamma", 1.5),
                         ("critic_lr", 0.0), ("batch_size", 0), ("total_updates", 0)]:  # fmt: skip
        with pytest.raises(config_lib.FieldOutOfRange, match=field):
            config_lib.make_config(edac.Config, {field: value})
    with pytest.raises(ValueError, match="num_critics=1"):
        edac.check(edac.Config(num_critics=1))
    with pytest.raises(ValueError, match="num_critics=1"):
        edac.init(edac.Config(num_critics=1), synthetic_dataset(), jax.random.PRNGKey(0))
    edac.check(config_lib.make_config(edac.Config, {"num_critics": 2, "eta": 0.0}))


def load_preset(name: str) -> dict:
    preset = yaml.safe_load((REPO / "configs" / "edac" / name).read_text())
    assert preset["algo"] == "edac"
    return preset


def test_presets_are_valid_and_sac_n_is_eta_zero():
    """configs/edac/pendulum.yaml (EDAC) and sac_n_pendulum.yaml (SAC-N) make valid configs,
    the same but for eta."""
    edac_preset, sac_n = load_preset("pendulum.yaml"), load_preset("sac_n_pendulum.yaml")
    configs = [config_lib.make_config(edac.Config, p["agent"]) for p in (edac_preset, sac_n)]
    for config in configs:
        edac.check(config)
    assert configs[1].eta == 0.0 and configs[0].eta > 0
    assert configs[0].replace(eta=0.0) == configs[1]


# --- Learning from a Pendulum dataset ---


@pytest.mark.slow
def test_edac_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum medium-replay data (as tests/test_offline_learning.py: the recipe's
    SAC stopped at 48k steps; ~23k transitions, data score about -60), EDAC with its Pendulum
    preset (N = 10 critics, learning rates 1e-3, normalized observations) reaches after 4000
    updates a final normalized score far above BC's after 5000: 235 (seeds 229, 217, 259)
    against -46 (-46, -37, -55) when this was written; 3 seeds, 64x64 networks, batch 256, 20
    evaluation episodes. Above 100 beats the 48k-step SAC that the references call expert. The
    margin asked, 100, is a third of the measured gap (without normalized observations the mean
    was 144, its worst seed 101). About 80 s of CPU, most of it EDAC's 4000 updates. With the
    paper's learning rates (3e-4) 6000 updates are too few here: the critics are still far from
    their fixed point and the policy swings (-80 to 60 along the way, 32 at the end)."""
    from rljax.runner.loop import train
    from rljax.runner.spec import RunSpec

    path, metadata = pendulum_medium_replay(tmp_path)

    def scores(algo, agent, updates):
        agent = {**agent, "total_updates": updates, "hidden_sizes": [64, 64]}
        spec = RunSpec(
            algo=algo, env=metadata["env"], agent=agent, seeds=3, dataset=str(path),
            eval_episodes=20, chunk_updates=updates // 2,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc = scores("bc", {}, 5000)
    ensemble = scores("edac", load_preset("pendulum.yaml")["agent"], 4000)
    assert ensemble.mean() >= bc.mean() + 100, (bc, ensemble)
