"""PPO: GAE and the loss against hand computations, determinism, sweeps, act, learning; the
PDPPO authors' options: one optimizer per network, Monte-Carlo returns (by hand in
tests/test_pdppo.py, whose copy is this text: tests/test_inlined_copies.py)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from rljax import envs
from rljax.agents import ppo
from rljax.runner import config as config_lib

REPO = Path(__file__).resolve().parents[1]

# 8 updates of 4 envs x 16 steps.
TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=8 * 64)


# --- GAE (the reference loop, over every copy: tests/test_inlined_copies.py) ---


def test_gae_bootstraps_through_truncation_exactly():
    """Constant reward r and exact values V = r / (1 - gamma): with truncations (mid-rollout and
    at its end) every advantage is 0. A termination at the last step gives A = r - V there.
    PureJaxRL's convention (truncation as termination) biases the truncated steps to r - V."""
    r, gamma, lam, steps = 1.0, 0.9, 0.95, 10
    v = r / (1 - gamma)
    rewards, values = np.full((steps, 1), r), np.full((steps, 1), v)
    truncated, terminated = np.zeros((steps, 1), bool), np.zeros((steps, 1), bool)
    truncated[[4, steps - 1]] = True

    advantages, targets = ppo.gae(rewards, values, values, terminated, truncated, gamma, lam)
    np.testing.assert_allclose(advantages, 0.0, atol=1e-5)
    np.testing.assert_allclose(targets, v, rtol=1e-6)

    terminated_at_end = np.zeros_like(terminated)
    terminated_at_end[-1] = True
    truncated_mid = np.zeros_like(truncated)
    truncated_mid[4] = True
    advantages, _ = ppo.gae(rewards, values, values, terminated_at_end, truncated_mid, gamma, lam)
    np.testing.assert_allclose(advantages[-1], r - v, rtol=1e-6)
    # The trace carries the terminal error back to the truncation, and no further.
    expected = (r - v) * (gamma * lam) ** np.arange(4, -1, -1)
    np.testing.assert_allclose(advantages[5:, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(advantages[:5], 0.0, atol=1e-5)

    purejaxrl, _ = ppo.gae(rewards, values, values, truncated, truncated, gamma, lam)
    np.testing.assert_allclose(purejaxrl[[4, steps - 1], 0], r - v, rtol=1e-6)
    # ... and the bias leaks back along the trace to the steps before each truncation.
    np.testing.assert_allclose(purejaxrl[:5, 0], expected, rtol=1e-6)


# --- Loss ---


def test_ppo_loss_matches_a_hand_computation():
    """Each part of the loss on five samples covering: ratio above 1 + eps with A > 0 (clipped)
    and A < 0 (not), below 1 - eps with A < 0 (clipped) and A > 0 (not), inside the range; the
    value loss with value clipping chosen and not chosen."""
    config = ppo.Config(clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
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
    # min(rho A, clip(rho) A), sample by sample.
    surrogate = [1.2 * a[0], 1.5 * a[1], 0.8 * a[2], 0.5 * a[3], 1.1 * a[4]]
    # Clipped values 1.2, 1.2, 0.1, -0.2, 0.0; the larger squared error of the two.
    squared_errors = [0.8**2, 0.5**2, 0.9**2, 0.8**2, 0.0]
    expected = {
        "policy_loss": -np.mean(surrogate),
        "value_loss": 0.5 * np.mean(squared_errors),
        "entropy": 0.5,
        "approx_kl": np.mean((ratio - 1) - np.log(ratio)),
        "clip_fraction": 0.8,
    }
    expected_loss = expected["policy_loss"] + 0.5 * expected["value_loss"] - 0.01 * 0.5

    inputs = [jnp.asarray(x, jnp.float32) for x in (log_prob, old_log_prob, raw_advantages)]
    inputs += [jnp.asarray(x, jnp.float32) for x in (value, old_value, targets, entropy)]
    for fn in (ppo.ppo_loss, jax.jit(ppo.ppo_loss)):
        loss, parts = fn(*inputs, config)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
        for name, want in expected.items():
            np.testing.assert_allclose(parts[name], want, rtol=1e-5, err_msg=name)

    # Clipped samples pass no gradient to the policy.
    grad = jax.grad(lambda lp: ppo.ppo_loss(lp, *inputs[1:], config)[0])(inputs[0])
    np.testing.assert_array_equal(np.asarray(grad)[[0, 2]], 0.0)
    assert (np.asarray(grad)[[1, 3, 4]] != 0).all()


# --- The contract ---


def jitted_train(env_name="CartPole-v1"):
    """train(config, key) -> (state, metrics), jitted, on the env closed over."""
    env, env_params = envs.make(env_name)
    return jax.jit(lambda config, key: ppo.train(config, env, env_params, key))


def test_train_is_deterministic_and_uses_its_key():
    """Two runs with one key agree bit for bit (state and metrics); another key differs."""
    train, config, key = jitted_train(), ppo.Config(**TINY), jax.random.PRNGKey(0)
    first, second = train(config, key), train(config, key)
    assert jax.tree.structure(first) == jax.tree.structure(second)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(x, y)
    assert np.isfinite(first[1]["loss"]).all()
    _, other = train(config, jax.random.PRNGKey(1))
    assert not np.array_equal(other["loss"], first[1]["loss"])


def train_members(configs, env, env_params, keys):
    """``jax.vmap(ppo.train)`` over stacked configs and keys, with each member initialized in
    turn, as the runner does: a vmapped orthogonal init is a batched LAPACK QR that can
    deadlock on a 2-core CPU (jaxlib 0.10.2)."""
    states = jax.lax.map(lambda ck: ppo.init(ck[0], env, env_params, ck[1]), (configs, keys))

    def run(config, state):
        def one_update(s, _):
            return ppo.update(config, env, env_params, s)

        return jax.lax.scan(one_update, state, None, config.num_updates)

    return jax.vmap(run)(configs, states)


def test_vmap_over_configs_equals_separate_runs():
    """A stacked Config of two learning rates, vmapped, reproduces the two single runs; the lr
    is traced, so both configs lower to the same program."""
    train, key = jitted_train(), jax.random.PRNGKey(0)
    configs = [ppo.Config(**TINY, lr=1e-3), ppo.Config(**TINY, lr=3e-3)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    env, env_params = envs.make("CartPole-v1")
    keys = jnp.stack([key, key])
    sweep = jax.jit(lambda c, k: train_members(c, env, env_params, k))(stacked, keys)
    for i, config in enumerate(configs):
        single = train(config, key)
        member = jax.tree.map(lambda x, i=i: x[i], sweep)
        # atol: the policy loss is a mean of normalized advantages, about 1e-4 here.
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), member, single
        )
    assert not np.allclose(sweep[1]["loss"][0], sweep[1]["loss"][1])
    texts = [jax.jit(train).lower(config, key).as_text() for config in configs]
    assert texts[0] == texts[1]


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])
def test_act_deterministic_is_the_mode(env_name):
    """act(deterministic=True) is the argmax of the logits (discrete) or the mean (continuous);
    otherwise a sample from the same distribution."""
    env, env_params = envs.make(env_name)
    config = ppo.Config(**TINY)
    params = ppo.init(config, env, env_params, jax.random.PRNGKey(0)).params
    # Perturb the (near-zero) initial actor head, so the actions differ between observations.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    params = jax.tree.unflatten(treedef, leaves)
    obs = jax.random.normal(jax.random.PRNGKey(2), (64, *env.observation_space(env_params).shape))
    pi, _ = ppo._network(config, env.action_space(env_params)).apply(params.net, obs)
    key = jax.random.PRNGKey(3)

    action = ppo.act(config, params, obs, key, deterministic=True)
    if env_name == "CartPole-v1":
        expected = np.argmax(pi.logits, axis=-1)
        assert len(np.unique(expected)) == 2
    else:
        expected = pi.loc
    np.testing.assert_allclose(action, expected, rtol=1e-6)
    np.testing.assert_allclose(ppo.act(config, params, obs, key), pi.sample(seed=key), rtol=1e-6)


@pytest.mark.parametrize("env_name", ["CartPole-v1", "Pendulum-v1"])
def test_rollout_noise_drawn_ahead_samples_as_the_distribution(env_name):
    """The rollout draws its action noise before its loop: ``_sample(pi, _action_noise(key))`` is
    exactly ``pi.sample(seed=key)`` (Gumbel argmax over logits; mean + std * normal), jitted;
    inside the rollout's scan XLA may fuse a continuous action's multiply-add differently (float
    rounding: up to 2.4e-7 measured), discrete actions stay exact."""
    env, env_params = envs.make(env_name)
    config = ppo.Config(**TINY)
    params = ppo.init(config, env, env_params, jax.random.PRNGKey(0)).params
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(
        treedef, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )
    network = ppo._network(config, env.action_space(env_params))
    obs = jax.random.normal(jax.random.PRNGKey(2), (256, *env.observation_space(env_params).shape))

    @jax.jit
    def both(key):
        pi, _ = network.apply(params.net, obs)
        return pi.sample(seed=key), ppo._sample(pi, ppo._action_noise(key, params, len(obs)))

    for seed in range(3):
        expected, drawn_ahead = both(jax.random.PRNGKey(seed))
        assert drawn_ahead.dtype == expected.dtype
        np.testing.assert_array_equal(drawn_ahead, expected)


def test_init_rejects_bad_minibatches_and_image_observations():
    """init names num_minibatches when it does not divide num_envs * num_steps, and asks for
    flattening when observations are not vectors."""
    env, env_params = envs.make("CartPole-v1")
    config = ppo.Config(num_envs=4, num_steps=10, num_minibatches=3)
    with pytest.raises(ValueError, match=r"num_minibatches=3 must divide .* = 40"):
        ppo.init(config, env, env_params, jax.random.PRNGKey(0))
    env, env_params = envs.make("Breakout-MinAtar")
    with pytest.raises(ValueError, match=r"vector observations, got shape \(10, 10, 4\).*flatten"):
        ppo.init(ppo.Config(), env, env_params, jax.random.PRNGKey(0))
    env, env_params = envs.make("Breakout-MinAtar", flatten_obs=True)
    ppo.init(ppo.Config(), env, env_params, jax.random.PRNGKey(0))


# --- The PDPPO authors' options ---


@pytest.mark.parametrize(
    "env_name, value_weighting", [("Pendulum-v1", "ggd"), ("CartPole-v1", "uniform")]
)
def test_separate_optimizers_lay_out_one_vector_per_network(env_name, value_weighting):
    """With separate_optimizers the weights are two flat vectors: the actor's layers and
    log_std, the critic's layers and the beta-head; back to the tree exactly. Without, one."""
    env, env_params = envs.make(env_name)
    config = ppo.Config(**TINY, value_weighting=value_weighting)
    net = ppo.init(config, env, env_params, jax.random.PRNGKey(0)).params.net
    layers = net["params"]
    actor = [name for name in layers if name.startswith("actor") or name == "log_std"]

    def size(names):
        return sum(x.size for name in names for x in jax.tree.leaves(layers[name]))

    vectors, unravel = ppo._flatten(config.replace(separate_optimizers=True), net)
    assert set(vectors) == {"actor", "critic"}
    assert vectors["actor"].size == size(actor)
    assert vectors["critic"].size == size(set(layers) - set(actor))
    assert ("log_std" in actor) == (env_name == "Pendulum-v1")
    assert ("beta_head" in layers) == (value_weighting == "ggd")
    jax.tree.map(np.testing.assert_array_equal, unravel(vectors), net)
    vector, _ = ppo._flatten(config, net)
    assert vector.shape == (size(layers),)


def test_separate_optimizers_step_each_network_at_its_rate():
    """One update of one full-batch epoch from a fresh Adam, whose first step moves a weight by
    lr |g| / (|g| + 1e-5): the largest move in the actor is lr, in the critic critic_lr. A zero
    rate freezes its network and not the other. One optimizer moves both at lr and ignores
    critic_lr, bit for bit."""
    env, env_params = envs.make("CartPole-v1")

    @jax.jit
    def one_update(config):
        state = ppo.init(config, env, env_params, jax.random.PRNGKey(0))
        return (state, *ppo.update(config, env, env_params, state))

    def moves(config):
        """The largest move of a weight in the actor and in the critic; the update and metrics."""
        state, updated, metrics = one_update(config)
        layers = state.params.net["params"]
        change = jax.tree.map(lambda x, y: np.abs(x - y).max(), layers,
                              updated.params.net["params"])  # fmt: skip
        largest = {
            network: max(
                max(jax.tree.leaves(change[name])) for name in layers if name.startswith(network)
            )
            for network in ("actor", "critic")
        }
        return largest, updated, metrics

    base = ppo.Config(**TINY | dict(num_minibatches=1, update_epochs=1), anneal_lr=False)
    separate = base.replace(separate_optimizers=True)
    largest, _, metrics = moves(separate.replace(lr=1e-3, critic_lr=1e-2))
    np.testing.assert_allclose([largest["actor"], largest["critic"]], [1e-3, 1e-2], rtol=1e-2)
    np.testing.assert_allclose([metrics["lr"], metrics["critic_lr"]], [1e-3, 1e-2])
    largest, _, _ = moves(separate.replace(critic_lr=0.0))
    assert largest["actor"] > 0 and largest["critic"] == 0
    largest, _, _ = moves(separate.replace(lr=0.0))
    assert largest["actor"] == 0 and largest["critic"] > 0

    largest, single, _ = moves(base.replace(lr=1e-3, critic_lr=1e-2))
    np.testing.assert_allclose([largest["actor"], largest["critic"]], [1e-3, 1e-3], rtol=1e-2)
    _, other, _ = moves(base.replace(lr=1e-3, critic_lr=5e-2))
    jax.tree.map(np.testing.assert_array_equal, single, other)


def test_bad_advantage_estimator_raises():
    """An unknown estimator, and EGAE (which extends GAE) with Monte-Carlo returns, are named."""
    env, env_params = envs.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"advantage_estimator='td' is not allowed"):
        ppo.init(ppo.Config(advantage_estimator="td"), env, env_params, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"egae=True .* needs advantage_estimator='gae'"):
        config = ppo.Config(egae=True, advantage_estimator="monte_carlo")
        ppo.init(config, env, env_params, jax.random.PRNGKey(0))


# --- Learning ---


def final_returns(config, env, env_params, num_seeds, last=20):
    """Per seed, the mean return of episodes finished in the last `last` updates."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    configs = jax.tree.map(lambda *x: jnp.stack(x), *[config] * num_seeds)
    train = jax.jit(lambda c, k: train_members(c, env, env_params, k)[1])
    returns = np.asarray(train(configs, keys)["episode_return"])
    return np.nanmean(returns[:, -last:], axis=1)


@pytest.mark.slow
def test_ppo_solves_cartpole():
    """PureJaxRL's CartPole config (5e5 steps) reaches a mean return >= 475 over 4 seeds."""
    env, env_params = envs.make("CartPole-v1")
    returns = final_returns(ppo.Config(), env, env_params, num_seeds=4)
    assert returns.mean() >= 475, returns


@pytest.mark.slow
def test_ppo_learns_pendulum():
    """Continuous actions: the Pendulum preset lifts returns from about -1230 (random) to
    > -400 within its 2e5 steps."""
    preset = yaml.safe_load((REPO / "configs" / "ppo" / "pendulum.yaml").read_text())
    env, env_params = envs.make(**preset["env"])
    config = config_lib.make_config(ppo.Config, preset["agent"])
    returns = final_returns(config, env, env_params, num_seeds=4, last=10)
    assert returns.mean() > -400, returns


@pytest.mark.slow
def test_ppo_learns_cartpole_with_the_pdppo_authors_options():
    """Monte-Carlo returns (not bootstrapped at the rollout's cut) and one Adam per network
    (critic_lr 1e-3), otherwise PureJaxRL's config, 1e5 steps: measured final returns 277, 381,
    450, 402 (mean 378; the default config reaches 257 at this budget, a random policy about
    22), in 32 s for the 4 seeds on 2 CPU cores. Asserts a mean above 250."""
    env, env_params = envs.make("CartPole-v1")
    config = ppo.Config(
        advantage_estimator="monte_carlo", separate_optimizers=True, critic_lr=1e-3,
        total_timesteps=100_000,
    )  # fmt: skip
    returns = final_returns(config, env, env_params, num_seeds=4)
    assert returns.mean() > 250, returns
