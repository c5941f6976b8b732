"""QRL and CRL (goal-conditioned, OGBench's versions): the IQE and MRN quasimetrics on
hand-computed cases and their invariants, each loss on a hand-computed batch, the stop-gradients
the losses rely on, the sign of QRL's Lagrange multiplier update, relabelled batches, init
errors, act, and deterministic training with finite metrics on a tiny dataset."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.agents import crl, qrl
from rljax.data import Dataset

TINY = dict(batch_size=32, hidden_sizes=(16, 16), latent_dim=16, lr=1e-3)
CONFIGS = {qrl: qrl.Config(**TINY, dim_per_component=4), crl: crl.Config(**TINY)}


def tiny_dataset(episodes=4, length=16, seed=0, discrete=False) -> Dataset:
    """Random walks in the plane, s' = s + 0.1 a, every trajectory ending in a timeout; all
    observations differ, so a goal names its row."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (episodes, length, 2))
    start = rng.uniform(0, 1, (episodes, 1, 2))
    positions = start + 0.1 * np.concatenate([np.zeros((episodes, 1, 2)), actions], 1).cumsum(1)
    obs, next_obs = positions[:, :-1], positions[:, 1:]
    timeouts = np.zeros((episodes, length), np.float32)
    timeouts[:, -1] = 1
    flat = lambda x: x.reshape(episodes * length, *x.shape[2:])  # noqa: E731
    actions = flat(actions)
    if discrete:
        actions = rng.integers(0, 4, episodes * length).astype(np.int32)
    return Dataset.from_arrays(
        observations=flat(obs),
        actions=actions,
        rewards=np.zeros(episodes * length),
        terminals=np.zeros(episodes * length),
        timeouts=flat(timeouts),
        next_observations=flat(next_obs),
    )


@functools.cache
def setup(module):
    """The tiny dataset, a jitted init (the dataset closed over) and one relabelled batch."""
    config, dataset = CONFIGS[module], tiny_dataset()
    state = jax.jit(lambda key: module.init(config, dataset, key))(jax.random.PRNGKey(0))
    batch = jax.jit(lambda key: module.sample_batch(config, dataset, key))(jax.random.PRNGKey(1))
    return config, dataset, state, batch


def union_length(intervals) -> float:
    """Total length of a union of closed intervals, by merging (the reference for IQE)."""
    total, end = 0.0, -np.inf
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def reference_iqe(z_s, z_g, k, mean_weight):
    lengths = [
        union_length([(x, y) for x, y in zip(xs, ys, strict=True) if x < y])
        for xs, ys in zip(np.reshape(z_s, (-1, k)), np.reshape(z_g, (-1, k)), strict=True)
    ]
    return mean_weight * np.mean(lengths) + (1 - mean_weight) * np.max(lengths)


# --- Quasimetrics ---


def test_iqe_distance_by_hand():
    # Components of 2 coordinates: intervals [z_s_j, z_g_j] where z_s_j < z_g_j.
    z_s = jnp.array([0.0, 2.0, 3.0, 0.0, 0.0, 1.0])
    z_g = jnp.array([1.0, 3.0, 1.0, 0.5, 2.0, 3.0])
    # component 1: [0, 1] u [2, 3] = 2 (disjoint); component 2: only [0, 0.5] = 0.5 (3 > 1 is
    # dropped); component 3: [0, 2] u [1, 3] = [0, 3] = 3 (overlapping).
    # d = 0.5 * mean(2, 0.5, 3) + 0.5 * max = 0.5 * 11 / 6 + 1.5 = 2.41667
    np.testing.assert_allclose(qrl.iqe_distance(z_s, z_g, 2, 0.5), 0.5 * 11 / 6 + 1.5, rtol=1e-6)
    # Reversed: component 1 none (0), component 2 [1, 3] = 2, component 3 none (0):
    # d = 0.25 * mean(0, 2, 0) + 0.75 * 2 = 1/6 + 1.5
    np.testing.assert_allclose(qrl.iqe_distance(z_g, z_s, 2, 0.25), 1 / 6 + 1.5, rtol=1e-6)
    # Nested intervals [0, 4] and [1, 2]: the union is [0, 4].
    np.testing.assert_allclose(
        qrl.iqe_distance(jnp.array([0.0, 1.0]), jnp.array([4.0, 2.0]), 2, 0.5), 4.0
    )


def test_iqe_matches_interval_merging_and_batches():
    rng = np.random.default_rng(0)
    z_s, z_g = rng.normal(size=(2, 50, 12)).astype(np.float32)
    # Halves: shared, touching and repeated endpoints, where the lowest index must count.
    z_s_tied, z_g_tied = np.round(2 * z_s[:25]) / 2, np.round(2 * z_g[:25]) / 2
    got = qrl.iqe_distance(z_s_tied, z_g_tied, 4, 0.3)
    want = [reference_iqe(a, b, 4, 0.3) for a, b in zip(z_s_tied, z_g_tied, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for weight in (0.0, 0.3, 1.0):
        got = jax.jit(qrl.iqe_distance, static_argnums=2)(z_s, z_g, 4, weight)
        want = [reference_iqe(a, b, 4, weight) for a, b in zip(z_s, z_g, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Broadcasting a single goal against a batch equals the loop.
    np.testing.assert_allclose(
        qrl.iqe_distance(z_s, z_g[0], 4, 0.5),
        [reference_iqe(a, z_g[0], 4, 0.5) for a in z_s],
        rtol=1e-5,
    )


def test_mrn_distance_by_hand():
    z_s, z_g = jnp.array([0.0, 0.0, 1.0, 3.0]), jnp.array([3.0, 4.0, 2.0, 1.0])
    # sqrt(3^2 + 4^2) + relu(max(1 - 2, 3 - 1)) = 5 + 2; reversed: 5 + relu(max(1, -2)) = 6
    np.testing.assert_allclose(qrl.mrn_distance(z_s, z_g), 7.0, rtol=1e-6)
    np.testing.assert_allclose(qrl.mrn_distance(z_g, z_s), 6.0, rtol=1e-6)


@pytest.mark.parametrize(
    "distance",
    [lambda a, b: qrl.iqe_distance(a, b, 4, 0.5), qrl.mrn_distance],
    ids=["iqe", "mrn"],
)
def test_quasimetric_invariants(distance):
    """d(x, x) = 0, d >= 0, the triangle inequality, and asymmetry, on random latents."""
    z = jnp.asarray(np.random.default_rng(1).normal(size=(12, 16)), jnp.float32)
    pairs = np.asarray(jax.vmap(jax.vmap(distance, (None, 0)), (0, None))(z, z))  # d(z_i, z_j)
    np.testing.assert_allclose(np.diag(pairs), 0.0, atol=1e-5)
    assert (pairs >= -1e-6).all()
    # slack[i, j, k] = d(z_i, z_j) + d(z_j, z_k) - d(z_i, z_k) >= 0
    slack = pairs[:, :, None] + pairs[None, :, :] - pairs[:, None, :]
    assert slack.min() >= -1e-4
    assert not np.allclose(pairs, pairs.T, atol=1e-3)


# --- QRL losses ---


def test_qrl_quasimetric_losses_by_hand():
    d_neg, d_pos, lam, eps = jnp.array([100.0, 500.0]), jnp.array([0.5, 3.0]), 2.0, 0.05
    # push term: mean(100 softplus(5 - 1), 100 softplus(5 - 5)) = 50 (log(1 + e^4) + log 2)
    # constraint: mean(relu(0.5 - 1)^2, relu(3 - 1)^2) = (0 + 4) / 2 = 2
    # L_V = push + lam * 2 = push + 4; L_lam = lam (eps - 2) = -3.9
    push = 50 * (np.log1p(np.exp(4.0)) + np.log(2.0))
    value_loss, lam_loss, d_neg_loss, d_pos_loss = qrl.quasimetric_losses(d_neg, d_pos, lam, eps)
    np.testing.assert_allclose(d_neg_loss, push, rtol=1e-6)
    np.testing.assert_allclose(d_pos_loss, 2.0, rtol=1e-6)
    np.testing.assert_allclose(value_loss, push + 4.0, rtol=1e-6)
    np.testing.assert_allclose(lam_loss, -3.9, rtol=1e-6)

    def total(d_neg, d_pos, lam):
        value_loss, lam_loss, *_ = qrl.quasimetric_losses(d_neg, d_pos, lam, eps)
        return value_loss + lam_loss

    g_neg, g_pos, g_lam = jax.grad(total, argnums=(0, 1, 2))(d_neg, d_pos, lam)
    # d/d d_neg: -sigmoid(5 - d/100) / 2 (< 0: descent pushes random goals farther away)
    np.testing.assert_allclose(g_neg, -jax.nn.sigmoid(jnp.array([4.0, 0.0])) / 2, rtol=1e-6)
    # d/d d_pos: lam * 2 relu(d - 1) / 2 = [0, 4]; lam's term holds the constraint fixed
    np.testing.assert_allclose(g_pos, [0.0, 4.0], rtol=1e-6)
    # d/d lam: only L_lam, eps - 2 = -1.95 < 0: a violated constraint raises lam
    np.testing.assert_allclose(g_lam, -1.95, rtol=1e-6)


def _scale_last_layer(value_params, factor):
    """phi with its output (and so every IQE distance) multiplied by factor."""
    layers = jax.tree.map(lambda x: x, value_params)
    phi = layers["params"]["phi"]
    last = max((k for k in phi if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    phi[last] = jax.tree.map(lambda x: factor * x, phi[last])
    return layers


def test_qrl_lambda_update_sign():
    """One Adam step moves log lam by lr * sign(constraint - eps): up when violated."""
    config, _, state, batch = setup(qrl)
    update = jax.jit(lambda s, b: qrl.update_on_batch(config, s, b))
    # s' = s: d(s, s') = 0, the constraint holds and lam falls.
    new_state, metrics = update(state, dict(batch, next_observations=batch["observations"]))
    assert metrics["d_pos_loss"] == 0 and metrics["lam"] == 1.0
    np.testing.assert_allclose(new_state.params.log_lam, -config.lr, rtol=1e-4)
    # Far-apart latents: one step is far longer than 1, the constraint is violated, lam rises.
    far = state.params.replace(value=_scale_last_layer(state.params.value, 100.0))
    new_state, metrics = update(state.replace(params=far), batch)
    assert metrics["d_pos_loss"] > config.eps
    np.testing.assert_allclose(new_state.params.log_lam, config.lr, rtol=1e-4)


@pytest.mark.parametrize("module", [qrl, crl], ids=["qrl", "crl"])
def test_ddpg_bc_loss_by_hand(module):
    q, log_prob, alpha = jnp.array([-1.0, 3.0]), jnp.array([-2.0, -4.0]), 0.5
    # q_loss = -mean(q) / mean|q| = -1 / 2; bc = -alpha mean(log_prob) = 1.5
    loss, q_loss = module.ddpg_bc_loss(q, log_prob, alpha)
    np.testing.assert_allclose([loss, q_loss], [1.0, -0.5], rtol=1e-5)
    # The normaliser is a constant: dL/dq_i = -1 / (B mean|q|) = -0.25 for both entries
    # (with gradient through mean|q| the first would be -0.375).
    grad = jax.grad(lambda q, lp: module.ddpg_bc_loss(q, lp, alpha)[0], (0, 1))
    g_q, g_log_prob = grad(q, log_prob)
    np.testing.assert_allclose(g_q, [-0.25, -0.25], rtol=1e-5)
    np.testing.assert_allclose(g_log_prob, [-0.25, -0.25], rtol=1e-6)


def _zero_leaves(tree):
    return all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(tree))


def test_qrl_gradients_flow_where_ogbench_sends_them():
    config, _, state, batch = setup(qrl)

    @jax.jit
    def grads(params):
        return (
            jax.grad(lambda p: qrl.value_loss(p, batch, config)[0])(params),
            jax.grad(qrl.dynamics_loss)(params, batch, config),
            jax.grad(lambda p: qrl.actor_loss(p, batch, config)[0])(params),
        )

    value_grads, dynamics_grads, actor_grads = grads(state.params)
    assert _zero_leaves(value_grads.actor) and _zero_leaves(value_grads.dynamics)
    assert _zero_leaves(dynamics_grads.actor) and _zero_leaves(dynamics_grads.log_lam)
    assert not _zero_leaves(dynamics_grads.value)  # the model's loss shapes phi too
    assert _zero_leaves(actor_grads.value) and _zero_leaves(actor_grads.dynamics)
    assert not _zero_leaves(actor_grads.actor)


def test_qrl_actor_q_is_minus_distance_through_the_latent_model():
    config, _, state, batch = setup(qrl)
    net = qrl._networks(config, 2)
    value, dynamics, actor = net.value, net.dynamics, net.actor

    @jax.jit
    def by_hand(params):
        mean = actor.apply(params.actor, batch["observations"], batch["actor_goals"])
        z = value.apply(params.value, batch["observations"], method="encode")
        z_goal = value.apply(params.value, batch["actor_goals"], method="encode")
        action = jnp.clip(mean, -1, 1)
        z_next = z + dynamics.apply(params.dynamics, jnp.concatenate([z, action], -1))
        mix = jax.nn.sigmoid(params.value["params"]["mix"])
        return -qrl.iqe_distance(z_next, z_goal, config.dim_per_component, mix)

    q = by_hand(state.params)
    loss, info = jax.jit(lambda p: qrl.actor_loss(p, batch, config))(state.params)
    np.testing.assert_allclose(info["q_mean"], q.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["q_loss"], -q.mean() / jnp.abs(q).mean(), rtol=1e-4)


# --- CRL losses ---


def test_binary_nce_loss_by_hand():
    logits = jnp.array([[2.0, -1.0], [0.0, 1.0]])
    # diagonal labelled 1: softplus(-x); off-diagonal labelled 0: softplus(x)
    # mean(softplus(-2), softplus(-1), softplus(0), softplus(-1))
    want = np.mean(np.log1p(np.exp([-2.0, -1.0, 0.0, -1.0])))
    np.testing.assert_allclose(crl.binary_nce_loss(logits), want, rtol=1e-6)
    np.testing.assert_allclose(crl.binary_nce_loss(jnp.stack([logits, logits])), want, rtol=1e-6)


def test_crl_critic_loss_scores_every_state_action_against_every_goal():
    """Entry [e, i, j] = f_e(s_i, a_i, g_j) with identity labels, both critics averaged."""
    config, _, state, batch = setup(crl)
    # Every (state-action i, goal j) pair through the network by broadcasting: (2, B, B).
    logits = jax.jit(crl.critic_values, static_argnums=0)(
        config, state.params.critic, batch["observations"][:, None], batch["actions"][:, None],
        batch["value_goals"][None, :],
    )  # fmt: skip
    logits = np.asarray(logits, np.float64)
    bce = np.where(np.eye(len(logits[0])), np.log1p(np.exp(-logits)), np.log1p(np.exp(logits)))
    loss, info = jax.jit(lambda p: crl.critic_loss(p, batch, config))(state.params)
    np.testing.assert_allclose(loss, bce.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["logits_pos"], np.diagonal(logits.mean(0)).mean(), rtol=1e-5)


def test_crl_actor_uses_the_smaller_fixed_critic():
    config, _, state, batch = setup(crl)
    actor = crl._networks(config, 2).actor

    @jax.jit
    def check(params):
        mean = actor.apply(params.actor, batch["observations"], batch["actor_goals"])
        action = jnp.clip(mean, -1, 1)
        f = crl.critic_values(config, params.critic, batch["observations"], action,
                              batch["actor_goals"])  # fmt: skip
        _, info = crl.actor_loss(params, batch, config)
        actor_grads = jax.grad(lambda p: crl.actor_loss(p, batch, config)[0])(params)
        critic_grads = jax.grad(lambda p: crl.critic_loss(p, batch, config)[0])(params)
        return f, info, actor_grads, critic_grads

    f, info, actor_grads, critic_grads = check(state.params)
    np.testing.assert_allclose(info["q_mean"], f.min(0).mean(), rtol=1e-5)
    assert _zero_leaves(actor_grads.critic) and not _zero_leaves(actor_grads.actor)
    assert _zero_leaves(critic_grads.actor) and not _zero_leaves(critic_grads.critic)


# --- Batches, the contract, errors ---


def test_batches_relabel_goals_as_configured():
    dataset = tiny_dataset(length=16)
    size = dataset.observations.shape[0]
    row_of = {tuple(np.asarray(o).round(6)): i for i, o in enumerate(dataset.observations)}

    def rows(goals):
        return np.array([row_of[tuple(np.asarray(g).round(6))] for g in goals])

    obs_rows = lambda b: rows(b["observations"])  # noqa: E731
    crl_batch = crl.sample_batch(crl.Config(batch_size=512), dataset, jax.random.PRNGKey(0))
    i, g = obs_rows(crl_batch), rows(crl_batch["value_goals"])
    final = (i // 16) * 16 + 15
    assert ((g >= np.minimum(i + 1, final)) & (g <= final)).all()  # geometric future goals
    a = rows(crl_batch["actor_goals"])
    assert ((a >= np.minimum(i + 1, final)) & (a <= final)).all()  # uniform future goals
    np.testing.assert_array_equal(crl_batch["rewards"], (i == g).astype(np.float32))

    qrl_batch = qrl.sample_batch(qrl.Config(batch_size=512), dataset, jax.random.PRNGKey(0))
    i, g = obs_rows(qrl_batch), rows(qrl_batch["value_goals"])
    assert (g // 16 != i // 16).mean() > 0.5  # random goals, mostly in other trajectories
    np.testing.assert_array_equal(qrl_batch["rewards"], (i == g) - 1.0)  # gc_negative
    np.testing.assert_array_equal(qrl_batch["masks"], 1.0 - (i == g))
    np.testing.assert_allclose(qrl_batch["next_observations"], dataset.next_observations[i])
    assert g.max() < size


@pytest.mark.parametrize("module", [qrl, crl], ids=["qrl", "crl"])
def test_init_errors_are_named(module):
    config = CONFIGS[module]
    with pytest.raises(ValueError, match="continuous actions"):
        module.init(config, tiny_dataset(discrete=True), jax.random.PRNGKey(0))
    message = "value_p_curgoal + value_p_trajgoal + value_p_randomgoal = 1.5; they must sum to 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        module.init(config.replace(value_p_curgoal=0.5), tiny_dataset(), jax.random.PRNGKey(0))
    message = "actor_p_curgoal + actor_p_trajgoal + actor_p_randomgoal = 0.5; they must sum to 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        module.init(config.replace(actor_p_trajgoal=0.5), tiny_dataset(), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: module.init(config, d, jax.random.PRNGKey(0)))(tiny_dataset())
    loud = tiny_dataset()
    with pytest.raises(ValueError, match=r"rescale the dataset's actions into \[-1, 1\]"):
        module.init(config, loud.replace(actions=2 * loud.actions), jax.random.PRNGKey(0))
    unended = loud.replace(timeouts=jnp.zeros_like(loud.timeouts))
    with pytest.raises(ValueError, match="must end a trajectory"):
        module.init(config, unended, jax.random.PRNGKey(0))


def test_qrl_latent_must_split_into_components():
    config = CONFIGS[qrl].replace(latent_dim=10)
    with pytest.raises(ValueError, match="latent_dim=10 must be a multiple of dim_per_component"):
        qrl.init(config, tiny_dataset(), jax.random.PRNGKey(0))


@pytest.mark.parametrize("module", [qrl, crl], ids=["qrl", "crl"])
def test_act_batched_and_single(module):
    config, _, state, _ = setup(module)
    obs, goal = jnp.ones((5, 2)), jnp.zeros((5, 2))
    greedy = module.act(config, state.params, obs, goal, None, deterministic=True)
    mean = module._networks(config, 2).actor.apply(state.params.actor, obs, goal)
    np.testing.assert_allclose(greedy, jnp.clip(mean, -1, 1))
    single = module.act(config, state.params, obs[0], goal[0], None, deterministic=True)
    np.testing.assert_allclose(single, greedy[0], rtol=1e-5, atol=1e-6)
    sample = module.act(config, state.params, obs, goal, jax.random.PRNGKey(1))
    assert sample.shape == (5, 2) and (jnp.abs(sample) <= 1).all()
    assert not np.allclose(sample, greedy)


# --- Training ---


@pytest.mark.parametrize("module", [qrl, crl], ids=["qrl", "crl"])
def test_train_is_deterministic_and_finite(module):
    config, dataset, _, _ = setup(module)
    run = jax.jit(lambda key: module.train(config, dataset, key, 300))
    state, metrics = run(jax.random.PRNGKey(0))
    again, _ = run(jax.random.PRNGKey(0))
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(x, y)
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
    assert "grad_norm" in metrics and int(state.step) == 300
    if module is qrl:  # random goals pushed apart
        assert metrics["d_neg_mean"][-20:].mean() > 2 * metrics["d_neg_mean"][:20].mean()
    else:  # positives (future states of the same walk) scored above negatives
        assert metrics["logits_pos"][-20:].mean() > metrics["logits_neg"][-20:].mean() + 0.2


def test_qrl_with_mrn_updates():
    config = CONFIGS[qrl].replace(quasimetric="mrn")
    dataset = tiny_dataset()
    state = jax.jit(lambda key: qrl.init(config, dataset, key))(jax.random.PRNGKey(0))
    batch = setup(qrl)[3]
    new_state, metrics = jax.jit(lambda s, b: qrl.update_on_batch(config, s, b))(state, batch)
    assert "mix" not in state.params.value["params"]  # MRN has no mixing weight
    assert all(np.isfinite(v) for v in metrics.values()) and int(new_state.step) == 1
