"""MDPO: the tempering schedule and the loss against hand computations, the KL's direction,
the schedule's wiring into update, learning."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import agents, envs
from rljax.agents import mdpo

# 8 updates of 4 envs x 16 steps.
TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=8 * 64)


# --- Tempering ---


def test_tempering_schedule_by_hand():
    """t_k = t_0 (1 - k / K) over K = 8 updates: 1, 7/8, ..., 1/8 for the paper's t_0 = 1, and
    twice that for t_0 = 2; the KL weight 1 / t_k grows from 1 to K."""
    k = jnp.arange(8)
    config = mdpo.Config(**TINY)
    assert config.num_updates == 8
    expected = [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    np.testing.assert_allclose(mdpo.tempered_step_size(config, k), expected, rtol=1e-6)
    config = mdpo.Config(**TINY, step_size=2.0)
    np.testing.assert_allclose(mdpo.tempered_step_size(config, k), 2 * np.array(expected))
    np.testing.assert_allclose(1 / mdpo.tempered_step_size(mdpo.Config(**TINY), 7), 8.0)


# --- Loss ---


def test_mdpo_loss_matches_a_hand_computation():
    """PPO's five samples (tests/test_ppo.py), with per-sample KLs and t_k = 0.5: each part of
    the loss, by hand. Nothing is clipped, so every sample passes a gradient."""
    config = mdpo.Config(vf_clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
    ratio = np.array([1.5, 1.5, 0.5, 0.5, 1.1])
    old_log_prob = np.array([-1.0, -0.5, -2.0, -0.3, -1.2])
    log_prob = old_log_prob + np.log(ratio)
    raw_advantages = np.array([2.0, -1.0, -3.0, 2.0, 1.0])
    old_value = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    value = np.array([1.5, 1.5, 0.1, -0.5, 0.0])
    targets = np.array([2.0, 1.0, 1.0, -1.0, 0.0])
    entropy = np.array([1.0, 0.5, 0.2, 0.3, 0.5])
    kl = np.array([0.1, 0.2, 0.0, 0.3, 0.4])  # mean 0.2
    t_k = 0.5

    a = (raw_advantages - raw_advantages.mean()) / (raw_advantages.std() + 1e-8)
    # Clipped values 1.2, 1.2, 0.1, -0.2, 0.0; the larger squared error of the two.
    squared_errors = [0.8**2, 0.5**2, 0.9**2, 0.8**2, 0.0]
    expected = {
        "policy_loss": -np.mean(ratio * a) + 0.2 / 0.5,
        "value_loss": 0.5 * np.mean(squared_errors),
        "entropy": 0.5,
        "approx_kl": np.mean((ratio - 1) - np.log(ratio)),
        "kl": 0.2,
    }
    expected_loss = expected["policy_loss"] + 0.5 * expected["value_loss"] - 0.01 * 0.5

    inputs = [jnp.asarray(x, jnp.float32) for x in (log_prob, old_log_prob, raw_advantages)]
    inputs += [jnp.asarray(x, jnp.float32) for x in (value, old_value, targets, entropy, kl)]
    for fn in (mdpo.mdpo_loss, jax.jit(mdpo.mdpo_loss)):
        loss, parts = fn(*inputs, t_k, config)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        for name, want in expected.items():
            np.testing.assert_allclose(parts[name], want, rtol=1e-5, err_msg=name)

    # d/d log pi of -mean(rho A) is -rho A / n; the KL term's gradient is 1 / (n t_k).
    grads = jax.grad(lambda lp, kl: mdpo.mdpo_loss(lp, *inputs[1:7], kl, t_k, config)[0], (0, 1))
    grad_log_prob, grad_kl = grads(inputs[0], inputs[7])
    np.testing.assert_allclose(grad_log_prob, -ratio * a / 5, rtol=1e-5)
    np.testing.assert_allclose(grad_kl, 1 / (5 * t_k), rtol=1e-6)


def test_kl_is_new_against_old():
    """update passes pi.kl_divergence(old_pi): distrax's p.kl_divergence(q) is KL(p || q) =
    sum p log(p / q). For new p = (0.5, 0.5) and old q = (0.9, 0.1) that is 0.511, while
    KL(old || new) would be 0.368."""
    new = distrax.Categorical(probs=jnp.array([0.5, 0.5]))
    old = distrax.Categorical(probs=jnp.array([0.9, 0.1]))
    by_hand = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert by_hand == pytest.approx(0.5108, abs=1e-4)
    assert 0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5) == pytest.approx(0.3681, abs=1e-4)
    np.testing.assert_allclose(new.kl_divergence(old), by_hand, rtol=1e-6)


# --- The contract and learning ---


def test_train_tempers_and_is_deterministic():
    """Through the registry: two runs with one key agree bit for bit; the step_size metric
    follows t_k = 1 - k / K; every metric but the episode statistics is finite."""
    agent = agents.get("mdpo")
    env, env_params = envs.make("CartPole-v1")
    train = jax.jit(lambda key: agent.train(agent.Config(**TINY), env, env_params, key))
    (_, first), (_, second) = train(jax.random.PRNGKey(0)), train(jax.random.PRNGKey(0))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
        if not name.startswith("episode_"):
            assert np.isfinite(first[name]).all(), name
    np.testing.assert_allclose(first["step_size"], 1 - np.arange(8) / 8, rtol=1e-6)
    assert (first["kl"] >= 0).all() and (first["kl"] > 0).any()


def final_returns(config, env, env_params, num_seeds, last=20):
    """Per seed, the mean return of episodes finished in the last `last` updates; members are
    initialized in turn (lax.map) and trained vmapped, as the runner does."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    configs = jax.tree.map(lambda *x: jnp.stack(x), *[config] * num_seeds)

    def train(configs, keys):
        states = jax.lax.map(lambda ck: mdpo.init(ck[0], env, env_params, ck[1]), (configs, keys))

        def run(config, state):
            def one_update(s, _):
                return mdpo.update(config, env, env_params, s)

            return jax.lax.scan(one_update, state, None, config.num_updates)[1]

        return jax.vmap(run)(configs, states)

    returns = np.asarray(jax.jit(train)(configs, keys)["episode_return"])
    return np.nanmean(returns[:, -last:], axis=1)


@pytest.mark.slow
def test_mdpo_solves_cartpole():
    """The default config (PureJaxRL's CartPole PPO config with the paper's tempering t_0 = 1;
    5e5 steps) reaches a mean return >= 475 over 4 seeds."""
    env, env_params = envs.make("CartPole-v1")
    returns = final_returns(mdpo.Config(), env, env_params, num_seeds=4)
    assert returns.mean() >= 475, returns
