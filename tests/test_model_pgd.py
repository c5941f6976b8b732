"""PGD: the EDM preconditioning, loss weight and loss against the formulas, the denoiser's
learning-rate schedule against optax's, the sampler's noise schedule, churn and guidance
schedule, guidance with a zero coefficient being the unguided sampler exactly, the policy score
by hand, the window cutting and rows by hand, the batch composition, the learners' steps
against td3_bc.py's and iql.py's, a tiny denoiser reproducing a two-way trajectory mixture,
jit/vmap agreement over guidance_coef with determinism, and named errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax.agents import iql, pgd, td3_bc
from rljax.data import Dataset

TINY = dict(
    trajectory_length=8, window_stride=4, unet_features=16, unet_blocks=2, model_batch_size=16,
    num_sampling_steps=8, num_synthetic_trajectories=16, sampling_batch=8, batch_size=32,
    synthetic_batch_size=24, hidden_sizes=(16, 16),
)  # fmt: skip


def episodes_dataset(n_episodes=12, length=10, obs_dim=3, action_dim=2, seed=0) -> Dataset:
    """Random rows in episodes of ``length`` that time out; actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    timeouts = np.zeros(n, np.float32)
    timeouts[length - 1 :: length] = 1
    return Dataset.from_arrays(
        observations=rng.normal(1.0, 2.0, (n, obs_dim)),
        actions=rng.uniform(-1, 1, (n, action_dim)),
        rewards=rng.normal(size=n),
        terminals=np.zeros(n),
        timeouts=timeouts,
        next_observations=rng.normal(1.0, 2.0, (n, obs_dim)),
    )


# --- EDM ---


def test_edm_preconditioning_and_loss_weight():
    """c_skip, c_out, c_in, c_noise and lambda as EDM's Table 1 with sigma_d = 1; lambda is
    1 / c_out^2, so the weighted loss is the unit-variance loss of F's target."""
    sigma = np.array([0.002, 0.1, 0.5, 1.0, 3.0, 80.0])
    np.testing.assert_allclose(pgd.c_skip(sigma), 1 / (sigma**2 + 1), rtol=1e-6)
    np.testing.assert_allclose(pgd.c_out(sigma), sigma / np.sqrt(sigma**2 + 1), rtol=1e-6)
    np.testing.assert_allclose(pgd.c_in(sigma), 1 / np.sqrt(sigma**2 + 1), rtol=1e-6)
    np.testing.assert_allclose(pgd.c_noise(sigma), np.log(sigma) / 4, rtol=1e-6)
    np.testing.assert_allclose(pgd.loss_weight(sigma), (sigma**2 + 1) / sigma**2, rtol=1e-6)
    np.testing.assert_allclose(pgd.loss_weight(sigma) * pgd.c_out(sigma) ** 2, 1.0, rtol=1e-6)


def test_edm_loss_against_the_formula():
    """edm_loss = mean lambda(sigma) (c_skip x_n + c_out F(c_in x_n, ln(sigma)/4) - x)^2 with
    x_n = x + sigma eps, ln sigma = -1.2 + 1.2 n, (n, eps) from the documented key split, F the
    U-Net on each window."""
    config = pgd.Config(**TINY)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 7))
    unet = pgd._unet(config)
    denoiser = unet.init(jax.random.PRNGKey(1), x[0], jnp.zeros(()))
    key = jax.random.PRNGKey(2)
    got = pgd.edm_loss(denoiser, x, key, config)
    sigma_key, noise_key = jax.random.split(key)
    sigma = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(sigma_key, (4,))))
    noised = np.asarray(x) + sigma[:, None, None] * np.asarray(
        jax.random.normal(noise_key, x.shape)
    )
    total = 0.0
    for b in range(4):
        s = sigma[b]
        f = np.asarray(unet.apply(denoiser, noised[b] / np.sqrt(s**2 + 1), np.log(s) / 4))
        d = noised[b] / (s**2 + 1) + s / np.sqrt(s**2 + 1) * f
        total += ((s**2 + 1) / s**2 * (d - np.asarray(x[b])) ** 2).sum()
    np.testing.assert_allclose(got, total / x.size, rtol=1e-4)


def test_denoiser_learning_rate_is_optax_warmup_cosine():
    """0.1 lr -> lr linearly over 10% of model_updates, then a cosine to 0 (optax's schedule,
    which the traced model_lr cannot build)."""
    config = pgd.Config(model_updates=1000, model_lr=2e-3)
    schedule = optax.warmup_cosine_decay_schedule(2e-4, 2e-3, 100, 1000)
    steps = np.array([0, 1, 50, 99, 100, 101, 500, 999, 1000, 2000])
    got = [float(pgd.denoiser_learning_rate(config, s)) for s in steps]
    np.testing.assert_allclose(got, [float(schedule(s)) for s in steps], rtol=1e-5, atol=1e-9)


# --- The sampler ---


def test_sigma_schedule_and_churn():
    """sigma_i = (80^(1/7) + i/(N-1) (0.002^(1/7) - 80^(1/7)))^7, sigma_N = 0; gamma_i =
    min(80/N, sqrt 2 - 1) on [0.05, 50], else 0 (N = 256: 80/256; N = 8: sqrt 2 - 1)."""
    for n in (256, 8):
        i = np.arange(n + 1)
        expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        expected[-1] = 0.0
        sigmas = np.asarray(pgd.sigma_schedule(n))
        np.testing.assert_allclose(sigmas, expected, rtol=1e-5)
        assert sigmas[0] == pytest.approx(80.0) and sigmas[n - 1] == pytest.approx(0.002)
        gammas = np.asarray(pgd.churn(pgd.sigma_schedule(n), n))
        inside = (expected >= 0.05) & (expected <= 50)
        assert 0 < inside.sum() < n
        np.testing.assert_allclose(gammas, np.where(inside, min(80 / n, np.sqrt(2) - 1), 0.0))


def test_guidance_schedule():
    """lambda_i = c [(1 - i/N) + 0.3 sin(pi (i + 1)/N)] for i < N - 1, 0 at the last step."""
    n, c = 10, 2.5
    got = [float(pgd.guidance_scale(c, i, n)) for i in range(n)]
    expected = [c * ((1 - i / n) + 0.3 * np.sin(np.pi * (i + 1) / n)) for i in range(n - 1)]
    np.testing.assert_allclose(got, [*expected, 0.0], rtol=1e-6)


def tiny_model(learner="td3_bc", **changes):
    config = pgd.Config(**TINY, learner=learner, **changes)
    dataset = episodes_dataset()
    return config, dataset, pgd.init(config, dataset, jax.random.PRNGKey(0))


def test_zero_guidance_is_the_unguided_sampler_exactly():
    """With c = 0 the guided sampler's windows are the unguided sampler's, bit for bit; with
    c = 1 they differ, in the action block first."""
    config, _, state = tiny_model()
    guide = pgd.policy_guidance(config, state.params, state.norm, 3, 2)
    sample = jax.jit(
        lambda coef, guided: pgd.sample_windows(
            config, state.ema, 7, jax.random.PRNGKey(3), 4, guide if guided else None, coef
        ),
        static_argnums=1,
    )
    unguided = np.asarray(sample(0.0, False))
    np.testing.assert_array_equal(np.asarray(sample(0.0, True)), unguided)
    assert np.isfinite(unguided).all()
    assert not np.allclose(np.asarray(sample(1.0, True)), unguided)


def test_policy_guidance_is_the_normalized_score_by_hand():
    """For TD3+BC's actor, pi = N(mu(s), 1): d/du log N(tanh(u std + mean); mu, 1) = (mu -
    tanh(.)) (1 - tanh^2(.)) std on the action block of each window, zeros elsewhere, divided by
    the window's norm (and not divided when normalize_guidance is off)."""
    config, _, state = tiny_model()
    mean, std = (np.asarray(v) for v in state.norm)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (3, 8, 7)))
    obs = x[..., :3] * std[:3] + mean[:3]
    u = x[..., 3:5] * std[3:5] + mean[3:5]
    mu = np.asarray(pgd.act(config, state.params, jnp.asarray(obs), None))
    score = (mu - np.tanh(u)) * (1 - np.tanh(u) ** 2) * std[3:5]
    for normalize in (True, False):
        c = config.replace(normalize_guidance=normalize)
        g = np.asarray(pgd.policy_guidance(c, state.params, state.norm, 3, 2)(jnp.asarray(x)))
        np.testing.assert_array_equal(g[..., :3], 0.0)
        np.testing.assert_array_equal(g[..., 5:], 0.0)
        norms = np.linalg.norm(score.reshape(3, -1), axis=1)[:, None, None]
        expected = score / (norms + 1e-8) if normalize else score
        np.testing.assert_allclose(g[..., 3:5], expected, rtol=1e-4, atol=1e-6)


# --- Data ---


def test_trajectory_windows_by_hand():
    """L = 4, stride 4. Rows 0-11 end in a timeout: starts 0, 4 (8 would end in the timeout).
    Rows 12-20 end in a terminal: 12, 16 and the last window's 17. Rows 21-23 are too short.
    Rows 24-29 end with the data, unflagged: 24."""
    terminals, timeouts = np.zeros(30), np.zeros(30)
    timeouts[11], terminals[20], terminals[23] = 1, 1, 1
    got = pgd.trajectory_windows(terminals, timeouts, 4, 4)
    np.testing.assert_array_equal(got, [0, 4, 12, 16, 17, 24])
    every = pgd.trajectory_windows(terminals, timeouts, 4, 1)  # stride 1: 8 ends in the timeout
    np.testing.assert_array_equal(every[:9], [*range(8), 12])


def test_window_rows_by_hand():
    """[s, atanh(clip(a, +-0.999)), r, terminal] per row of each window."""
    dataset = episodes_dataset(n_episodes=2, length=6)
    actions = np.asarray(dataset.actions).copy()
    actions[3] = [1.0, -1.0]
    dataset = dataset.replace(actions=jnp.asarray(actions), terminals=jnp.eye(12)[5])
    rows = np.asarray(pgd.window_rows(dataset, jnp.array([1, 6]), 5))
    assert rows.shape == (2, 5, 3 + 2 + 2)
    np.testing.assert_allclose(rows[0, :, :3], np.asarray(dataset.observations)[1:6], rtol=1e-6)
    np.testing.assert_allclose(rows[0, 2, 3:5], np.arctanh([0.999, -0.999]), rtol=1e-5)
    np.testing.assert_allclose(rows[1, :, 3:5], np.arctanh(actions[6:11]), rtol=1e-5)
    np.testing.assert_allclose(rows[1, :, 5], np.asarray(dataset.rewards)[6:11], rtol=1e-6)
    np.testing.assert_array_equal(rows[0, :, 6], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(rows[1, :, 6], 0)


def test_composed_batch_is_synthetic_then_real():
    """The first synthetic_batch_size rows come from the pool (rewards >= 1000 there), the rest
    from the dataset; rows stay whole (observations match their rewards)."""
    dataset = episodes_dataset()
    pool = {k: jnp.zeros((50, *getattr(dataset, k).shape[1:])) for k in pgd.BATCH_KEYS}
    pool["rewards"] = 1000.0 + jnp.arange(50.0)
    pool["observations"] = jnp.repeat(pool["rewards"][:, None], 3, 1)
    batch = pgd.composed_batch(dataset, pool, 240, 256, jax.random.PRNGKey(0))
    assert all(v.shape[0] == 256 for v in batch.values())
    rewards = np.asarray(batch["rewards"])
    assert (rewards[:240] >= 1000).all() and (np.abs(rewards[240:]) < 100).all()
    np.testing.assert_array_equal(batch["observations"][:240, 0], rewards[:240])
    assert len(set(rewards[:240].tolist())) > 30


# --- The learners are td3_bc.py's and iql.py's ---


def batch_of(dataset, n=32):
    return {k: getattr(dataset, k)[:n].astype(jnp.float32) for k in pgd.BATCH_KEYS}


def policy_state(config, model_state):
    """begin_policy's learner state without its pool (these tests give the batch)."""
    params = model_state.params
    td3 = config.learner == "td3_bc"
    return pgd.TrainState(
        params=params,
        target_actor=params.actor if td3 else None,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        value_opt=None if td3 else optax.adam(config.value_lr).init(params.value),
        denoiser=None, norm=None, pool=None, pool_stats=None, obs_bounds=None,
        rng=jax.random.PRNGKey(5), step=jnp.zeros((), jnp.int32),
    )  # fmt: skip


def assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)


def test_td3_bc_step_is_td3_bc_with_one_critic_update():
    """With one critic update per step and no target noise, PGD's TD3+BC step is td3_bc.py's
    update_on_batch at policy_freq 1 (critic, actor, both targets); with two, the critics take
    two Adam steps on the batch before the actor's."""
    config, dataset, model_state = tiny_model(critic_updates=1, policy_noise=0.0)
    state = policy_state(config, model_state)
    batch = batch_of(dataset)
    new, metrics = pgd.update_on_batch(config, state, batch)
    reference_config = td3_bc.Config(hidden_sizes=(16, 16), policy_freq=1, policy_noise=0.0)
    reference = td3_bc.TrainState(
        params=td3_bc.Params(
            state.params.actor, state.params.critic, state.params.obs_mean,
            state.params.obs_std, 2,
        ),
        target_actor=state.target_actor, target_critic=state.target_critic,
        actor_opt=state.actor_opt, critic_opt=state.critic_opt,
        actor_metrics={k: jnp.zeros(()) for k in td3_bc.ACTOR_METRICS},
        rng=state.rng, step=state.step,
    )  # fmt: skip
    expected, expected_metrics = td3_bc.update_on_batch(reference_config, reference, batch)
    assert_trees_close(new.params.actor, expected.params.actor)
    assert_trees_close(new.params.critic, expected.params.critic)
    assert_trees_close(new.target_actor, expected.target_actor)
    assert_trees_close(new.target_critic, expected.target_critic)
    for key in ("critic_loss", "actor_loss", "bc_loss", "lambda", "q_mean"):
        np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=2e-5)
    twice, _ = pgd.update_on_batch(config.replace(critic_updates=2), state, batch)
    assert twice.critic_opt[0].count == 2 and new.critic_opt[0].count == 1


def test_iql_step_is_iql_without_reward_scaling():
    """PGD's IQL step is iql.py's first update_on_batch (its actor rate is actor_lr at step 0)
    with rewards unscaled: V, actor, Q, targets."""
    config, dataset, model_state = tiny_model(learner="iql")
    state = policy_state(config, model_state)
    batch = batch_of(dataset)
    new, metrics = pgd.update_on_batch(config, state, batch)
    reference_config = iql.Config(hidden_sizes=(16, 16), reward_preprocessing="none")
    p = state.params
    reference = iql.TrainState(
        params=iql.Params(p.actor, p.critic, p.value, p.obs_mean, p.obs_std, 2),
        target_critic=state.target_critic, actor_opt=state.actor_opt,
        critic_opt=state.critic_opt, value_opt=state.value_opt,
        reward_scale=jnp.ones(()), reward_shift=jnp.zeros(()), rng=state.rng, step=state.step,
    )  # fmt: skip
    expected, expected_metrics = iql.update_on_batch(reference_config, reference, batch)
    for name in ("actor", "critic", "value"):
        assert_trees_close(getattr(new.params, name), getattr(expected.params, name))
    assert_trees_close(new.target_critic, expected.target_critic)
    for key in ("value_loss", "actor_loss", "critic_loss", "awr_weight_mean"):
        np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=2e-5)


# --- The denoiser learns a trajectory distribution ---


def two_way_dataset(n_episodes=64, length=9, seed=0) -> Dataset:
    """Episodes from the origin that go up-right or down-right (alternately), 0.3 per step in
    y, with a little noise; the action is the direction, the reward |y|."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    obs, actions = [], []
    for e in range(n_episodes):
        sign = 1.0 if e % 2 == 0 else -1.0
        y = sign * 0.3 * t + 0.02 * rng.normal(size=length)
        obs.append(np.stack([0.3 * t, y], -1))
        actions.append(np.tile([0.5, 0.5 * sign], (length, 1)))
    obs, actions = np.concatenate(obs), np.concatenate(actions)
    n = len(obs)
    timeouts = np.zeros(n)
    timeouts[length - 1 :: length] = 1
    return Dataset.from_arrays(
        observations=obs, actions=actions, rewards=np.abs(obs[:, 1]), terminals=np.zeros(n),
        timeouts=timeouts, next_observations=obs,
    )  # fmt: skip


def test_tiny_denoiser_reproduces_a_two_way_mixture():
    """A U-Net of 32 features and 2 levels, 1500 EDM steps (lr 2e-3, EMA decay 0.9) on 64
    episodes of 9 steps (one window of 8 each), half going up and half down: the loss falls
    from 0.92 to 0.12 (first and last 100 steps; asked: to below half), and of 256 windows from
    the 32-step Heun sampler 0.457 go up throughout and 0.539 down (the sign of y - y_0 the same
    at every step from the third), so 0.996 are one mode or the other (0.453, 0.539, 0.992 with
    another sampling key). Asked: each mode 0.36-0.64 of the mass, 95% coherent. Untrained (no
    step) both fail: 0.004 up, 0.465 down, 0.469 coherent. About 90 s of 2 busy cores."""
    dataset = two_way_dataset()
    config = pgd.Config(
        **{**TINY, "unet_features": 32, "num_sampling_steps": 32, "model_batch_size": 32},
        model_updates=1500, ema_decay=0.9,
    )  # fmt: skip
    state = pgd.init(config, dataset, jax.random.PRNGKey(0))
    assert state.windows.shape == (64,)
    state, metrics = jax.jit(
        lambda s: jax.lax.scan(
            lambda s, _: pgd.update_model(config, dataset, s), s, None, config.model_updates
        )
    )(state)
    assert np.isfinite(metrics["denoiser_loss"]).all()
    assert metrics["denoiser_loss"][-100:].mean() < 0.5 * metrics["denoiser_loss"][:100].mean()
    mean, std = state.norm
    windows = jax.jit(lambda d: pgd.sample_windows(config, d, 6, jax.random.PRNGKey(1), 256))(
        state.ema
    )
    windows = np.asarray(windows * std + mean)
    rise = windows[:, 2:, 1] - windows[:, :1, 1]
    up = (rise > 0).all(1)
    down = (rise < 0).all(1)
    coherent = (up | down).mean()
    assert 0.36 <= up.mean() <= 0.64, (up.mean(), down.mean())
    assert coherent >= 0.95, coherent


# --- The whole program ---


def test_policy_phase_agrees_under_jit_and_vmap_over_guidance_coef_and_is_deterministic():
    """From one fitted model state, begin_policy and 3 policy steps with a regeneration at step
    2, as a sweep over guidance_coef (0, 0.5, 4) in one program, give each member's single run
    (states and metrics, within float tolerance); a single run repeated is identical; the
    regenerated pools differ with the coefficient (guidance acts). The model phase is left out
    of the comparison: the tiny U-Net's GroupNorm over 2 channels per group makes its
    gradients ill-conditioned, and Adam turns batched-versus-single roundoff in them into
    different weights. Adam does the same in the policy's steps, so each leaf is compared as a
    whole: |single - member| <= 5% |member| + 1e-3 sqrt(size). Single weights differed by up
    to 1.4e-3 and Adam moments by up to 0.014 (a third of that entry) in the runs measured, and
    sigma_max = 80 scales the sampler's roundoff."""
    dataset = episodes_dataset()
    config = pgd.Config(**{**TINY, "num_sampling_steps": 4}, total_updates=3, regenerate_every=2)
    model = pgd.init(config, dataset, jax.random.PRNGKey(7))

    def policy(config):
        state = pgd.begin_policy(config, dataset, model)
        step = lambda state, _: pgd.update(config, dataset, state)  # noqa: E731
        return jax.lax.scan(step, state, None, config.total_updates)

    coefs = jnp.array([0.0, 0.5, 4.0])
    stacked = jax.tree.map(lambda x: jnp.full(3, x), config).replace(guidance_coef=coefs)
    swept = jax.jit(jax.vmap(policy))(stacked)
    run = jax.jit(policy)
    for i, coef in enumerate(coefs):
        single = run(config.replace(guidance_coef=coef))
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(member), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b) + 1e-3 * np.sqrt(b.size)
        assert all(np.isfinite(v).all() for v in single[1].values())
    first, again = (run(config.replace(guidance_coef=coefs[1])) for _ in range(2))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    pools = swept[0].pool["actions"]
    assert not np.allclose(pools[0], pools[2])


def test_train_runs_both_phases_with_iql():
    """train: init, model_updates denoiser steps, begin_policy, total_updates IQL steps; both
    phases' metrics finite, one row per step."""
    dataset = episodes_dataset()
    config = pgd.Config(
        **{**TINY, "num_sampling_steps": 4}, learner="iql", model_updates=3, total_updates=4,
        regenerate_every=2,
    )  # fmt: skip
    state, (model_metrics, metrics) = jax.jit(lambda key: pgd.train(config, dataset, key))(
        jax.random.PRNGKey(0)
    )
    assert {"denoiser_loss", "denoiser_lr"} <= set(model_metrics)
    assert {"value_loss", "actor_loss", "critic_loss", "synthetic_out_of_bounds"} <= set(metrics)
    assert all(v.shape == (3,) and np.isfinite(v).all() for v in model_metrics.values())
    assert all(v.shape == (4,) and np.isfinite(v).all() for v in metrics.values())
    assert int(state.step) == 4
    action = pgd.act(config, state.params, dataset.observations[:5], jax.random.PRNGKey(1))
    assert action.shape == (5, 2) and (np.abs(action) <= 1).all()


# --- Named errors ---


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"unet_features": 20}, "unet_features"),
        ({"unet_features": 8}, "unet_features"),
        ({"unet_features": 24, "unet_groups": 16}, "unet_groups=16"),
        ({"trajectory_length": 4, "unet_blocks": 4}, "trajectory_length"),
        ({"synthetic_batch_size": 300}, "synthetic_batch_size"),
        ({"num_synthetic_trajectories": 20}, "num_synthetic_trajectories"),
    ],
)
def test_config_errors_are_named(changes, field):
    with pytest.raises(ValueError, match=field):
        pgd.check(pgd.Config(**{**TINY, **changes}))


def test_init_names_bad_datasets():
    config = pgd.Config(**TINY)
    good = episodes_dataset()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        pgd.init(config, good.replace(actions=good.actions * 2), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="vector observations"):
        images = good.replace(observations=good.observations[:, :, None])
        pgd.init(config, images, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="trajectory_length=8"):
        pgd.init(config, episodes_dataset(length=5), jax.random.PRNGKey(0))
