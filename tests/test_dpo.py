"""DPO: the drift and the loss against hand computations, the drift's validity, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import agents, envs
from rljax.agents import dpo, ppo

# 8 updates of 4 envs x 16 steps.
TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=8 * 64)


def soft(x, scale):
    """x - s tanh(x / s): the part of the drift inside the ReLU."""
    return x - scale * np.tanh(x / scale)


# --- Drift ---


def test_drift_matches_a_hand_computation():
    """alpha = 2 acts on (rho - 1) A where A >= 0, beta = 0.6 on log(rho) A where A < 0; the
    ReLU zeroes the side where x = (rho - 1) A or log(rho) A is negative."""
    ratio = np.array([1.5, 0.5, 0.5, 1.5, 1.0, 3.0])
    advantages = np.array([2.0, 2.0, -1.0, -1.0, 3.0, 0.0])
    expected = [
        1.0 - 2.0 * np.tanh(0.5),  # A >= 0: x = 0.5 * 2 = 1 = 0.0758 (beta's would be 0.286)
        0.0,  # A >= 0: x = -0.5 * 2 = -1 and -1 - 2 tanh(-1/2) < 0
        soft(np.log(0.5) * -1.0, 0.6),  # A < 0: x = log(0.5) * -1 = 0.693
        0.0,  # A < 0: x = log(1.5) * -1 < 0
        0.0,  # rho = 1
        0.0,  # A = 0
    ]
    assert expected[0] == pytest.approx(0.0757657, rel=1e-5)
    args = (jnp.log(ratio), jnp.asarray(advantages), 2.0, 0.6)
    for fn in (dpo.dpo_drift, jax.jit(dpo.dpo_drift)):
        np.testing.assert_allclose(fn(*args), expected, rtol=1e-5, atol=1e-7)


def test_drift_is_a_valid_drift():
    """On a grid of ratios in [0.05, 20] and advantages of both signs, for several alpha and
    beta: D >= 0, and at rho = 1, D = 0 with zero gradient in rho."""
    log_ratio = jnp.linspace(np.log(0.05), np.log(20.0), 101)[:, None]
    advantages = jnp.linspace(-5.0, 5.0, 41)[None, :]
    for alpha, beta in [(2.0, 0.6), (0.5, 3.0)]:
        drift = dpo.dpo_drift(log_ratio, advantages, alpha, beta)
        assert (drift >= 0).all() and (drift > 0).any()
        at_one = jnp.zeros(41)
        np.testing.assert_array_equal(dpo.dpo_drift(at_one, advantages[0], alpha, beta), 0.0)
        # d D / d rho = (d D / d log rho) / rho, and rho = 1.
        grad = jax.vmap(jax.grad(dpo.dpo_drift), in_axes=(0, 0, None, None))
        np.testing.assert_allclose(grad(at_one, advantages[0], alpha, beta), 0.0, atol=1e-7)


# --- Loss ---


def test_dpo_loss_matches_a_hand_computation():
    """PPO's five samples (tests/test_ppo.py): each part of the loss, by hand. At rho = 1 the
    policy gradient is -A / n, the same as PPO's."""
    config = dpo.Config(vf_clip_eps=0.2, vf_coef=0.5, ent_coef=0.01, alpha=2.0, beta=0.6)
    ratio = np.array([1.5, 1.5, 0.5, 0.5, 1.1])
    old_log_prob = np.array([-1.0, -0.5, -2.0, -0.3, -1.2])
    log_prob = old_log_prob + np.log(ratio)
    raw_advantages = np.array([2.0, -1.0, -3.0, 2.0, 1.0])
    old_value = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    value = np.array([1.5, 1.5, 0.1, -0.5, 0.0])
    targets = np.array([2.0, 1.0, 1.0, -1.0, 0.0])
    entropy = np.array([1.0, 0.5, 0.2, 0.3, 0.5])

    a = (raw_advantages - raw_advantages.mean()) / (raw_advantages.std() + 1e-8)
    assert list(np.sign(a)) == [1, -1, -1, 1, 1]
    drift = [
        soft(0.5 * a[0], 2.0),  # A > 0, rho > 1: (rho - 1) A > 0
        0.0,  # A < 0, rho > 1: log(rho) A < 0
        soft(np.log(0.5) * a[2], 0.6),  # A < 0, rho < 1: log(rho) A > 0
        0.0,  # A > 0, rho < 1: (rho - 1) A < 0
        soft(0.1 * a[4], 2.0),
    ]
    # Clipped values 1.2, 1.2, 0.1, -0.2, 0.0; the larger squared error of the two.
    squared_errors = [0.8**2, 0.5**2, 0.9**2, 0.8**2, 0.0]
    expected = {
        "policy_loss": -np.mean(ratio * a - drift),
        "value_loss": 0.5 * np.mean(squared_errors),
        "entropy": 0.5,
        "approx_kl": np.mean((ratio - 1) - np.log(ratio)),
        "drift": np.mean(drift),
    }
    expected_loss = expected["policy_loss"] + 0.5 * expected["value_loss"] - 0.01 * 0.5

    inputs = [jnp.asarray(x, jnp.float32) for x in (log_prob, old_log_prob, raw_advantages)]
    inputs += [jnp.asarray(x, jnp.float32) for x in (value, old_value, targets, entropy)]
    for fn in (dpo.dpo_loss, jax.jit(dpo.dpo_loss)):
        loss, parts = fn(*inputs, config)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        for name, want in expected.items():
            np.testing.assert_allclose(parts[name], want, rtol=1e-5, err_msg=name)

    def policy_grad(loss_fn, config):
        at_one = [inputs[1], *inputs[1:]]
        return jax.grad(lambda lp: loss_fn(lp, *at_one[1:], config)[0])(at_one[0])

    np.testing.assert_allclose(policy_grad(dpo.dpo_loss, config), -a / 5, rtol=1e-5)
    np.testing.assert_allclose(policy_grad(ppo.ppo_loss, ppo.Config()), -a / 5, rtol=1e-5)


# --- The contract and learning ---


def test_train_is_deterministic_with_finite_metrics():
    """Through the registry: two runs with one key agree bit for bit; every metric but the
    episode statistics is finite, and the drift is non-negative."""
    agent = agents.get("dpo")
    env, env_params = envs.make("CartPole-v1")
    train = jax.jit(lambda key: agent.train(agent.Config(**TINY), env, env_params, key))
    (_, first), (_, second) = train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(0))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        if not name.startswith("episode_"):
            assert np.isfinite(first[name]).all(), name
    assert (first["drift"] >= 0).all()


def final_returns(config, env, env_params, num_seeds, last=20):
    """Per seed, the mean return of episodes finished in the last `last` updates; members are
    initialized in turn (lax.map) and trained vmapped, as the runner does."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    configs = jax.tree.map(lambda *x: jnp.stack(x), *[config] * num_seeds)

    def train(configs, keys):
        states = jax.lax.map(lambda ck: dpo.init(ck[0], env, env_params, ck[1]), (configs, keys))

        def run(config, state):
            def one_update(s, _):
                return dpo.update(config, env, env_params, s)

            return jax.lax.scan(one_update, state, None, config.num_updates)[1]

        return jax.vmap(run)(configs, states)

    returns = np.asarray(jax.jit(train)(configs, keys)["episode_return"])
    return np.nanmean(returns[:, -last:], axis=1)


@pytest.mark.slow
def test_dpo_solves_cartpole():
    """The default config (PureJaxRL's CartPole PPO config with the paper's alpha = 2 and
    beta = 0.6; 5e5 steps) reaches a mean return >= 475 over 4 seeds."""
    env, env_params = envs.make("CartPole-v1")
    returns = final_returns(dpo.Config(), env, env_params, num_seeds=4)
    assert returns.mean() >= 475, returns
