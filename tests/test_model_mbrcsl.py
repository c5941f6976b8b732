"""MBRCSL: the rollout filter and its return-to-go labels by hand, the dataset's episode starts
and best return, the batch drawn from kept rows only, the diffusion behaviour policy (its
schedule, loss and denoising step against the formulas, and a bimodal action distribution that
one Gaussian could not fit), the wrapper's return so far and act's return-to-go, the named
errors (NoRolloutAboveThreshold among them), jit/vmap agreement, determinism, and a tiny end to
end run on a toy task. The dynamics ensemble is the shared section (tests/test_inlined_copies.py
holds it identical to MOPO's; its cases are in MOPO's tests)."""

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import synthetic_dataset

from rljax import envs
from rljax.agents import mbrcsl
from rljax.data import Dataset
from rljax.runner import config as config_lib


def toy_dataset(episodes=40, horizon=10, seed=0) -> Dataset:
    """A point on a line, x' = x + 0.1 a, reward r = a, episodes of ``horizon`` steps with
    uniform random actions: the best episode return (about 5 here) is beaten only by rollouts
    that push right more often than the data's episodes do."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (episodes, horizon, 1))
    x0 = rng.uniform(-0.5, 0.5, (episodes, 1, 1))
    x = x0 + 0.1 * np.concatenate([np.zeros((episodes, 1, 1)), np.cumsum(a, 1)], 1)
    timeouts = np.zeros((episodes, horizon))
    timeouts[:, -1] = 1
    return Dataset.from_arrays(
        observations=x[:, :-1].reshape(-1, 1),
        actions=a.reshape(-1, 1),
        rewards=a.reshape(-1),
        terminals=np.zeros(episodes * horizon),
        timeouts=timeouts.reshape(-1),
        next_observations=x[:, 1:].reshape(-1, 1),
    )


# Small networks and budgets: the toy's dynamics and rewards are linear.
TINY = dict(
    total_updates=50, hidden_sizes=(32, 32), lr=1e-3, model_updates=50, num_models=3,
    num_elites=2, model_hidden_sizes=(16, 16), model_weight_decay=(2.5e-5, 5e-5, 1e-4),
    model_batch_size=32, holdout_interval=25, behavior_hidden_sizes=(16, 16),
    behavior_batch_size=32, horizon=10, rollout_batch_size=50, num_needed=4, max_rounds=3,
)  # fmt: skip


def tiny(**changes) -> mbrcsl.Config:
    return mbrcsl.Config(**{**TINY, **changes})


# --- The filter and the return-to-go labels ---


def test_returns_to_go_by_hand():
    rewards = jnp.array([[1.0, 0.0], [2.0, -1.0], [3.0, 4.0]])  # (H = 3, B = 2)
    np.testing.assert_allclose(mbrcsl.returns_to_go(rewards), [[6, 3], [5, 3], [3, 4]])


def test_filter_keeps_returns_above_the_threshold_in_order_and_drops_the_overflow():
    """Returns 6, 1, 6, -3 against threshold 1: trajectories 0 and 2 pass (1 is not above 1)
    and fill slots 0 and 1 in order; with one slot left only trajectory 0 is kept."""
    rewards = jnp.array([[1.0, 0, 2, -1], [2, 0, 2, -1], [3, 1, 2, -1]])  # (H = 3, B = 4)
    obs = jnp.arange(12.0).reshape(3, 4, 1)  # obs[t, b] = 4 t + b
    actions = -obs
    config = tiny(num_needed=3, horizon=3)
    rollouts, kept = mbrcsl.keep_rollouts(
        mbrcsl.rollouts_init(config, 1, 1), obs, actions, rewards, 1.0
    )
    np.testing.assert_array_equal(kept, [True, False, True, False])
    assert int(rollouts.count) == 2
    np.testing.assert_allclose(rollouts.returns, [6, 6, 0])
    np.testing.assert_allclose(rollouts.rtgs, [[6, 5, 3], [6, 4, 2], [0, 0, 0]])
    np.testing.assert_allclose(rollouts.observations[..., 0], [[0, 4, 8], [2, 6, 10], [0, 0, 0]])
    np.testing.assert_allclose(rollouts.actions, -rollouts.observations)

    rollouts, kept = mbrcsl.keep_rollouts(rollouts, obs + 100, actions, rewards, 1.0)
    np.testing.assert_array_equal(kept, [True, False, False, False])
    assert int(rollouts.count) == 3
    np.testing.assert_allclose(rollouts.observations[2, :, 0], [100, 104, 108])


def test_batches_come_from_kept_rows_only():
    config = tiny(num_needed=4, horizon=3, batch_size=512)
    rollouts = mbrcsl.rollouts_init(config, 1, 1)
    rollouts = rollouts.replace(
        rtgs=jnp.arange(12.0).reshape(4, 3) + 1, count=jnp.asarray(2, jnp.int32)
    )
    batch = mbrcsl.sample_batch(config, rollouts, jax.random.PRNGKey(0))
    assert set(np.unique(batch["rtgs"]).tolist()) == {1, 2, 3, 4, 5, 6}


def test_episode_starts_and_best_return():
    """synthetic_dataset: episodes of 8 rows (row 23 a terminal, not a timeout): starts every 8
    rows. A trailing episode without an end counts: rewards 1, 1 | 5 | 2, 2, 2 -> best 6."""
    np.testing.assert_array_equal(mbrcsl.episode_starts(synthetic_dataset(n=64)), range(0, 64, 8))
    data = SimpleNamespace(  # the three columns that the two functions read
        rewards=np.array([1.0, 1, 5, 2, 2, 2]),
        terminals=np.array([0.0, 1, 0, 0, 0, 0]),
        timeouts=np.array([0.0, 0, 1, 0, 0, 0]),
    )
    np.testing.assert_array_equal(mbrcsl.episode_starts(data), [0, 2, 3])
    assert mbrcsl.max_episode_return(data) == 6.0


def test_rcsl_on_the_data_learns_every_episode_with_its_returns_to_go():
    """rcsl_on='dataset' (the RCSL baseline): begin_policy keeps every dataset episode as a
    trajectory, labelled rtg_t = R - sum_{t'<t} r_t' and aiming at the best episode return; the
    ensemble and the rollouts are not used. Episodes of another length are a named error."""
    config = tiny(rcsl_on="dataset", horizon=10)
    data = toy_dataset(episodes=6)
    state = mbrcsl.begin_policy(config, data, mbrcsl.init(config, data, jax.random.PRNGKey(0)))
    rewards = np.asarray(data.rewards).reshape(6, 10)
    returns = rewards.sum(1)
    np.testing.assert_allclose(state.rollouts.returns, returns, rtol=1e-6)
    np.testing.assert_allclose(state.rollouts.rtgs[:, 0], returns, rtol=1e-6)
    np.testing.assert_allclose(state.rollouts.rtgs[:, -1], rewards[:, -1], rtol=1e-6)
    np.testing.assert_array_equal(state.rollouts.actions[2, :, 0], data.actions[20:30, 0])
    assert int(state.rollouts.count) == 6 and state.rollout_stats["rollout_rounds"] == 0
    np.testing.assert_allclose(state.params.target_return, returns.max(), rtol=1e-6)
    with pytest.raises(ValueError, match="horizon=9 steps long; the dataset's run from 10 to 10"):
        mbrcsl.init(tiny(rcsl_on="dataset", horizon=9), data, jax.random.PRNGKey(0))


# --- The diffusion behaviour policy ---


def test_cosine_schedule_against_the_formula():
    abar = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    betas = mbrcsl.diffusion_schedule(10)
    np.testing.assert_allclose(betas[3], 1 - abar(0.4) / abar(0.3))
    assert betas[-1] == 0.999  # alpha_bar(1) = 0: the cap
    assert np.all(np.diff(betas) > 0)


def test_diffusion_loss_on_a_hand_batch():
    """The loss is the mean squared error of the predicted noise at the noised actions
    sqrt(abar_k) a + sqrt(1 - abar_k) eps, rebuilt here from the schedule."""
    config = tiny(behavior_diffusion_steps=4)
    weights = mbrcsl._denoiser(config, 2).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32), jnp.zeros((1, 3))
    )
    actions = jnp.array([[0.5, -0.5], [1.0, 0.0], [-1.0, 0.2]])
    obs = jnp.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [0.0, 0.0, 2.0]])
    k = jnp.array([0, 2, 3])
    noise = jnp.array([[1.0, -1.0], [0.5, 0.5], [-2.0, 0.0]])
    abar = np.cumprod(1 - mbrcsl.diffusion_schedule(4))[[0, 2, 3]][:, None]
    noisy = np.sqrt(abar) * actions + np.sqrt(1 - abar) * noise
    pred = jax.jit(mbrcsl._denoiser(config, 2).apply)(weights, noisy, k, obs)
    expected = np.mean((np.asarray(pred) - np.asarray(noise)) ** 2)
    loss, grads = jax.jit(jax.value_and_grad(mbrcsl.diffusion_loss))(
        weights, config, actions, obs, k, noise
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_denoising_step_is_the_ddpm_posterior():
    """Given the true noise, a step from a_k draws from the posterior q(a_{k-1} | a_k, a_0)
    (mean and variance by the formulas); at k = 0 it returns a_0 exactly. A predicted a_0
    outside [-1, 1] is clipped."""
    betas = jnp.asarray(mbrcsl.diffusion_schedule(10), jnp.float32)
    abar = np.cumprod(1 - np.asarray(betas, np.float64))
    a0, eps, z = np.array([0.3, -0.7]), np.array([0.4, 1.2]), np.array([0.5, -1.5])
    for k in (0, 4, 9):
        noisy = np.sqrt(abar[k]) * a0 + np.sqrt(1 - abar[k]) * eps
        out = mbrcsl.denoise_step(jnp.asarray(eps), k, jnp.asarray(noisy), jnp.asarray(z), betas)
        if k == 0:
            np.testing.assert_allclose(out, a0, atol=1e-5)
            continue
        prev, beta = abar[k - 1], 1 - abar[k] / abar[k - 1]
        mean = np.sqrt(prev) * beta / (1 - abar[k]) * a0
        mean += np.sqrt(1 - beta) * (1 - prev) / (1 - abar[k]) * noisy
        std = np.sqrt((1 - prev) / (1 - abar[k]) * beta)
        np.testing.assert_allclose(out, mean + std * z, atol=1e-5)
    out = mbrcsl.denoise_step(jnp.zeros(2), 0, jnp.array([3.0, -3.0]), jnp.zeros(2), betas)
    np.testing.assert_allclose(out, [1.0, -1.0])


def test_diffusion_policy_reproduces_a_bimodal_action_distribution():
    """Actions +-0.6 (noise 0.05), half each, whatever the state. The trained denoiser (2000
    AdamW steps at 1e-3, two layers of 64, batch 256; its loss falls from 0.41 to 0.20) put
    0.45 and 0.48 of 2000 samples within 0.2 of each mode and 0.04 within 0.3 of 0 when this
    was written; the Gaussian fit to the same actions (mean 0.007, std 0.60) puts 0.16 near
    each mode and 0.38 within 0.3 of 0. Asked: over 0.35 near each mode, under 0.1 near 0."""
    rng = np.random.default_rng(0)
    n = 2048
    actions = np.where(rng.random(n) < 0.5, 0.6, -0.6) + 0.05 * rng.normal(size=n)
    data = synthetic_dataset(n=n, obs_dim=2, action_dim=1).replace(
        actions=jnp.asarray(np.clip(actions, -1, 1)[:, None], jnp.float32)
    )
    config = mbrcsl.Config(
        behavior_hidden_sizes=(64, 64), behavior_lr=1e-3, behavior_batch_size=256
    )

    @jax.jit
    def fit_and_sample(key):
        init_key, train_key, sample_key = jax.random.split(key, 3)
        behavior = mbrcsl.behavior_init(config, data, init_key)

        def step(behavior, key):
            return mbrcsl.behavior_update(config, data, behavior, key)

        behavior, metrics = jax.lax.scan(step, behavior, jax.random.split(train_key, 2000))
        obs = jnp.broadcast_to(data.observations[0], (2000, 2))
        return mbrcsl.behavior_sample(config, behavior, obs, sample_key, 1)[:, 0], metrics

    sampled, metrics = fit_and_sample(jax.random.PRNGKey(0))
    sampled = np.asarray(sampled)
    assert np.all(np.abs(sampled) <= 1)
    near_plus, near_minus = (
        np.mean(np.abs(sampled - 0.6) < 0.2),
        np.mean(np.abs(sampled + 0.6) < 0.2),
    )
    near_zero = np.mean(np.abs(sampled) < 0.3)
    assert near_plus > 0.35 and near_minus > 0.35 and near_zero < 0.1, (
        near_plus,
        near_minus,
        near_zero,
    )
    assert metrics["behavior_loss"][-100:].mean() < metrics["behavior_loss"][:100].mean()


# --- Acting ---


def test_wrapper_appends_the_return_so_far_and_act_aims_at_the_rest():
    env, env_params = envs.make("Pendulum-v1", max_steps_in_episode=3)
    wrapped, wrapped_params = mbrcsl.wrap_env(tiny(), env, env_params)
    assert wrapped.observation_space(wrapped_params).shape == (4,)
    obs, state = wrapped.reset(jax.random.PRNGKey(0), wrapped_params)
    assert obs.shape == (4,) and obs[-1] == 0
    total = 0.0
    for t in range(3):
        obs, state, reward, terminated, truncated, info = wrapped.step(
            jax.random.PRNGKey(t), state, jnp.array([0.5]), wrapped_params
        )
        total += float(reward)
        if t < 2:
            np.testing.assert_allclose(obs[-1], total, rtol=1e-6)
    assert bool(truncated)
    np.testing.assert_allclose(info["final_observation"][-1], total, rtol=1e-6)
    assert obs[-1] == 0  # the next episode's first observation

    config = tiny()
    weights = mbrcsl._policy(config, 1).init(jax.random.PRNGKey(1), jnp.zeros(3), jnp.zeros(()))
    weights = jax.tree.map(lambda w: 300 * w, weights)  # outputs beyond [-1, 1] too
    params = mbrcsl.Params(weights, jnp.asarray(10.0), 1)
    obs = jnp.array([[0.1, 0.2, 0.3, 4.0], [1.0, -1.0, 0.5, -2.0]])
    action = mbrcsl.act(config, params, obs, jax.random.PRNGKey(0), deterministic=True)
    raw = mbrcsl._policy(config, 1).apply(weights, obs[:, :3], jnp.array([6.0, 12.0]))
    np.testing.assert_allclose(action, np.clip(raw, -1, 1), rtol=1e-6)
    assert np.abs(raw).max() > 1


# --- Named errors ---


def test_named_errors():
    data = toy_dataset()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_elites=4 exceeds num_models=3"):
        mbrcsl.init(tiny(num_elites=4), data, key)
    with pytest.raises(ValueError, match="too few for the model's held-out split"):
        mbrcsl.init(tiny(model_batch_size=512), data, key)
    with pytest.raises(ValueError, match="termination='none'.*terminal transitions"):
        mbrcsl.init(tiny(), synthetic_dataset(n=64, action_scale=0.5), key)
    with pytest.raises(ValueError, match="vector observations"):
        mbrcsl.init(tiny(), data.replace(observations=data.observations[:, :, None]), key)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        mbrcsl.init(tiny(), data.replace(actions=2 * data.actions), key)
    with pytest.raises(ValueError, match="num_needed=151"):
        mbrcsl.check(tiny(num_needed=151))
    with pytest.raises(config_lib.FieldOutOfRange, match="horizon"):
        config_lib.make_config(mbrcsl.Config, {"horizon": 0})


def test_no_rollout_above_the_threshold_is_a_named_error_with_the_numbers():
    """A threshold no rollout reaches: begin_policy runs its max_rounds, keeps nothing and
    stays finite; check_begin_policy names what was tried, the best return and the threshold."""
    config = tiny()
    data = toy_dataset()

    @jax.jit
    def phases(key):
        state = mbrcsl.init(config, data, key)
        state = state.replace(threshold=jnp.asarray(1e6, jnp.float32))
        state = mbrcsl.begin_policy(config, data, state)
        return mbrcsl.update(config, data, state)

    state, metrics = phases(jax.random.PRNGKey(0))
    assert int(state.rollouts.count) == 0 and metrics["rollout_rounds"] == 3
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(mbrcsl.NoRolloutAboveThreshold, match=r"of 150 trajectories.*1e\+06"):
        mbrcsl.check_begin_policy(config, state)


# --- Transforms, determinism and a tiny run ---

# The toy's run: enough model steps and rollout rounds to keep num_needed trajectories.
TOY_RUN = dict(
    total_updates=300, hidden_sizes=(64, 64), model_updates=1000, model_hidden_sizes=(32, 32),
    model_batch_size=64, holdout_interval=100, behavior_hidden_sizes=(64, 64),
    behavior_batch_size=64, behavior_lr=1e-3, rollout_batch_size=200, num_needed=20,
    max_rounds=50,
)  # fmt: skip


@functools.cache
def toy_train():
    """train on the toy, jitted once with the config traced (its static fields TOY_RUN's)."""
    data = toy_dataset()
    return data, jax.jit(lambda config, key: mbrcsl.train(config, data, key))


def test_jit_vmap_agree_and_runs_are_deterministic():
    """Two members vmapped (seeds 0 and 1, learning rates 1e-3 and 3e-4) equal each run alone;
    the same seed twice gives the same state; every metric of both phases is finite."""
    data, run = toy_train()
    configs = [tiny(**TOY_RUN), tiny(**TOY_RUN).replace(lr=3e-4)]
    keys = jnp.stack([jax.random.PRNGKey(0), jax.random.PRNGKey(1)])
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    batched, (model_metrics, metrics) = jax.jit(jax.vmap(lambda c, k: mbrcsl.train(c, data, k)))(
        stacked, keys
    )
    singles = [run(c, k)[0] for c, k in zip(configs, keys, strict=True)]
    for i, single in enumerate(singles):
        for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(batched), strict=True):
            np.testing.assert_allclose(x, y[i], rtol=1e-4, atol=1e-5)
    again = run(configs[0], keys[0])[0]
    for x, y in zip(jax.tree.leaves(singles[0]), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(x, y)
    for name, value in {**model_metrics, **metrics}.items():
        assert np.all(np.isfinite(value)), name


def test_end_to_end_the_policy_pushes_right_for_a_high_return_to_go():
    """On the toy (reward = action), the kept rollouts beat the data's best return (5.09)
    because their actions push right more; pi trained on them and asked for the best kept
    return pushes right: mean action 0.62 over the data's states when this was written, while
    the data's mean action is 0.06. Asked: above 0.3. The toy's compiled run is
    shared with the jit/vmap test."""
    data, run = toy_train()
    config = tiny(**TOY_RUN)
    state, (_, metrics) = run(config, jax.random.PRNGKey(0))
    mbrcsl.check_begin_policy(config, state)
    rollouts = state.rollouts
    threshold = mbrcsl.max_episode_return(data)
    assert int(rollouts.count) == 20
    assert np.all(np.asarray(rollouts.returns) > threshold)
    np.testing.assert_allclose(rollouts.rtgs[:, 0], rollouts.returns, rtol=1e-5)
    np.testing.assert_allclose(state.params.target_return, rollouts.returns.max())
    assert metrics["policy_loss"][-20:].mean() < metrics["policy_loss"][:20].mean()
    obs = jnp.concatenate([data.observations, jnp.zeros((data.size, 1))], -1)  # nothing yet
    action = mbrcsl.act(config, state.params, obs, jax.random.PRNGKey(0))
    assert float(action.mean()) > 0.3, float(action.mean())
