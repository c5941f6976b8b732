"""T-PPO's extended GAE (ppo.py's ``egae``): equal to GAE on complete trajectories, a hand case on
an unfinished one, the completed-step mask against a loop, the value loss on completed steps only,
and training that equals plain PPO's when every rollout holds whole episodes."""

import jax
import jax.numpy as jnp
import numpy as np

from rljax import envs
from rljax.agents import ppo, ppo_rnn


def complete_reference(terminated, truncated):
    """Per env, backwards: a step is complete once an episode end has been seen at or after it."""
    complete = np.zeros(terminated.shape, bool)
    for n in range(terminated.shape[1]):
        seen = False
        for t in reversed(range(terminated.shape[0])):
            seen = seen or bool(terminated[t, n] or truncated[t, n])
            complete[t, n] = seen
    return complete


def test_egae_equals_gae_on_complete_trajectories():
    """Random rollouts of 4 envs whose last step ends an episode (by termination in two envs,
    by a time limit in the others): every step is complete, and EGAE's advantages and targets
    are GAE's, bit for bit, under no-jit, jit and vmap over envs."""
    rng = np.random.default_rng(0)
    shape = (20, 4)
    rewards, values, next_values = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    terminated, truncated = rng.random(shape) < 0.1, rng.random(shape) < 0.1
    terminated[-1, :2] = True
    truncated[-1, 2:] = True

    def per_env(fn):
        return jax.vmap(fn, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)

    pairs = [(ppo.gae, ppo.egae)]
    pairs += [(transform(ppo.gae), transform(ppo.egae)) for transform in (jax.jit, per_env)]
    for gamma, lam in ((0.99, 0.95), (0.9, 1.0), (0.5, 0.0)):
        args = (rewards, values, next_values, terminated, truncated, gamma, lam)
        for gae, egae in pairs:
            want_advantages, want_targets = gae(*args)
            advantages, targets, complete = egae(*args)
            np.testing.assert_array_equal(advantages, want_advantages)
            np.testing.assert_array_equal(targets, want_targets)
            assert np.asarray(complete).all()


def test_egae_by_hand_on_unfinished_episodes():
    """gamma = lam = 0.5, window l = 5. Env 0 terminates at step 1, then runs unfinished to the
    window's end: deltas (1, 1, 2.5, 3.25, 4), the last bootstrapped with V(s_5) = 3, so
    A_2 = 2.5 + 0.25 * 3.25 + 0.0625 * 4 = 3.5625 (EGAE's sum to l), and only steps 0-1 are
    complete. Env 1 hits a time limit at step 3 (bootstrapped, an episode end all the same):
    steps 0-3 are complete, step 4 is not."""
    column = lambda *x: np.array(x, np.float32)  # noqa: E731
    rewards = np.stack([column(1, 2, 3, 4, 5), column(1, 1, 1, 1, 1)], 1)
    values = np.stack([column(0.5, 1, 1.5, 2, 2.5), column(2, 2, 2, 2, 2)], 1)
    next_values = np.stack([column(1, 9, 2, 2.5, 3), column(2, 2, 2, 4, 2)], 1)
    terminated = np.stack([column(0, 1, 0, 0, 0), column(0, 0, 0, 0, 0)], 1) > 0
    truncated = np.stack([column(0, 0, 0, 0, 0), column(0, 0, 0, 1, 0)], 1) > 0
    advantages, targets, complete = ppo.egae(
        rewards, values, next_values, terminated, truncated, 0.5, 0.5
    )
    np.testing.assert_allclose(advantages[:, 0], [1.25, 1.0, 3.5625, 4.25, 4.0], rtol=1e-6)
    np.testing.assert_allclose(targets[:, 0], [1.75, 2.0, 5.0625, 6.25, 6.5], rtol=1e-6)
    # Env 1: deltas 0, 0, 0, 1 + 0.5 * 4 - 2 = 1 (cut after it), 1 + 1 - 2 = 0.
    np.testing.assert_allclose(advantages[:, 1], [1 / 64, 1 / 16, 0.25, 1.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(complete, [[1, 1], [1, 1], [0, 1], [0, 1], [0, 0]])


def test_complete_steps_match_the_loop():
    rng = np.random.default_rng(1)
    shape = (30, 6)
    terminated, truncated = rng.random(shape) < 0.08, rng.random(shape) < 0.08
    zeros = np.zeros(shape, np.float32)
    *_, complete = jax.jit(ppo.egae)(zeros, zeros, zeros, terminated, truncated, 0.99, 0.95)
    expected = complete_reference(terminated, truncated)
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(complete, expected)


def test_value_loss_on_completed_steps_only():
    """With EGAE's weights (the mask over its sum) the value loss is ppo_loss's over the
    completed steps alone, and passes no gradient to the others' values."""
    rng = np.random.default_rng(2)
    value, old_value, targets = (jnp.asarray(rng.normal(size=8), jnp.float32) for _ in range(3))
    complete = np.array([1, 1, 0, 1, 0, 0, 1, 1], bool)
    weights = jnp.asarray(complete / complete.sum(), jnp.float32)
    loss = ppo.weighted_value_loss(value, old_value, targets, weights, 0.2)
    zeros = jnp.zeros(5)
    subset = (value[complete], old_value[complete], targets[complete])
    _, parts = ppo.ppo_loss(zeros, zeros, zeros, *subset, zeros, ppo.Config(clip_eps=0.2))
    np.testing.assert_allclose(loss, parts["value_loss"], rtol=1e-6)

    # Old values = values: nothing clipped, so every completed step has a gradient.
    grad = jax.grad(ppo.weighted_value_loss)(value, value, targets, weights, 0.2)
    np.testing.assert_array_equal(np.asarray(grad)[~complete], 0.0)
    assert (np.asarray(grad)[complete] != 0).all()


def test_training_equals_ppo_when_rollouts_hold_whole_episodes():
    """Pendulum with 8-step episodes and 16-step rollouts: every step is complete, and EGAE
    trains as plain PPO does. With 12-step episodes the windows cut them: 12 of 16 steps are
    complete in the first rollout and 8 in the second, and the runs part."""
    config = ppo.Config(
        num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1, hidden_sizes=(8,),
        total_timesteps=2 * 32,
    )  # fmt: skip
    env, env_params = envs.make("Pendulum-v1")

    def trainer(config):
        return jax.jit(lambda params, key: ppo.train(config, env, params, key))

    plain, extended = trainer(config), trainer(config.replace(egae=True))
    key = jax.random.PRNGKey(0)
    whole = env_params.replace(max_steps_in_episode=8)
    state, metrics = extended(whole, key)
    plain_state, plain_metrics = plain(whole, key)
    np.testing.assert_array_equal(metrics["value_fraction"], 1.0)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for name, values in plain_metrics.items():
        np.testing.assert_allclose(metrics[name], values, rtol=1e-5, atol=1e-6, err_msg=name)

    cut = env_params.replace(max_steps_in_episode=12)
    state, metrics = extended(cut, key)
    plain_state, _ = plain(cut, key)
    np.testing.assert_allclose(metrics["value_fraction"], [0.75, 0.5])
    critic = state.params.net["params"]["critic_head"]["kernel"]
    assert not np.allclose(critic, plain_state.params.net["params"]["critic_head"]["kernel"])


def test_recurrent_ppo_takes_the_same_option():
    """ppo_rnn's ``egae`` as ppo.py's: plain PPO's training where every episode ends inside the
    window (8-step episodes, 16-step rollouts), the completed fractions 0.75 and 0.5 and other
    params where the windows cut them (12-step episodes)."""
    config = ppo_rnn.Config(
        num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1, cell_size=8,
        embed_size=8, hidden_sizes=(8,), total_timesteps=2 * 32,
    )  # fmt: skip
    env, env_params = envs.make("Pendulum-v1")

    def trainer(config):
        return jax.jit(lambda params, key: ppo_rnn.train(config, env, params, key))

    plain, extended = trainer(config), trainer(config.replace(egae=True))
    key = jax.random.PRNGKey(0)
    whole = env_params.replace(max_steps_in_episode=8)
    state, metrics = extended(whole, key)
    plain_state, _ = plain(whole, key)
    np.testing.assert_array_equal(metrics["value_fraction"], 1.0)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(plain_state), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    cut = env_params.replace(max_steps_in_episode=12)
    state, metrics = extended(cut, key)
    plain_state, _ = plain(cut, key)
    np.testing.assert_allclose(metrics["value_fraction"], [0.75, 0.5])
    leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(plain_state.params), strict=True)
    assert not all(np.allclose(x, y) for x, y in leaves)
