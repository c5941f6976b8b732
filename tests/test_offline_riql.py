"""RIQL: the Huber loss, the ensemble quantile (against NumPy's linear interpolation, as
torch.quantile), the value, critic and actor losses on hand-computed batches with the
stop-gradients that separate them, the authors' update order (every loss on the parameters from
before the step), the ensemble as one vmapped network and its EDAC-style initialization,
normalization by observations and next observations, jit/vmap agreement, deterministic training,
named errors, and learning from a generated Pendulum medium-replay dataset."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from runs import pendulum_medium_replay, quiet

from rljax.agents import riql
from rljax.data import Dataset
from rljax.runner.config import FieldOutOfRange, make_config
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

TINY = dict(batch_size=32, hidden_sizes=(16, 16), num_critics=3)
PRESET = Path(__file__).parents[1] / "configs" / "riql" / "pendulum.yaml"


def synthetic_dataset(n=64, obs_dim=3, action_dim=2, seed=0, action_scale=1.0) -> Dataset:
    """Random transitions in episodes of 8 steps; episode 3 terminates, the rest time out."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[7::8] = 1
    terminals[23], timeouts[23] = 1, 0
    return Dataset.from_arrays(
        observations=rng.normal(2.0, 3.0, (n, obs_dim)),
        actions=action_scale * rng.uniform(-1, 1, (n, action_dim)),
        rewards=rng.normal(size=n),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(-1.0, 1.0, (n, obs_dim)),
    )


def constant_net(params, value):
    """The same network made to output ``value`` everywhere: zero weights, last bias = value
    (for the ensemble, a (K, 1) array: one constant per member)."""
    params = jax.tree.map(jnp.zeros_like, params)
    layers = params["params"]
    layers = layers.get("VmapCritic_0", layers)  # the ensemble nests its layers one level deeper
    last = max((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    layers[last]["bias"] = jnp.broadcast_to(jnp.asarray(value), layers[last]["bias"].shape)
    return params


def batch_of(dataset: Dataset, n=None) -> dict:
    return {k: getattr(dataset, k)[:n] for k in riql.BATCH_KEYS}


def hand_batch():
    return {
        "observations": jnp.zeros((2, 3)),
        "actions": jnp.array([[0.0, 0.0], [1.0, -1.0]]),
        "rewards": jnp.array([1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0]),
        "next_observations": jnp.zeros((2, 3)),
    }


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def all_zero(tree) -> bool:
    return all(not np.asarray(leaf).any() for leaf in jax.tree.leaves(tree))


# --- The Huber loss ---


def test_huber_loss_by_hand():
    """H(u) = u^2 / (2b) where |u| < b, else |u| - b / 2, b = 1 / sigma^2."""
    u = jnp.array([-3.0, -0.5, 0.0, 0.5, 2.0])
    cases = {
        1.0: [2.5, 0.125, 0.0, 0.125, 1.5],  # b = 1
        0.5: [1.125, 0.03125, 0.0, 0.03125, 0.5],  # b = 4: all quadratic, u^2 / 8
        2.0: [2.875, 0.375, 0.0, 0.375, 1.875],  # b = 1/4: all linear, |u| - 1/8
    }
    for sigma, expected in cases.items():
        np.testing.assert_allclose(riql.huber_loss(u, sigma), expected, rtol=1e-6)
        b = 1 / sigma**2  # optax's Huber with delta = b, divided by b
        np.testing.assert_allclose(
            riql.huber_loss(u, sigma), optax.losses.huber_loss(u, delta=b) / b, rtol=1e-6
        )
    # The slope is u / b inside, the sign of u outside: never above 1, whatever sigma.
    slope = jax.vmap(jax.grad(riql.huber_loss), in_axes=(0, None))(u, 1.0)
    np.testing.assert_allclose(slope, [-1.0, -0.5, 0.0, 0.5, 1.0], rtol=1e-6)


# --- The ensemble quantile ---


def test_ensemble_quantile_by_hand():
    """Five critics [3, 1, 4, 1, 5], sorted [1, 1, 3, 4, 5]: q = 0.25 sits on order statistic
    1 (= 1); q = 0.3 at 1.2, so 1 + 0.2 (3 - 1) = 1.4; q = 0 the min, q = 1 the max."""
    q = jnp.array([3.0, 1.0, 4.0, 1.0, 5.0])[:, None]
    for quantile, expected in ((0.25, 1.0), (0.3, 1.4), (0.5, 3.0), (0.0, 1.0), (1.0, 5.0)):
        np.testing.assert_allclose(riql.ensemble_quantile(q, quantile), [expected], rtol=1e-6)


def test_ensemble_quantile_matches_numpy_linear():
    """Over axis 0 (the critics) of random (K, B) arrays, as np.quantile(method="linear") (the
    interpolation of torch.quantile, which the authors call); under jit, and under vmap over a
    traced quantile as a sweep runs it."""
    rng = np.random.default_rng(0)
    quantiles = np.array([0.0, 0.1, 0.25, 0.5, 0.77, 1.0], np.float32)
    for k in (1, 2, 3, 5, 10):
        q = rng.normal(size=(k, 7)).astype(np.float32)
        expected = np.quantile(q, quantiles, axis=0, method="linear")
        swept = jax.vmap(riql.ensemble_quantile, in_axes=(None, 0))(q, quantiles)
        np.testing.assert_allclose(swept, expected, rtol=1e-5, atol=1e-6)
        for i, quantile in enumerate(quantiles):
            got = jax.jit(riql.ensemble_quantile)(q, quantile)
            np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-6)


# --- The losses ---


def riql_params(config, **constants):
    """Params whose networks named in ``constants`` output those constants."""
    state = riql.init(config, synthetic_dataset(), jax.random.PRNGKey(0))
    nets = {k: constant_net(getattr(state.params, k), v) for k, v in constants.items()}
    return state, state.params.replace(**nets)


def test_value_loss_by_hand_and_its_target_is_constant():
    config = riql.Config(hidden_sizes=(4, 4), expectile=0.7)
    _, params = riql_params(config, value=0.5)
    target_q = jnp.array([1.0, 0.0])
    # u = target - V = [0.5, -0.5]: L = (0.7 * 0.25 + 0.3 * 0.25) / 2 = 0.125
    loss, v = riql.value_loss(params.value, target_q, hand_batch(), config)
    np.testing.assert_allclose(loss, 0.125, rtol=1e-6)
    np.testing.assert_allclose(v, [0.5, 0.5], rtol=1e-6)
    # dL/dv = mean(-2 w u) = (-0.7 + 0.3) / 2 = -0.2 through V's last bias ...
    value_grads, target_grads = jax.grad(
        lambda v, t: riql.value_loss(v, t, hand_batch(), config)[0], argnums=(0, 1)
    )(params.value, target_q)
    np.testing.assert_allclose(value_grads["params"]["Dense_2"]["bias"], [-0.2], rtol=1e-5)
    # ... and nothing into the quantile target: V's loss does not train the critics.
    np.testing.assert_array_equal(target_grads, 0.0)


def test_critic_loss_by_hand_clips_the_target_and_holds_it_constant():
    config = riql.Config(hidden_sizes=(4, 4), num_critics=3, gamma=0.9, sigma=1.0)
    critics = jnp.array([[0.5], [2.0], [-1.0]])  # Q_1, Q_2, Q_3
    _, params = riql_params(config, value=2.0, critic=critics)
    # y = [1 + 0.9 * 2, 2 + 0] = [2.8, 2]; u = y - Q_k:
    #   Q = 0.5: [2.3, 1.5] -> H = [1.8, 1.0];   Q = 2: [0.8, 0] -> [0.32, 0];
    #   Q = -1: [3.8, 3.0] -> [3.3, 2.5];   mean over 3 critics x 2 rows = 8.92 / 6
    loss, aux = riql.critic_loss(params.critic, params.value, hand_batch(), config)
    np.testing.assert_allclose(loss, 8.92 / 6, rtol=1e-6)
    np.testing.assert_allclose(aux["q_mean"], 0.5, rtol=1e-6)
    np.testing.assert_allclose(aux["linear"], 4 / 6, rtol=1e-6)  # |u| >= b = 1: 4 of 6

    # dL/dQ_k,i = -H'(u) / 6, H'(u) = sign(u) for |u| >= 1, else u: per member's last bias
    # [-(1 + 1), -(0.8 + 0), -(1 + 1)] / 6; and no gradient reaches V through the target.
    critic_grads, value_grads = jax.grad(
        lambda c, v: riql.critic_loss(c, v, hand_batch(), config)[0], argnums=(0, 1)
    )(params.critic, params.value)
    last = critic_grads["params"]["VmapCritic_0"]["Dense_2"]["bias"]
    np.testing.assert_allclose(last[:, 0], [-2 / 6, -0.8 / 6, -2 / 6], rtol=1e-5)
    assert all_zero(value_grads)

    # target_max = 2.5 clips y to [2.5, 2]: H = [1.5, 1.0], [0.125, 0], [3.0, 2.5]
    clipped = config.replace(target_max=2.5)
    loss, _ = riql.critic_loss(params.critic, params.value, hand_batch(), clipped)
    np.testing.assert_allclose(loss, 8.125 / 6, rtol=1e-6)
    # target_min = 3.0 lifts both to 3 (and target_max above it): u = 3 - Q_k
    lifted = config.replace(target_min=3.0)
    loss, _ = riql.critic_loss(params.critic, params.value, hand_batch(), lifted)
    expected = np.mean([2.5 - 0.5, 2.5 - 0.5, 0.5, 0.5, 4 - 0.5, 4 - 0.5])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_awr_weights():
    """min(exp(beta A), 100), with no gradient into A."""
    advantage = jnp.array([-2.0, 0.0, 1.0, 3.0])
    expected = [min(np.exp(2.0 * a), 100.0) for a in (-2.0, 0.0, 1.0, 3.0)]
    np.testing.assert_allclose(riql.awr_weights(advantage, 2.0), expected, rtol=1e-6)
    grad = jax.grad(lambda a: riql.awr_weights(a, 2.0).sum())(advantage)
    np.testing.assert_array_equal(grad, 0.0)


def test_actor_loss_by_hand_and_its_weights_are_constant():
    config = riql.Config(hidden_sizes=(4,), beta=3.0)
    _, params = riql_params(config, actor=jnp.array([0.5, -2.0]))  # pi = tanh([0.5, -2])
    batch = hand_batch()
    advantage = jnp.array([2.0, -1.0])
    pi = np.tanh([0.5, -2.0])
    bc = ((pi - np.asarray(batch["actions"])) ** 2).sum(-1)  # summed over action dimensions
    weight = np.minimum(np.exp(3.0 * np.array([2.0, -1.0])), 100.0)  # [100 (clipped), e^-3]
    loss, aux = riql.actor_loss(params.actor, advantage, batch, config)
    np.testing.assert_allclose(loss, (weight * bc).mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["bc_loss"], bc.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["weight"], weight.mean(), rtol=1e-5)
    # d/d(bias_j) of mean_i w_i sum_j (tanh(z_j) - a_ij)^2 = mean_i 2 w_i (pi_j - a_ij)(1 - pi_j^2)
    actor_grads, advantage_grads = jax.grad(
        lambda p, a: riql.actor_loss(p, a, batch, config)[0], argnums=(0, 1)
    )(params.actor, advantage)
    actions = np.asarray(batch["actions"])
    expected = (2 * weight[:, None] * (pi - actions) * (1 - pi**2)).mean(0)
    np.testing.assert_allclose(actor_grads["params"]["Dense_1"]["bias"], expected, rtol=1e-4)
    np.testing.assert_array_equal(advantage_grads, 0.0)  # nothing into V or the critics


# --- The update ---


def test_every_loss_uses_the_parameters_from_before_the_step():
    """The authors' order: V(s') for y and V(s) for the advantage are taken before V's step;
    the quantile comes from the target critics; then Qbar <- (1 - tau) Qbar + tau Q."""
    config = riql.Config(**TINY, normalize_obs=False, reward_preprocessing="none", tau=0.1)
    dataset = synthetic_dataset()
    state = riql.init(config, dataset, jax.random.PRNGKey(5))
    state = jax.jit(riql.update_on_batch)(config, state, batch_of(dataset, 32))[0]  # V != 0
    batch = batch_of(dataset.replace(observations=dataset.observations[::-1]), 32)
    new, metrics = jax.jit(riql.update_on_batch)(config, state, batch)
    old = state.params
    _, critic, _ = riql._networks(config, 2)
    q_all = critic.apply(state.target_critic, batch["observations"], batch["actions"])
    target_q = riql.ensemble_quantile(q_all, config.quantile)
    loss_v, v = riql.value_loss(old.value, target_q, batch, config)
    loss_q, _ = riql.critic_loss(old.critic, old.value, batch, config)
    loss_pi, _ = riql.actor_loss(old.actor, target_q - v, batch, config)
    np.testing.assert_allclose(metrics["value_loss"], loss_v, rtol=1e-5)
    np.testing.assert_allclose(metrics["critic_loss"], loss_q, rtol=1e-5)
    np.testing.assert_allclose(metrics["actor_loss"], loss_pi, rtol=1e-5)
    np.testing.assert_allclose(metrics["target_q_std"], np.asarray(q_all).std(0).mean(), rtol=1e-5)
    # The updated V would give other losses: the test can tell.
    stale_q, _ = riql.critic_loss(old.critic, new.params.value, batch, config)
    _, new_v = riql.value_loss(new.params.value, target_q, batch, config)
    stale_pi, _ = riql.actor_loss(old.actor, target_q - new_v, batch, config)
    assert abs(float(stale_q) - float(loss_q)) > 1e-6
    assert abs(float(stale_pi) - float(loss_pi)) > 1e-6
    # ... and the online critics another quantile target.
    online = riql.ensemble_quantile(
        critic.apply(old.critic, batch["observations"], batch["actions"]), config.quantile
    )
    assert abs(float(riql.value_loss(old.value, online, batch, config)[0]) - float(loss_v)) > 1e-9
    target = jax.tree.map(lambda q, t: 0.9 * t + 0.1 * q, new.params.critic, state.target_critic)
    assert_trees_close(new.target_critic, target, rtol=1e-5, atol=1e-7)
    assert int(new.step) == 2


def test_actor_learning_rate_follows_optax_cosine_decay():
    config = riql.Config(total_updates=100, actor_lr=1e-3)
    schedule = optax.cosine_decay_schedule(1e-3, 100)
    for step in (0, 1, 50, 99, 100, 150):
        np.testing.assert_allclose(riql.actor_learning_rate(config, step), schedule(step), 1e-5)


# --- Networks, normalization, rewards ---


def test_the_ensemble_is_one_vmapped_network_with_edac_init():
    """K critics as one network with parameters stacked on a leading axis of K, initialized
    independently: hidden biases 0.1, hidden kernels within 1/sqrt(fan_out), output layer
    within 3e-3 (the authors' VectorizedQ); with critic_init="lecun", flax's zero biases."""
    config = riql.Config(hidden_sizes=(16, 8), num_critics=5)
    critic = riql.init(config, synthetic_dataset(), jax.random.PRNGKey(0)).params.critic
    layers = critic["params"]["VmapCritic_0"]
    assert [layers[f"Dense_{i}"]["kernel"].shape for i in range(3)] == [
        (5, 5, 16), (5, 16, 8), (5, 8, 1),
    ]  # fmt: skip
    for i, fan_out in ((0, 16), (1, 8)):
        np.testing.assert_array_equal(layers[f"Dense_{i}"]["bias"], np.float32(0.1))
        kernel = np.asarray(layers[f"Dense_{i}"]["kernel"])
        assert np.abs(kernel).max() <= 1 / np.sqrt(fan_out)
        assert np.abs(kernel).max() > 0.8 / np.sqrt(fan_out)  # uniform over the whole range
        assert not np.allclose(kernel[0], kernel[1])  # independent members
    assert np.abs(np.asarray(layers["Dense_2"]["kernel"])).max() <= 3e-3
    assert np.abs(np.asarray(layers["Dense_2"]["bias"])).max() <= 3e-3
    obs, actions = jnp.ones((4, 3)), jnp.zeros((4, 2))
    q = riql._networks(config, 2)[1].apply(critic, obs, actions)
    assert q.shape == (5, 4) and len(set(np.round(np.asarray(q[:, 0]), 7))) == 5
    lecun = riql.Config(hidden_sizes=(16, 8), num_critics=5, critic_init="lecun")
    critic = riql.init(lecun, synthetic_dataset(), jax.random.PRNGKey(0)).params.critic
    np.testing.assert_array_equal(critic["params"]["VmapCritic_0"]["Dense_0"]["bias"], 0.0)


def test_observations_normalized_by_observations_and_next_observations():
    dataset = synthetic_dataset()  # next observations drawn around -1, observations around 2
    config = riql.Config(**TINY)
    params = riql.init(config, dataset, jax.random.PRNGKey(0)).params
    both = np.concatenate([np.asarray(dataset.observations), np.asarray(dataset.next_observations)])
    np.testing.assert_allclose(params.obs_mean, both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(params.obs_std, both.std(0) + 1e-3, rtol=1e-5)
    obs = np.asarray(dataset.observations)
    expected = riql.Actor(2, TINY["hidden_sizes"]).apply(
        params.actor, (obs - both.mean(0)) / (both.std(0) + 1e-3)
    )
    action = riql.act(config, params, dataset.observations, None, deterministic=True)
    np.testing.assert_allclose(action, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(action, riql.act(config, params, dataset.observations, None))
    raw = riql.init(riql.Config(**TINY, normalize_obs=False), dataset, jax.random.PRNGKey(0))
    np.testing.assert_allclose(raw.params.obs_mean, 0)
    np.testing.assert_allclose(raw.params.obs_std, 1)


def test_reward_preprocessing():
    dataset = synthetic_dataset()
    state = riql.init(riql.Config(**TINY), dataset, jax.random.PRNGKey(0))
    returns = riql.episode_returns(dataset.rewards, dataset.terminals, dataset.timeouts)
    assert len(returns) == 8
    np.testing.assert_allclose(state.reward_scale, 1000 / (returns.max() - returns.min()), 1e-5)
    antmaze = riql.init(riql.Config(**TINY, reward_preprocessing="antmaze"), dataset, state.rng)
    assert (float(antmaze.reward_scale), float(antmaze.reward_shift)) == (1.0, -1.0)


# --- Transforms and determinism ---


def test_update_agrees_under_jit_and_vmap():
    """A sweep over the traced fields (quantile, sigma, beta, expectile, the target clip) gives
    each member what a single config gives."""
    dataset = synthetic_dataset()
    batch = batch_of(dataset, 32)
    configs = [
        riql.Config(**TINY),
        riql.Config(
            **TINY, quantile=0.6, sigma=0.3, beta=10.0, expectile=0.9, target_min=-0.5,
            target_max=0.5, actor_lr=1e-3,
        ),
    ]  # fmt: skip
    state = riql.init(configs[0], dataset, jax.random.PRNGKey(6))
    state = jax.jit(riql.update_on_batch)(configs[0], state, batch)[0]
    singles = [jax.jit(riql.update_on_batch)(c, state, batch) for c in configs]
    nojit = riql.update_on_batch(configs[1], state, batch)
    assert_trees_close(nojit, singles[1], rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(riql.update_on_batch, in_axes=(0, None, None)))(stacked, state, batch)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0][1]["critic_loss"], singles[1][1]["critic_loss"])


def test_train_is_finite_and_deterministic():
    dataset = synthetic_dataset()
    config = riql.Config(**TINY, total_updates=300)
    run = jax.jit(lambda key: riql.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(7))
    again, _ = run(jax.random.PRNGKey(7))
    other, _ = run(jax.random.PRNGKey(8))
    assert int(state.step) == 300
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
    assert {"value_loss", "critic_loss", "actor_loss", "grad_norm", "q_mean"} <= set(metrics)
    assert_trees_close(state, again, rtol=0, atol=0)
    assert not np.allclose(state.params.actor["params"]["Dense_0"]["kernel"],
                           other.params.actor["params"]["Dense_0"]["kernel"])  # fmt: skip
    assert float(metrics["actor_lr"][-1]) < float(metrics["actor_lr"][0])


# --- Named errors ---


def test_init_names_bad_datasets():
    config = riql.Config(**TINY)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        riql.init(config, synthetic_dataset(action_scale=2.0), jax.random.PRNGKey(0))
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        riql.init(config, images, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: riql.init(config, d, jax.random.PRNGKey(0)))(synthetic_dataset())
    flat = synthetic_dataset().replace(rewards=jnp.zeros(64))
    with pytest.raises(ValueError, match="reward_preprocessing"):
        riql.init(config, flat, jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "field, value",
    [
        ("quantile", 1.5), ("quantile", -0.1), ("sigma", 0.0), ("num_critics", 0),
        ("expectile", 1.0), ("beta", -1.0), ("tau", 0.0), ("critic_init", "xavier"),
        ("reward_preprocessing", "scale"), ("critic_lr", 0.0),
    ],
)  # fmt: skip
def test_bad_config_values_are_named(field, value):
    with pytest.raises(FieldOutOfRange, match=field):
        make_config(riql.Config, {field: value})


def test_target_clip_must_be_an_interval():
    """check() (which the runner and init call) refuses target_min >= target_max; traced
    values pass, so a sweep still vmaps."""
    riql.check(riql.Config())
    for low, high in ((5.0, 5.0), (10.0, -10.0)):
        bad = make_config(riql.Config, {"target_min": low, "target_max": high})
        with pytest.raises(ValueError, match="target_min"):
            riql.check(bad)
        with pytest.raises(ValueError, match="target_min"):
            riql.init(bad, synthetic_dataset(), jax.random.PRNGKey(0))
    jax.jit(lambda low: riql.check(riql.Config(target_min=low)) or low)(5000.0)


# --- Learning from a generated Pendulum dataset ---


@pytest.mark.slow
def test_riql_beats_bc_on_pendulum_medium_replay(tmp_path):
    """RIQL with the Pendulum preset (configs/riql/pendulum.yaml) reaches a clearly higher D4RL
    normalized score than BC on the generated medium-replay data (made as in
    tests/test_offline_learning.py: the behaviour SAC stopped at 48k steps, ~23k transitions).

    Budget: 3 seeds (vmapped), 64x64 networks, 5000 updates, 20 evaluation episodes per seed.
    Measured when this was written: RIQL -14.2, 10.8, -34.7 (mean -12.7) against BC -46.0,
    -37.0, -54.9 (mean -46.0), a margin of 33; the test asks for 10, which leaves room for seed
    and platform noise. With the authors' EDAC-style critic init instead (critic_init="edac",
    the default) RIQL scored -91 over 5 seeds, below BC: see the preset's comment for why.
    """
    path, metadata = pendulum_medium_replay(tmp_path)
    preset = yaml.safe_load(PRESET.read_text())
    assert preset["env"] == metadata["env"] and preset["agent"]["total_updates"] == 5000

    def scores(algo, agent):
        spec = RunSpec(
            algo=algo, env=metadata["env"], agent=agent, seeds=3, dataset=str(path),
            eval_episodes=20, chunk_updates=2500,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc = scores("bc", {"total_updates": 5000, "hidden_sizes": [64, 64]})
    riql_scores = scores("riql", preset["agent"])
    assert riql_scores.mean() >= bc.mean() + 10, (bc, riql_scores)
