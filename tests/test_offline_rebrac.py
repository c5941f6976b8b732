"""ReBRAC: the critic target with its behaviour penalty, the critic loss, the actor loss with its
stop-gradient lambda (by hand, gradients included), the next-action sampler, the delayed actor
and targets, jit/vmap agreement, determinism, named init errors and the offline contract
(declared constants, update sampling its own batch, train as a scan of update, act from Params'
action_dim)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.agents import rebrac
from rljax.data import Dataset

# hidden_sizes=(1,) without LayerNorm, so that hand-set weights give Q and pi in closed form.
TINY = dict(hidden_sizes=(1,), critic_layernorm=False)


def _critic(slopes, offsets):
    """Ensemble params with Q_i(s, a) = slopes[i] * (a + 10) + offsets[i] for 1-D actions:
    hidden unit relu(a + 10) (observation weights 0), output layer slopes[i], offsets[i]."""
    n = len(slopes)
    kernel = jnp.zeros((n, 3, 1)).at[:, 2, 0].set(1.0)  # inputs: 2 obs dims, then the action
    return {
        "params": {
            "VmapCritic_0": {
                "Dense_0": {"kernel": kernel, "bias": jnp.full((n, 1), 10.0)},
                "Dense_1": {
                    "kernel": jnp.asarray(slopes, jnp.float32).reshape(n, 1, 1),
                    "bias": jnp.asarray(offsets, jnp.float32).reshape(n, 1),
                },
            }
        }
    }


def _actor(c):
    """Actor params with pi(s) = tanh(c) for every s: hidden unit relu(1), output kernel 0."""
    return {
        "params": {
            "Dense_0": {"kernel": jnp.zeros((2, 1)), "bias": jnp.ones(1)},
            "out": {"kernel": jnp.zeros((1, 1)), "bias": jnp.array([c], jnp.float32)},
        }
    }


def _batch():
    return {
        "observations": jnp.array([[0.1, 0.2], [0.3, -0.4], [1.0, 1.0]]),
        "actions": jnp.array([[0.5], [-1.0], [0.0]]),
        "rewards": jnp.array([1.0, -1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0, 0.0]),
        "next_observations": jnp.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]]),
        "next_actions": jnp.array([[0.2], [0.9], [-0.7]]),
        "next_action_mask": jnp.array([1.0, 1.0, 0.0]),
    }


def test_critic_target_by_hand():
    """y = r + gamma (1 - d) [min_i Qbar_i(s', a~') - beta_critic m ||a~' - a'||^2]."""
    config = rebrac.Config(**TINY, gamma=0.5, critic_bc_coef=0.2)
    batch = _batch()
    next_action = jnp.array([[0.6], [0.1], [0.3]])
    target_critic = _critic([1.0, 2.0], [0.0, -5.0])
    y = rebrac.critic_target(batch, next_action, target_critic, config)
    # Qbar_0 = a + 10, Qbar_1 = 2 (a + 10) - 5; both at a = 0.6: 10.6 and 16.2 -> min 10.6
    # sample 0: 1 + 0.5 * (10.6 - 0.2 * (0.6 - 0.2)^2) = 1 + 0.5 * (10.6 - 0.032) = 6.284
    # sample 1: terminal -> -1
    # sample 2: no recorded next action (mask 0): 2 + 0.5 * min(10.3, 15.6) = 7.15
    np.testing.assert_allclose(y, [6.284, -1.0, 7.15], rtol=1e-6)


def test_critic_loss_by_hand_and_target_is_constant():
    """L_Q = sum_i mean((Q_i(s, a) - y)^2), with no gradient through y."""
    config = rebrac.Config(**TINY)
    batch = _batch()
    critic = _critic([1.0, 0.5], [0.0, 1.0])
    y = jnp.array([10.0, 0.0, 12.0])
    loss, _ = rebrac.critic_loss(critic, batch, y, config)
    a = np.array([0.5, -1.0, 0.0])
    q0, q1 = a + 10, 0.5 * (a + 10) + 1  # [10.5, 9, 10], [6.25, 5.5, 6]
    want = ((q0 - y) ** 2).mean() + ((q1 - y) ** 2).mean()  # (0.25+81+4)/3 + (14.0625+30.25+36)/3
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    grad_y = jax.grad(lambda y: rebrac.critic_loss(critic, batch, y, config)[0])(y)
    np.testing.assert_array_equal(grad_y, 0.0)


@pytest.mark.parametrize("normalize_q", [True, False])
def test_actor_loss_and_gradient_by_hand(normalize_q):
    """L_pi = mean(beta ||pi(s) - a||^2 - lambda min_i Q_i(s, pi(s))), lambda = 1/mean|min Q|
    held constant. Were lambda differentiated, lambda * mean(Q) = 1 for positive Q and the Q
    term's gradient would vanish: the gradient check below would fail."""
    config = rebrac.Config(**TINY, actor_bc_coef=0.3, normalize_q=normalize_q)
    batch = _batch()
    critic = _critic([1.0, 2.0], [0.0, -5.0])  # min is Q_0 = a + 10 wherever a + 10 > 5
    c = 0.4
    loss, aux = rebrac.actor_loss(_actor(c), critic, batch, config)
    pi = np.tanh(c)
    a = np.array([0.5, -1.0, 0.0])
    q = pi + 10  # the same for every sample
    lam = 1 / q if normalize_q else 1.0
    np.testing.assert_allclose(aux["lambda"], lam, rtol=1e-6)
    np.testing.assert_allclose(loss, (0.3 * (pi - a) ** 2 - lam * q).mean(), rtol=1e-6)
    # dL/dc = (1 - pi^2) mean(2 * 0.3 (pi - a) - lambda * dQ_0/da), dQ_0/da = 1
    grad = jax.grad(lambda p: rebrac.actor_loss(p, critic, batch, config)[0])(_actor(c))
    want = (1 - pi**2) * (0.6 * (pi - a) - lam).mean()
    np.testing.assert_allclose(grad["params"]["out"]["bias"][0], want, rtol=1e-5)


def test_bc_term_is_summed_over_action_dims():
    config = rebrac.Config(hidden_sizes=(4,), actor_bc_coef=1.0)
    actor, critic = rebrac._networks(config, 3)
    obs = jnp.array([[0.1, 0.2], [0.3, -0.4]])
    actor_params = actor.init(jax.random.PRNGKey(0), obs[0])
    critic_params = jax.tree.map(
        jnp.zeros_like, critic.init(jax.random.PRNGKey(1), obs[0], jnp.zeros(3))
    )
    actions = jnp.array([[0.5, -0.5, 0.1], [0.0, 0.9, -0.9]])
    batch = {"observations": obs, "actions": actions}
    _, aux = rebrac.actor_loss(actor_params, critic_params, batch, config)
    pi = actor.apply(actor_params, obs)
    np.testing.assert_allclose(aux["bc_mse"], ((pi - actions) ** 2).sum(-1).mean(), rtol=1e-6)


def _dataset(n=64, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n + 1, 2)).astype(np.float32) * [1.0, 5.0] + [0.0, 3.0]
    actions = np.tanh(obs[:-1, :1] + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
    ends = (np.arange(n) % 16 == 15).astype(np.float32)
    return Dataset.from_arrays(
        observations=obs[:-1],
        actions=actions,
        rewards=-((actions[:, 0] - 0.5) ** 2),
        terminals=np.zeros(n),
        timeouts=ends,
        next_observations=obs[1:],
    )


def test_sample_batch_next_actions_and_mask():
    """a' = actions[i + 1]; the mask is 0 after a terminal, a timeout or at the last row."""
    data = SimpleNamespace(
        **{
            "observations": jnp.arange(5.0)[:, None],
            "actions": jnp.arange(5.0)[:, None] / 10,
            "rewards": jnp.arange(5.0),
            "terminals": jnp.array([0.0, 1.0, 0.0, 0.0, 0.0]),
            "timeouts": jnp.array([0.0, 0.0, 0.0, 1.0, 0.0]),
            "next_observations": jnp.arange(5.0)[:, None] + 1,
        }
    )
    batch = rebrac.sample_batch(rebrac.Config(batch_size=200), data, jax.random.PRNGKey(0))
    idx = np.asarray(batch["rewards"]).astype(int)
    assert set(idx.tolist()) == set(range(5))
    np.testing.assert_allclose(batch["next_actions"][:, 0], np.minimum(idx + 1, 4) / 10)
    np.testing.assert_array_equal(batch["next_action_mask"], np.isin(idx, [0, 2]))


def test_actor_and_targets_move_every_policy_freq_steps():
    config = rebrac.Config(hidden_sizes=(8, 8), batch_size=16, policy_freq=2)
    dataset = _dataset()
    state = rebrac.init(config, dataset, jax.random.PRNGKey(0))
    batch = rebrac.sample_batch(config, dataset, jax.random.PRNGKey(1))
    step = jax.jit(lambda s: rebrac.update_on_batch(config, s, batch))

    def changed(a, b):
        leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return not all(np.array_equal(x, y) for x, y in leaves)

    for i in range(4):
        new, metrics = step(state)
        assert changed(new.params.critic, state.params.critic)
        actor_turn = i % 2 == 0
        assert changed(new.params.actor, state.params.actor) == actor_turn
        assert changed(new.target_actor, state.target_actor) == actor_turn
        assert changed(new.target_critic, state.target_critic) == actor_turn
        assert all(np.isfinite(v) for v in metrics.values())
        state = new


def test_update_agrees_under_jit_and_vmap_over_configs():
    dataset = _dataset()
    configs = [
        rebrac.Config(hidden_sizes=(8,), batch_size=16, critic_bc_coef=b) for b in (0.0, 1.0)
    ]
    batch = rebrac.sample_batch(configs[0], dataset, jax.random.PRNGKey(1))
    state = rebrac.init(configs[0], dataset, jax.random.PRNGKey(0))
    jitted = [jax.jit(rebrac.update_on_batch)(c, state, batch)[1]["critic_loss"] for c in configs]
    eager = rebrac.update_on_batch(configs[1], state, batch)[1]["critic_loss"]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    vmapped = jax.vmap(rebrac.update_on_batch, in_axes=(0, None, None))(stacked, state, batch)[1]
    np.testing.assert_allclose(eager, jitted[1], rtol=1e-5)
    np.testing.assert_allclose(vmapped["critic_loss"], jitted, rtol=1e-5)
    assert jitted[0] != jitted[1]  # the penalty matters


def test_train_is_finite_and_deterministic():
    config = rebrac.Config(hidden_sizes=(16, 16), batch_size=32)
    dataset = _dataset()
    run = jax.jit(lambda key: rebrac.train(config, dataset, key, num_updates=300))
    state, metrics = run(jax.random.PRNGKey(0))
    again, metrics_again = run(jax.random.PRNGKey(0))
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
        np.testing.assert_array_equal(values, metrics_again[name])
    assert int(state.update_step) == 300
    np.testing.assert_allclose(state.params.obs_mean, dataset.observations.mean(0), rtol=1e-5)
    obs = dataset.observations[:5]
    action = rebrac.act(config, state.params, obs, jax.random.PRNGKey(1))
    assert action.shape == (5, 1) and (jnp.abs(action) <= 1).all()
    # act normalizes: feeding normalized observations to the actor gives the same actions
    actor, _ = rebrac._networks(config, 1)
    normalized = (obs - state.params.obs_mean) / (state.params.obs_std + 1e-3)
    np.testing.assert_allclose(action, actor.apply(state.params.actor, normalized), rtol=1e-6)


def test_init_errors_are_named():
    dataset = _dataset()
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        rebrac.init(
            rebrac.Config(), dataset.replace(actions=dataset.actions * 3), jax.random.PRNGKey(0)
        )
    images = dataset.replace(observations=jnp.zeros((64, 2, 2)))
    with pytest.raises(ValueError, match="vector observations"):
        rebrac.init(rebrac.Config(), images, jax.random.PRNGKey(0))


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)
