"""A2PR: each loss on a hand-computed batch (the V target's min of two critics, the VAE's
advantage mask, the actor's choice of target and its mask M), which terms carry gradients (lambda,
Q and V held fixed; the reconstruction pi~ passes gradient to the actor but never trains the VAE),
the order critics -> V -> VAE -> actor, the delayed actor, jit/vmap agreement, deterministic
training, named errors for bad datasets and configs, and a learning check on Pendulum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax.agents import a2pr
from rljax.data import Dataset
from rljax.runner.config import FieldOutOfRange, make_config
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

TINY = dict(batch_size=32, hidden_sizes=(16, 16), vae_hidden_sizes=(16, 16))


def constant_net(params, value):
    """The same network made to output ``value`` everywhere: zero weights, last bias = value."""
    params = jax.tree.map(jnp.zeros_like, params)
    layers = params["params"]
    layers = layers.get("VmapCritic_0", layers)  # a TwinCritic nests its layers one level deeper
    last = max((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    layers[last]["bias"] = jnp.broadcast_to(jnp.asarray(value), layers[last]["bias"].shape)
    return params


def constant_vae(params, mean, log_std, out):
    """A VAE whose encoder gives (mean, log_std) and whose decoder gives tanh(out) everywhere."""
    params = jax.tree.map(jnp.zeros_like, params)
    layers = params["params"]
    for name, bias in (("mean", mean), ("log_std", log_std), ("out", out)):
        layers[name]["bias"] = jnp.asarray(bias, jnp.float32)
    return params


def batch_of(dataset: Dataset, n=None) -> dict:
    keys = ("observations", "actions", "rewards", "terminals", "next_observations")
    return {k: getattr(dataset, k)[:n] for k in keys}


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def max_gap(a, b) -> float:
    return max(
        float(np.abs(x - y).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def two_rows():
    return {
        "observations": jnp.zeros((2, 3)),
        "actions": jnp.array([[0.0, 0.0], [1.0, 0.0]]),
        "rewards": jnp.array([1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0]),
        "next_observations": jnp.zeros((2, 3)),
    }


@pytest.fixture(scope="module")
def params():
    config = a2pr.Config(hidden_sizes=(4, 4), vae_hidden_sizes=(5, 5))
    return a2pr.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params


# --- Losses by hand ---


def test_critic_loss_is_td3s():
    config = a2pr.Config(hidden_sizes=(4, 4), gamma=0.9)
    params = a2pr.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params
    critic = constant_net(params.critic, jnp.array([[0.5], [2.0]]))  # Q_1 = 0.5, Q_2 = 2
    target = constant_net(params.critic, jnp.array([[1.0], [3.0]]))  # min_i Qbar_i = 1
    # y = [1 + 0.9 * 1, 2 + 0] = [1.9, 2]; L = (1.96 + 2.25) / 2 + (0.01 + 0) / 2 = 2.11
    loss, q_mean = a2pr.critic_loss(critic, two_rows(), jnp.zeros((2, 2)), target, config)
    np.testing.assert_allclose([loss, q_mean], [2.11, 1.25], rtol=1e-6)


@pytest.mark.parametrize(
    "online, target, expected",
    [
        # online min 0.5 < target min 1: t = r + 0.9 m 0.5 = [1.45, 2]
        ([[0.5], [2.0]], [[1.0], [3.0]], [1.45, 2.0]),
        # online min 3 > target min 1: t = r + 0.9 m 1 = [1.9, 2]
        ([[3.0], [4.0]], [[1.0], [3.0]], [1.9, 2.0]),
    ],
)
def test_value_target_is_the_smaller_of_target_and_online_critics(online, target, expected):
    config = a2pr.Config(hidden_sizes=(4, 4), gamma=0.9)
    params = a2pr.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params
    online = constant_net(params.critic, jnp.array(online))
    target = constant_net(params.critic, jnp.array(target))
    t = a2pr.value_target(online, target, two_rows(), jnp.zeros((2, 2)), config)
    np.testing.assert_allclose(t, expected, rtol=1e-6)
    # No gradient reaches either critic through V's target.
    grads = jax.grad(
        lambda c, tc: a2pr.value_target(c, tc, two_rows(), jnp.zeros((2, 2)), config).sum(),
        argnums=(0, 1),
    )(online, target)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))


def test_value_loss_by_hand():
    config = a2pr.Config(hidden_sizes=(4, 4))
    params = a2pr.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params
    value = constant_net(params.value, 0.5)
    target = jnp.array([1.45, 2.0])
    # ((0.5 - 1.45)^2 + (0.5 - 2)^2) / 2 = (0.9025 + 2.25) / 2 = 1.57625
    loss, v = a2pr.value_loss(value, two_rows(), target, config)
    np.testing.assert_allclose(loss, 1.57625, rtol=1e-6)
    np.testing.assert_allclose(v, [0.5, 0.5])
    # dL/dv = mean(2 (v - t)) = (-1.9 - 3) / 2 = -2.45 through the last bias
    grads = jax.grad(lambda p: a2pr.value_loss(p, two_rows(), target, config)[0])(value)
    np.testing.assert_allclose(grads["params"]["Dense_2"]["bias"], [-2.45], rtol=1e-5)


VAE_MEAN = np.array([0.1, -0.3, 0.0, 0.2])  # latent 2 |A| = 4
VAE_LOG_STD = np.array([-1.0, 0.0, 0.5, -5.0])  # the last is clipped to -4
VAE_OUT = np.array([0.5, -0.2])


def vae_rows():
    batch = {
        "observations": jnp.zeros((3, 3)),
        "actions": jnp.array([[0.0, 0.0], [1.0, 0.0], [0.5, -0.5]]),
    }
    # Q_1(s, a) > V0 on the first row only (equal is not enough on the third)
    return batch, jnp.array([1.0, 0.0, 2.0]), jnp.array([0.5, 0.5, 2.0])


def test_vae_loss_reconstructs_only_advantage_positive_actions(params):
    config = a2pr.Config(hidden_sizes=(4, 4), vae_hidden_sizes=(5, 5), vae_weight=1.5)
    vae = constant_vae(params.vae, VAE_MEAN, VAE_LOG_STD, VAE_OUT)
    batch, q_data, v = vae_rows()
    noise = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    loss, aux = a2pr.vae_loss(vae, batch, q_data, v, noise, config)

    recon = np.tanh(VAE_OUT)  # [0.462117, -0.197375], whatever z is
    positive = np.array([1.0, 0.0, 0.0])
    errors = (recon - np.asarray(batch["actions"])) ** 2
    recon_loss = (1.5 * positive[:, None] * errors).mean()  # mean over 3 rows x 2 dims
    log_std = np.maximum(VAE_LOG_STD, -4.0)
    kl = -0.5 * np.mean(1 + 2 * log_std - VAE_MEAN**2 - np.exp(2 * log_std))
    # recon_loss = 1.5 * (0.213552 + 0.038957) / 6 = 0.063127; kl = 0.284396
    np.testing.assert_allclose(aux["recon_loss"], recon_loss, rtol=1e-5)
    np.testing.assert_allclose(aux["kl_loss"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, recon_loss + 0.5 * kl, rtol=1e-5)
    np.testing.assert_allclose(aux["positive_fraction"], 1 / 3, rtol=1e-6)

    # Q_1(s, a) and V0 are held fixed: no gradient flows into them.
    dq, dv = jax.grad(
        lambda q, v: a2pr.vae_loss(vae, batch, q, v, noise, config)[0], argnums=(0, 1)
    )(q_data, v)
    np.testing.assert_array_equal(dq, 0)
    np.testing.assert_array_equal(dv, 0)
    # The decoder's output bias learns from the positive row alone: d/d out of
    # 1.5 / 6 * (tanh(out) - a_0)^2 = 0.5 (tanh(out) - a_0)(1 - tanh(out)^2)
    grads = jax.grad(lambda p: a2pr.vae_loss(p, batch, q_data, v, noise, config)[0])(vae)
    expected = 0.5 * (recon - np.asarray(batch["actions"][0])) * (1 - recon**2)
    np.testing.assert_allclose(grads["params"]["out"]["bias"], expected, rtol=1e-5)


def test_vae_loss_without_positive_actions_trains_only_the_encoder(params):
    """With Q_1(s, a) <= V0 on every row the decoder gets no gradient; the KL still trains the
    encoder."""
    config = a2pr.Config(hidden_sizes=(4, 4), vae_hidden_sizes=(5, 5))
    batch, q_data, _ = vae_rows()
    noise = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
    grads = jax.grad(lambda p: a2pr.vae_loss(p, batch, q_data, q_data, noise, config)[0])(
        params.vae
    )["params"]
    for name in ("decoder_0", "decoder_1", "out"):
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[name])), name
    assert float(jnp.abs(grads["mean"]["kernel"]).max()) > 0


def test_advantage_target_and_mask_by_hand():
    recon = jnp.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]])
    actions = -recon
    q_recon = jnp.array([3.0, 1.0, 2.0, 0.0])
    q_data = jnp.array([2.0, 2.0, 2.0, 1.0])
    v = jnp.array([1.0, 1.5, 2.0, 5.0])
    # row 0: A_pi = 2 >= A_a = 1 -> pi~; both above V0: M = 2 * 0.4
    # row 1: A_pi = -0.5 < A_a = 0.5 -> a; only Q_1(s, a) > V0: M = 0.4
    # row 2: a tie (0 = 0) goes to pi~; Q_1(s, pi~) >= V0 counts, Q_1(s, a) > V0 does not: 0.4
    # row 3: A_pi = -5 < A_a = -4 -> a; neither counts: M = 0
    target, weight, take_pi = a2pr.advantage_target(recon, actions, q_recon, q_data, v, 0.4)
    np.testing.assert_array_equal(take_pi, [True, False, True, False])
    np.testing.assert_allclose(target, np.where([[1], [0], [1], [0]], recon, actions))
    np.testing.assert_allclose(weight, [0.8, 0.4, 0.4, 0.0], rtol=1e-6)

    # Gradient reaches a_bar through pi~ where it was chosen; none into Q, V or M.
    def total(recon, q_recon, q_data, v):
        target, weight, _ = a2pr.advantage_target(recon, actions, q_recon, q_data, v, 0.4)
        return target.sum() + weight.sum()

    d_recon, *d_rest = jax.grad(total, argnums=(0, 1, 2, 3))(recon, q_recon, q_data, v)
    np.testing.assert_array_equal(d_recon, [[1, 1], [0, 0], [1, 1], [0, 0]])
    for d in d_rest:
        np.testing.assert_array_equal(d, 0)


def test_actor_loss_by_hand(params):
    """Constant nets: pi = tanh(c), Q_1 = 3 everywhere (so A_pi = A_a, a tie: a_bar = pi~ =
    tanh(d)), V0 per row = [2, 4, 3] -> M = mask * [2, 0, 1]."""
    config = a2pr.Config(hidden_sizes=(4, 4), vae_hidden_sizes=(5, 5), alpha=2.5, mask=0.4)
    c, d = np.array([0.3, -0.6]), np.array([0.5, -0.2])
    state_params = params.replace(
        critic=constant_net(params.critic, jnp.array([[3.0], [-7.0]])),  # Q_1 = 3, Q_2 = -7
        vae=constant_vae(params.vae, np.zeros(4), np.zeros(4), d),
    )
    actor = constant_net(params.actor, c)
    batch = {"observations": jnp.zeros((3, 3)), "actions": jnp.full((3, 2), 0.9)}
    v = jnp.array([2.0, 4.0, 3.0])
    noise = jax.random.normal(jax.random.PRNGKey(2), (3, 4))
    loss, aux = a2pr.actor_loss(actor, state_params, batch, jnp.full(3, 3.0), v, noise, config)
    # -lambda mean Q_1 = -(2.5 / 3) 3 = -2.5
    # bc = mean over 3 rows x 2 dims of M (tanh c - tanh d)^2 = 0.4 * 3 * sum_j delta_j^2 / 6
    delta = np.tanh(c) - np.tanh(d)  # [-0.170772, -0.339827]
    bc = 0.4 * 3 * (delta**2).sum() / 6  # 0.028929
    np.testing.assert_allclose(aux["bc_loss"], bc, rtol=1e-5)
    np.testing.assert_allclose(aux["lambda"], 2.5 / 3, rtol=1e-6)
    np.testing.assert_allclose(loss, -2.5 + bc, rtol=1e-5)
    np.testing.assert_allclose(aux["pi_target_fraction"], 1.0)
    np.testing.assert_allclose(aux["mask_mean"], 0.4, rtol=1e-6)


def test_actor_gradient_holds_lambda_fixed_and_runs_through_the_reconstruction():
    """The actor's gradient is that of -lambda mean Q_1(s, pi) + mean(M (pi - a_bar)^2) with
    lambda and M constants and a_bar = pi~(pi(s)) differentiated (as the authors' code does);
    a detached pi~ or a differentiated lambda would give other gradients."""
    config = a2pr.Config(hidden_sizes=(8, 8), vae_hidden_sizes=(8, 8), alpha=2.5, mask=1.0)
    dataset = synthetic_dataset()
    params = a2pr.init(config, dataset, jax.random.PRNGKey(1)).params
    batch = batch_of(dataset, 32)
    actor, critic = a2pr._networks(config, 2)
    _, vae = a2pr._value_and_vae(config, 2)
    noise = jax.random.normal(jax.random.PRNGKey(3), (32, 4))
    obs, actions = batch["observations"], batch["actions"]
    q1 = lambda a: critic.apply(params.critic, obs, a)[0]  # noqa: E731
    q_data = q1(actions)
    v = q_data - 0.1 * jax.random.normal(jax.random.PRNGKey(4), (32,))

    def reference(actor_params, detach_recon=False, lmbda=None):
        pi = actor.apply(actor_params, obs)
        recon = vae.apply(params.vae, obs, pi, noise)[0]
        recon = jax.lax.stop_gradient(recon) if detach_recon else recon
        q_recon = jax.lax.stop_gradient(q1(recon))
        take_pi = (q_recon - v >= q_data - v)[:, None]
        target = take_pi * recon + (1 - take_pi) * actions
        weight = jax.lax.stop_gradient((q_recon >= v) * 1.0 + (q_data > v) * 1.0)
        lmbda = 2.5 / jnp.abs(q1(pi)).mean() if lmbda is None else lmbda
        return -lmbda * q1(pi).mean() + (weight[:, None] * (pi - target) ** 2).mean()

    loss_fn = lambda p: a2pr.actor_loss(p, params, batch, q_data, v, noise, config)  # noqa: E731
    loss, aux = loss_fn(params.actor)
    assert 0 < float(aux["pi_target_fraction"]) < 1  # both kinds of target in the batch
    np.testing.assert_allclose(loss, reference(params.actor), rtol=1e-5)
    grads = jax.grad(lambda p: loss_fn(p)[0])(params.actor)
    fixed = float(aux["lambda"])
    assert_trees_close(grads, jax.grad(reference)(params.actor, False, fixed), rtol=1e-4, atol=1e-7)
    assert max_gap(grads, jax.grad(reference)(params.actor, True, fixed)) > 1e-4
    assert max_gap(grads, jax.grad(reference)(params.actor)) > 1e-4


def test_first_critic_is_the_first_twin(params):
    config = a2pr.Config(hidden_sizes=(4, 4))
    obs, actions = jnp.ones((5, 3)), jnp.linspace(-1, 1, 10).reshape(5, 2)
    _, critic = a2pr._networks(config, 2)
    np.testing.assert_allclose(
        a2pr.first_critic(config, params.critic, obs, actions),
        critic.apply(params.critic, obs, actions)[0],
        rtol=1e-6,
    )


def test_vae_sample_decodes_a_clipped_latent(params):
    config = a2pr.Config(hidden_sizes=(4, 4), vae_hidden_sizes=(5, 5))
    obs = jnp.linspace(-2, 2, 30).reshape(10, 3)
    key = jax.random.PRNGKey(5)
    z = jax.random.normal(key, (10, 4))
    assert float(jnp.abs(z).max()) > 0.5
    _, vae = a2pr._value_and_vae(config, 2)
    normalized = (obs - params.obs_mean) / params.obs_std
    decode = lambda z: vae.apply(params.vae, normalized, z, method=a2pr.VAE.decode)  # noqa: E731
    sampled = a2pr.vae_sample(config, params, obs, key)
    np.testing.assert_allclose(sampled, decode(jnp.clip(z, -0.5, 0.5)), rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(sampled - decode(z)).max()) > 1e-4
    assert float(jnp.abs(sampled).max()) <= 1


# --- The update ---


def test_update_order_critic_value_vae_actor():
    """Critics first; V on the new critics; the VAE with the new Q_1 and the old V; the actor
    with the new Q_1 and VAE and the old V; the VAE's step is its own loss's Adam step (the
    actor's loss, which reaches the VAE's weights, does not move them); targets last."""
    config = a2pr.Config(**TINY, normalize_obs=False, tau=0.1)
    dataset = synthetic_dataset()
    state = a2pr.init(config, dataset, jax.random.PRNGKey(5))
    state = state.replace(step=jnp.ones((), jnp.int32))  # step 2: an actor step
    batch = batch_of(dataset, 32)
    new, metrics = jax.jit(a2pr.update_on_batch)(config, state, batch)

    old, updated = state.params, new.params
    actor, _ = a2pr._networks(config, 2)
    _, noise_key, vae_key, actor_key = jax.random.split(state.rng, 4)
    noise = jnp.clip(0.2 * jax.random.normal(noise_key, (32, 2)), -0.5, 0.5)
    next_action = jnp.clip(
        actor.apply(state.target_actor, batch["next_observations"]) + noise, -1, 1
    )
    loss_q, _ = a2pr.critic_loss(old.critic, batch, next_action, state.target_critic, config)
    t = a2pr.value_target(updated.critic, state.target_critic, batch, next_action, config)
    loss_v, v = a2pr.value_loss(old.value, batch, t, config)
    q_data = a2pr.first_critic(config, updated.critic, batch["observations"], batch["actions"])
    vae_noise, actor_noise = (jax.random.normal(k, (32, 4)) for k in (vae_key, actor_key))
    loss_vae, _ = a2pr.vae_loss(old.vae, batch, q_data, v, vae_noise, config)
    moved = old.replace(critic=updated.critic, vae=updated.vae)
    loss_pi, _ = a2pr.actor_loss(old.actor, moved, batch, q_data, v, actor_noise, config)
    for name, expected in [
        ("critic_loss", loss_q), ("value_loss", loss_v), ("vae_loss", loss_vae),
        ("actor_loss", loss_pi),
    ]:  # fmt: skip
        np.testing.assert_allclose(metrics[name], expected, rtol=1e-5, err_msg=name)

    # The order matters: the old critics' V target, the old VAE in the actor's loss differ.
    stale_t = a2pr.value_target(old.critic, state.target_critic, batch, next_action, config)
    assert abs(float(a2pr.value_loss(old.value, batch, stale_t, config)[0]) - float(loss_v)) > 1e-6
    stale = old.replace(critic=updated.critic)
    stale_pi, _ = a2pr.actor_loss(old.actor, stale, batch, q_data, v, actor_noise, config)
    assert abs(float(stale_pi) - float(loss_pi)) > 1e-7

    # The VAE's new weights are one Adam step on L_vae alone, though L_pi has a gradient there.
    vae_grads = jax.grad(lambda p: a2pr.vae_loss(p, batch, q_data, v, vae_noise, config)[0])(
        old.vae
    )
    updates, _ = optax.adam(config.vae_lr).update(vae_grads, state.vae_opt)
    assert_trees_close(updated.vae, optax.apply_updates(old.vae, updates), rtol=1e-5, atol=1e-7)
    through_actor = jax.grad(
        lambda p: a2pr.actor_loss(
            old.actor, moved.replace(vae=p), batch, q_data, v, actor_noise, config
        )[0]  # fmt: skip
    )(updated.vae)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(through_actor)) > 0

    # Polyak targets with this step's critic and actor.
    expected = jax.tree.map(lambda q, t: 0.9 * t + 0.1 * q, updated.critic, state.target_critic)
    assert_trees_close(new.target_critic, expected, rtol=1e-5, atol=1e-7)
    expected = jax.tree.map(lambda p, t: 0.9 * t + 0.1 * p, updated.actor, state.target_actor)
    assert_trees_close(new.target_actor, expected, rtol=1e-5, atol=1e-7)


def test_actor_and_targets_move_every_second_step():
    config = a2pr.Config(**TINY)
    dataset = synthetic_dataset()
    state = a2pr.init(config, dataset, jax.random.PRNGKey(2))
    batch = batch_of(dataset, 32)
    update = jax.jit(a2pr.update_on_batch)
    first, metrics = update(config, state, batch)
    assert_trees_close(first.params.actor, state.params.actor, rtol=0, atol=0)
    assert_trees_close(first.target_actor, state.target_actor, rtol=0, atol=0)
    assert_trees_close(first.target_critic, state.target_critic, rtol=0, atol=0)
    for name in ("critic", "value", "vae"):
        assert max_gap(getattr(first.params, name), getattr(state.params, name)) > 0, name
    assert np.isfinite(metrics["actor_loss"])  # reported on critic-only steps too
    second, _ = update(config, first, batch)
    assert max_gap(second.params.actor, first.params.actor) > 0
    assert max_gap(second.target_critic, first.target_critic) > 0


def test_update_agrees_under_jit_and_vmap():
    dataset = synthetic_dataset()
    batch = batch_of(dataset, 32)
    configs = [
        a2pr.Config(**TINY, alpha=a, mask=m, vae_weight=w, actor_lr=lr, vae_lr=vlr)
        for a, m, w, lr, vlr in ((2.5, 1.0, 1.0, 3e-4, 1e-3), (10.0, 0.4, 1.5, 1e-3, 3e-4))
    ]
    state = a2pr.init(configs[0], dataset, jax.random.PRNGKey(3))
    update = jax.jit(a2pr.update_on_batch)
    state, _ = update(configs[0], state, batch)  # the next step moves the actor too
    singles = [update(c, state, batch) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.vmap(a2pr.update_on_batch, in_axes=(0, None, None))(stacked, state, batch)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-5, atol=1e-6)


def test_train_is_finite_deterministic_and_a_seed_sweep_member_is_the_single_run():
    """Same key, same numbers; seeds vmapped (the actor step under a cond on any member being
    at it) give each seed's single run."""
    dataset = synthetic_dataset()
    config = a2pr.Config(**TINY, total_updates=200)
    run = jax.jit(lambda key: a2pr.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(4))
    again, _ = run(jax.random.PRNGKey(4))
    assert int(state.step) == 200
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
    assert {"critic_loss", "value_loss", "vae_loss", "actor_loss", "grad_norm"} <= set(metrics)
    assert_trees_close(state.params, again.params, rtol=0, atol=0)
    assert float(metrics["critic_loss"][-20:].mean()) < float(metrics["critic_loss"][:20].mean())
    keys = jnp.stack([jax.random.PRNGKey(4), jax.random.PRNGKey(5)])
    swept, _ = jax.jit(jax.vmap(lambda key: a2pr.train(config, dataset, key)))(keys)
    other, _ = run(jax.random.PRNGKey(5))
    for i, single in enumerate((state, other)):
        member = jax.tree.map(lambda x, i=i: x[i], swept.params)
        assert_trees_close(member, single.params, rtol=1e-4, atol=1e-5)


def test_act_normalizes_observations_with_dataset_statistics():
    dataset = synthetic_dataset()
    config = a2pr.Config(**TINY)
    params = a2pr.init(config, dataset, jax.random.PRNGKey(0)).params
    obs = np.asarray(dataset.observations)
    np.testing.assert_allclose(params.obs_mean, obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(params.obs_std, obs.std(0) + 1e-3, rtol=1e-5)
    actor, _ = a2pr._networks(config, 2)
    expected = actor.apply(params.actor, (obs - obs.mean(0)) / (obs.std(0) + 1e-3))
    action = a2pr.act(config, params, dataset.observations, None, deterministic=True)
    np.testing.assert_allclose(action, expected, rtol=1e-4, atol=1e-6)


# --- Named errors ---


def test_init_names_bad_datasets():
    config = a2pr.Config(**TINY)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        a2pr.init(config, synthetic_dataset(action_scale=2.0), jax.random.PRNGKey(0))
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        a2pr.init(config, images, jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "field, value",
    [
        ("alpha", -1.0), ("vae_weight", -0.5), ("mask", -0.4), ("vae_lr", 0.0),
        ("value_lr", -3e-4), ("gamma", 1.5), ("tau", 0.0), ("policy_freq", 0),
        ("vae_hidden_sizes", [750, 0]), ("batch_size", 0),
    ],
)  # fmt: skip
def test_out_of_range_fields_are_refused_by_name(field, value):
    with pytest.raises(FieldOutOfRange, match=field):
        make_config(a2pr.Config, {field: value})


def test_check_names_the_cross_field_rules():
    a2pr.check(a2pr.Config())
    a2pr.check(a2pr.Config(alpha=0.0))  # pure advantage-weighted bc: allowed
    a2pr.check(a2pr.Config(mask=0.0))  # TD3 without a bc term: allowed
    with pytest.raises(ValueError, match="alpha=0 and mask=0"):
        a2pr.check(a2pr.Config(alpha=0.0, mask=0.0))
    with pytest.raises(ValueError, match="total_updates=1 < policy_freq=2"):
        a2pr.check(a2pr.Config(total_updates=1))
    # Traced values (a config passed through jit) are not checked.
    jax.jit(lambda c: a2pr.check(c) or 0)(a2pr.Config(alpha=0.0, mask=0.0))
    assert make_config(a2pr.Config, {}) == a2pr.Config()


# --- Learning from a Pendulum dataset ---

PENDULUM = {"total_updates": 5000, "hidden_sizes": [64, 64]}


@pytest.mark.slow
def test_a2pr_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum medium-replay data (as tests/test_offline_learning.py: the SAC
    recipe stopped at 48k steps, ~23k transitions from random play to medium), A2PR with the
    paper's settings reaches a clearly higher final normalized score than BC: 3 seeds, 64 x 64
    networks, 5000 updates of batch 256, 20 evaluation episodes.

    Measured when this was written (seeds 0-2): BC -46.0, -37.0, -54.9 (mean -46.0); A2PR 58.1,
    45.7, 38.6 (mean 47.5), a gap of 93; seeds 3-5 gave BC -58.9 and A2PR 36.3 (mean). The test
    asks for a gap of 40. The VAE is scaled down with the other networks (64 x 64 instead of the
    paper's 750 x 750 beside 256-unit networks) to fit a CPU budget: with the paper's VAE, seed 0
    reached 37.8 but took 233 s of CPU. 5000 updates are needed: after 2500, A2PR was still at
    -73. A2PR takes 25-40 s of one core here, BC 3 s and the data about 10-20 s.
    """
    path, metadata = pendulum_medium_replay(tmp_path)

    def scores(algo, **agent):
        spec = RunSpec(
            algo=algo, env=metadata["env"], agent={**PENDULUM, **agent}, seeds=3,
            dataset=str(path), eval_episodes=20, chunk_updates=2500,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc, a2pr_scores = scores("bc"), scores("a2pr", vae_hidden_sizes=[64, 64])
    assert a2pr_scores.mean() >= bc.mean() + 40, (bc, a2pr_scores)
