"""LPO / TA-LPO: the drift is valid for any weights, zero weights are PPO, the ES maximizes,
a population of drifts is one vmapped program, and LPO at PPO's drift solves CartPole."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import envs
from rljax.agents import lpo, ppo
from rljax.meta import es

# 8 updates of 4 envs x 16 steps.
TINY = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, total_timesteps=8 * 64)


def random_drift(config, seed, scale=3.0):
    """Random weights, scaled up from DPO's init so the network's output is far from 0."""
    return jax.tree.map(lambda w: scale * w, lpo.init_drift(config, jax.random.PRNGKey(seed)))


# --- The drift ---


@pytest.mark.parametrize("ta_lpo", [False, True])
@pytest.mark.parametrize("ppo_init", [True, False])
def test_drift_is_valid_for_random_weights(ta_lpo, ppo_init):
    """For random weights: D = 0 and dD/dratio = 0 at ratio 1 (for every advantage and training
    progress), also at ratio 1 +- 1e-6; D >= 0 on a grid of ratios and advantages. The test
    could fail: D is positive somewhere and differs from PPO's drift, and TA-LPO's drift
    changes with the training progress."""
    config = lpo.Config(ta_lpo=ta_lpo, ppo_init=ppo_init, drift_hidden=32)
    advantages = jnp.linspace(-3.0, 3.0, 13)
    ratios = jnp.concatenate([jnp.linspace(0.05, 3.0, 60), jnp.array([1 - 1e-6, 1 + 1e-6])])
    ratio_grid, advantage_grid = (x.ravel() for x in jnp.meshgrid(ratios, advantages))
    ppo_drift = lpo.drift(ratio_grid, advantage_grid, 0.0, lpo.init_drift(config), config)

    @jax.jit
    def evaluate(params, progress):
        def d(ratio, advantage):
            return lpo.drift(ratio, advantage, progress, params, config)

        at_one = jax.vmap(d, in_axes=(None, 0))(1.0, advantages)
        slope = jax.vmap(jax.grad(d), in_axes=(None, 0))(1.0, advantages)
        return at_one, slope, d(ratio_grid, advantage_grid)

    for seed in range(3):
        params = random_drift(config, seed)
        for progress in (0.0, 0.3, 1.0):
            at_one, slope, values = evaluate(params, progress)
            np.testing.assert_array_equal(at_one, 0.0)
            np.testing.assert_array_equal(slope, 0.0)
            np.testing.assert_array_equal(values[np.abs(ratio_grid - 1) < 1e-5], 0.0)
            assert (values >= 0).all()
            assert values.max() > 0.1
            assert np.abs(values - ppo_drift).max() > 0.1
        if ta_lpo:
            early, late = (evaluate(params, p)[2] for p in (0.0, 1.0))
            assert np.abs(early - late).max() > 0.01


def test_zero_weights_give_ppos_clipped_objective():
    """With zero weights the drift is ReLU(D_PPO - 1e-4), D_PPO = ReLU((rho - clip(rho)) A), by
    hand on the five samples of test_ppo; the loss is PPO's up to that 1e-4 offset and its
    gradient (policy and value) is PPO's exactly."""
    config = lpo.Config(clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
    assert config.drift_params is None
    zeros = lpo.init_drift(config)
    assert zeros["w1"].shape == (8, 128) and zeros["w2"].shape == (128,)
    ratio = np.array([1.5, 1.5, 0.5, 0.5, 1.1])
    advantages = np.array([2.0, -1.0, -3.0, 2.0, 1.0])
    # (rho - clip(rho)) A = 0.3 * 2, 0.3 * -1, -0.3 * -3, -0.3 * 2, 0.
    expected = np.array([0.6, 0.0, 0.9, 0.0, 0.0])
    drift = lpo.drift(jnp.asarray(ratio), jnp.asarray(advantages), 0.0, zeros, config)
    np.testing.assert_allclose(drift, np.maximum(expected - 1e-4, 0), rtol=1e-6, atol=1e-7)

    old_log_prob = np.array([-1.0, -0.5, -2.0, -0.3, -1.2])
    inputs = [old_log_prob + np.log(ratio), old_log_prob, advantages]
    inputs += [[1.5, 1.5, 0.1, -0.5, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, -1.0, 0.0]]
    inputs += [[1.0, 0.5, 0.2, 0.3, 0.5]]
    inputs = [jnp.asarray(x, jnp.float32) for x in inputs]

    def lpo_loss(log_prob, value):
        return lpo.lpo_loss(log_prob, *inputs[1:3], value, *inputs[4:], 0.0, zeros, config)

    def ppo_loss(log_prob, value):
        return ppo.ppo_loss(log_prob, *inputs[1:3], value, *inputs[4:], config)

    (loss, parts), grads = jax.value_and_grad(lpo_loss, (0, 1), has_aux=True)(*inputs[0:4:3])
    (want, want_parts), want_grads = jax.value_and_grad(ppo_loss, (0, 1), has_aux=True)(
        *inputs[0:4:3]
    )
    # Two of five samples are clipped (normalized advantages keep the signs): offset -2e-4 / 5.
    np.testing.assert_allclose(loss - want, -2e-4 / 5, atol=1e-6)
    for name in ("value_loss", "entropy", "approx_kl", "clip_fraction"):
        np.testing.assert_allclose(parts[name], want_parts[name], rtol=1e-6, err_msg=name)
    for got, expected_grad in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, expected_grad, rtol=1e-5, atol=1e-7)


def test_init_rejects_drift_weights_of_the_wrong_shape():
    """TA-LPO weights (16 inputs) given to LPO (8), or weights that are not a dict, are named."""
    env, env_params = envs.make("CartPole-v1")
    ta_weights = lpo.init_drift(lpo.Config(ta_lpo=True))
    for bad in (ta_weights, [0.0, 1.0]):
        config = lpo.Config(**TINY, drift_params=bad)
        with pytest.raises(ValueError, match=r"drift_params must have shapes .*'w1': \(8, 128\)"):
            lpo.init(config, env, env_params, jax.random.PRNGKey(0))
    lpo.init(lpo.Config(**TINY, ta_lpo=True, drift_params=ta_weights), env, env_params,
             jax.random.PRNGKey(0))  # fmt: skip


# --- The meta-trainer ---


def test_es_generations_improve_a_quadratic():
    """es.evolve maximizes: on f(x) = -|x - t|^2 over a pytree, the population's fitness
    rises from generation 1 to 10, and the mean ends nearer t (distance 4 at the start); a
    single es.generation returns the fitness its fitness_fn computed."""
    target = {"a": jnp.array([1.0, -2.0]), "b": jnp.ones((2, 2))}
    start = jax.tree.map(jnp.zeros_like, target)

    def distance(x):
        return sum(
            jnp.sum((u - v) ** 2) for u, v in zip(*map(jax.tree.leaves, (x, target)), strict=True)
        )

    fitness = jax.jit(lambda population, rng: -jax.vmap(distance)(population))
    mean, history = es.evolve(fitness, start, jax.random.PRNGKey(0), 10, 8, lr=0.05, sigma=0.1)
    assert history.shape == (10, 8)
    assert history[-1].mean() > history[0].mean() + 1.0, history.mean(1)
    assert distance(mean) < distance(start) - 1.0

    strategy = es.open_es(start, 8)
    state = es.init(strategy, start, jax.random.PRNGKey(1))
    state, fit = es.generation(strategy, state, jax.random.PRNGKey(2), fitness)
    assert fit.shape == (8,) and (fit < 0).all()
    with pytest.raises(ValueError, match="population_size=3 must be even"):
        es.open_es(start, 3)


def test_a_population_of_drifts_is_one_vmapped_program():
    """TA-LPO: training vmapped over two random drifts (members initialized with lax.map, as
    the meta-trainer does) reproduces the two single runs, which differ."""
    env, env_params = envs.make("CartPole-v1")
    config = lpo.Config(**TINY, ta_lpo=True, drift_hidden=16)
    drifts = [random_drift(config, seed, scale=1.0) for seed in (0, 1)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *drifts)
    key = jax.random.PRNGKey(0)

    def train_population(drift_params, keys):
        states = jax.lax.map(lambda k: lpo.init(config, env, env_params, k), keys)

        def run(params, state):
            member = config.replace(drift_params=params)
            return jax.lax.scan(
                lambda s, _: lpo.update(member, env, env_params, s), state, None,
                config.num_updates,
            )  # fmt: skip

        return jax.vmap(run)(drift_params, states)

    population = jax.jit(train_population)(stacked, jnp.stack([key, key]))
    train = jax.jit(lambda c, k: lpo.train(c, env, env_params, k))
    for i, params in enumerate(drifts):
        single = train(config.replace(drift_params=params), key)
        member = jax.tree.map(lambda x, i=i: x[i], population)
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), member, single
        )
    metrics = population[1]
    assert all(np.isfinite(v).all() for k, v in metrics.items() if not k.startswith("episode"))
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])


# --- Learning ---


@pytest.mark.slow
def test_lpo_at_ppos_drift_solves_cartpole():
    """LPO with zero drift weights (its default, PPO's drift) and PureJaxRL's CartPole config
    (5e5 steps) reaches a mean return >= 475 over 4 seeds, PPO's threshold in test_ppo."""
    env, env_params = envs.make("CartPole-v1")
    config = lpo.Config()
    keys = jax.random.split(jax.random.PRNGKey(0), 4)

    def train_seeds(keys):
        states = jax.lax.map(lambda k: lpo.init(config, env, env_params, k), keys)
        run = jax.vmap(
            lambda s: jax.lax.scan(
                lambda s, _: lpo.update(config, env, env_params, s), s, None, config.num_updates
            )[1]
        )
        return run(states)["episode_return"]

    returns = np.asarray(jax.jit(train_seeds)(keys))
    final = np.nanmean(returns[:, -20:], axis=1)
    assert final.mean() >= 475, final
