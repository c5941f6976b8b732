"""BESO: the EDM preconditioning and the c_noise the network is fed, the truncated log-logistic
noise levels (a KS test), the exponential schedule, one DDIM and one Euler-ancestral step and a
whole DDIM run by hand, classifier-free guidance, the loss on a hand-computed batch, the EMA and
AdamW steps, action windows clamped at trajectory ends, sweeps over traced fields, named errors,
and two learning checks: a bimodal action distribution that Gaussian BC cannot represent, and
goals reached in an open square."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import straight_line_dataset

from rljax.agents import beso, gcbc
from rljax.data import Dataset
from rljax.runner import config as config_lib

TINY = dict(batch_size=32, hidden_sizes=(8,))
HAND = dict(hidden_sizes=(1,))  # one hidden unit: see rigged


def index_dataset(lengths=(4, 1, 5), seed=0) -> Dataset:
    """Trajectories back to back, each ending in a timeout; row i observes (i, 0) and acts
    (i / 100, u) with u uniform in [-1, 1], so a batch shows which rows it read."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = np.stack([np.arange(n), np.zeros(n)], -1).astype(np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[np.cumsum(lengths) - 1] = 1
    actions = np.stack([np.arange(n) / 100, rng.uniform(-1, 1, n)], -1).astype(np.float32)
    return Dataset.from_arrays(
        observations=obs, actions=actions, rewards=np.zeros(n), terminals=np.zeros(n),
        timeouts=timeouts, next_observations=obs + np.array([1.0, 0.0], np.float32),
    )  # fmt: skip


def rigged(weights, scale, bias, pick=None):
    """A denoiser built with hidden_sizes=(1,) made to compute F = scale * (input[pick] + 10)
    + bias on every output, or F = bias when pick is None. Its input is [s, c_in x (flattened
    window), g, c_noise]; the hidden unit is mish(input[pick] + 10), which is input[pick] + 10 to
    float32 precision for input[pick] > -2."""
    weights = jax.tree.map(jnp.zeros_like, weights)
    first, last = weights["params"]["Dense_0"], weights["params"]["Dense_1"]
    if pick is not None:
        first["kernel"] = first["kernel"].at[pick, 0].set(1.0)
    first["bias"] = first["bias"] + 10.0
    last["kernel"] = last["kernel"] + scale
    last["bias"] = last["bias"] + jnp.asarray(bias, jnp.float32)
    return weights


def hand_setup(window=1, **config):
    """A config with one hidden unit and the weights of an index_dataset() denoiser."""
    config = beso.Config(**HAND, window=window, **config)
    return config, beso.init(config, index_dataset(), jax.random.PRNGKey(0)).params


# --- Preconditioning and the network's inputs ---


def test_preconditioning_coefficients():
    """c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 +
    sd^2) at sd = 0.5 and sigmas from 0.005 to 3, by hand at sigma = 0.5 (1/2, sqrt(1/8),
    sqrt(2)); c_skip + (c_out / sd)^2 = 1 at every sigma."""
    sigma = np.array([0.005, 0.1, 0.5, 1.0, 3.0])
    c_skip, c_out, c_in = (np.asarray(c) for c in beso.scalings(jnp.asarray(sigma), 0.5))
    np.testing.assert_allclose(c_skip, 0.25 / (sigma**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * 0.5 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose([c_skip[2], c_out[2], c_in[2]], [0.5, 8**-0.5, 2**0.5], rtol=1e-6)
    np.testing.assert_allclose(c_skip + (c_out / 0.5) ** 2, 1.0, rtol=1e-6)


def test_denoiser_tends_to_the_identity_at_small_noise():
    """With random weights, D(x; sigma) -> x as sigma -> 0 (c_skip -> 1, c_out -> 0): within
    about c_out ~ sigma of x at sigma = 1e-4, far from it at sigma = 1."""
    config = beso.Config(**TINY, window=2)
    params = beso.init(config, index_dataset(), jax.random.PRNGKey(1)).params
    rng = np.random.default_rng(2)
    obs, goal = jnp.asarray(rng.normal(size=(2, 5, 2)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, 2, 2)), jnp.float32)
    gap = [
        float(jnp.abs(beso.denoise(config, params.online, obs, x, goal, s) - x).max())
        for s in (1e-4, 1.0)
    ]
    assert gap[0] < 1e-3 < 0.05 < gap[1], gap


def test_network_is_fed_c_noise():
    """F reads c_noise = ln(sigma) / 4 (their sigma.log() / 4), the last input: with F =
    c_noise, D(x; sigma) = c_skip x + c_out ln(sigma) / 4."""
    config, params = hand_setup()
    c_noise_index = 2 + 2 + 2  # s (2), the window (1 x 2), g (2), then c_noise
    weights = rigged(params.online, 1.0, -10.0, pick=c_noise_index)
    x = jnp.array([[[0.3, -0.6]]])
    for sigma in (0.1, 1.0):
        got = beso.denoise(config, weights, jnp.zeros((1, 2)), x, jnp.zeros((1, 2)), sigma)
        c_skip, c_out, _ = beso.scalings(sigma, 0.5)
        np.testing.assert_allclose(got, c_skip * x + c_out * np.log(sigma) / 4, rtol=1e-5)


# --- Noise levels and the schedule ---


def truncated_log_logistic_cdf(sigma, loc, scale, low, high):
    cdf = lambda s: 1 / (1 + np.exp(-(np.log(s) - loc) / scale))  # noqa: E731
    return (cdf(sigma) - cdf(low)) / (cdf(high) - cdf(low))


@pytest.mark.parametrize("low, high", [(0.005, 1.0), (0.05, 1.0)])
def test_training_noise_is_truncated_log_logistic(low, high):
    """20,000 draws at their kitchen (0.005) and block-push (0.05) ranges lie in [low, high],
    and their KS distance to the truncated log-logistic CDF (loc ln 0.5, scale 0.5) is below
    0.0138 (the 0.1% critical value, 1.95 / sqrt(n)); the untruncated CDF, which puts 20% of
    the mass above 1, is rejected."""
    n = 20_000
    draw = jax.jit(beso.sample_sigmas, static_argnums=1)
    sigma = np.sort(np.asarray(draw(jax.random.PRNGKey(3), (n,), 0.5, 0.5, low, high), np.float64))
    assert sigma.min() >= np.float32(low) and sigma.max() <= np.float32(high)
    empirical_high, empirical_low = np.arange(1, n + 1) / n, np.arange(n) / n
    model = truncated_log_logistic_cdf(sigma, np.log(0.5), 0.5, low, high)
    ks = max(np.abs(empirical_high - model).max(), np.abs(empirical_low - model).max())
    assert ks < 1.95 / np.sqrt(n), ks
    untruncated = 1 / (1 + np.exp(-(np.log(sigma) - np.log(0.5)) / 0.5))
    assert np.abs(empirical_high - untruncated).max() > 0.1


def test_exponential_schedule():
    """Their get_sigmas_exponential: exp(linspace(ln sigma_max, ln sigma_min, n)), then 0. For
    n = 3 on [0.005, 1]: 1, sqrt(0.005), 0.005, 0."""
    np.testing.assert_allclose(
        beso.exponential_sigmas(3, 0.005, 1.0), [1.0, np.sqrt(0.005), 0.005, 0.0], rtol=1e-5
    )
    expected = np.append(np.exp(np.linspace(np.log(2.0), np.log(0.05), 5)), 0.0)
    np.testing.assert_allclose(beso.exponential_sigmas(5, 0.05, 2.0), expected, rtol=1e-5)


# --- Samplers and guidance ---


def test_ddim_step_by_hand():
    """sigma 1 -> 0.25: x' = 0.25 x + 0.75 D, so x = (1, -2), D = (0.2, 0.4) give (0.4, -0.2);
    the last step (sigma' = 0) returns D."""
    x, denoised = jnp.array([1.0, -2.0]), jnp.array([0.2, 0.4])
    np.testing.assert_allclose(beso.ddim_step(x, denoised, 1.0, 0.25), [0.4, -0.2], rtol=1e-6)
    np.testing.assert_allclose(beso.ddim_step(x, denoised, 0.005, 0.0), denoised, rtol=1e-6)


def test_euler_ancestral_step_by_hand():
    """sigma 1 -> 0.5: up = min(0.5, sqrt(0.25 (1 - 0.25) / 1)) = sqrt(0.1875), down =
    sqrt(0.25 - 0.1875) = 0.25; x = 1, D = 0.2, z = 0.3: x' = 1 + (0.25 - 1)(1 - 0.2) / 1 +
    0.3 sqrt(0.1875) = 0.4 + 0.3 sqrt(0.1875). The last step returns D, its noise unused."""
    got = beso.euler_ancestral_step(jnp.array(1.0), jnp.array(0.2), 1.0, 0.5, jnp.array(0.3))
    np.testing.assert_allclose(got, 0.4 + 0.3 * np.sqrt(0.1875), rtol=1e-6)
    last = beso.euler_ancestral_step(jnp.array(1.0), jnp.array(0.2), 0.005, 0.0, jnp.array(5.0))
    np.testing.assert_allclose(last, 0.2, rtol=1e-6)


def test_guidance_by_hand():
    """F = g_x (the goal's first entry): D_c = c_skip x + c_out g_x, and D_u (goal zeroed) =
    c_skip x, so the guided D = c_skip x + cond_lambda c_out g_x, at lambda 0, 1 and 2.5."""
    goal_x_index = 2 + 2  # s (2), the window (1 x 2), then g
    x, obs, goal = jnp.array([[[0.3, -0.6]]]), jnp.zeros((1, 2)), jnp.array([[0.8, 0.0]])
    c_skip, c_out, _ = beso.scalings(0.5, 0.5)
    for weight in (0.0, 1.0, 2.5):
        config, params = hand_setup(cond_lambda=weight)
        weights = rigged(params.online, 1.0, -10.0, pick=goal_x_index)
        got = beso.guided_denoise(config, weights, obs, x, goal, 0.5)
        np.testing.assert_allclose(got, c_skip * x + weight * c_out * 0.8, rtol=1e-5)


def test_ddim_sampler_and_act_by_hand():
    """A constant F = b (window 2, so b holds two actions) makes D(x; sigma) = c_skip x + c_out
    b; three DDIM steps down 1, sqrt(0.005), 0.005, 0 from x_0, computed here in a loop, give
    D's final value. act (deterministic: x_0 = 0) returns the first action of that window,
    clipped to [-1, 1]; here b puts it outside, at 1.2 sigma_data-units."""
    bias = np.array([2.4, -0.4, 0.6, 0.2], np.float32)
    config, params = hand_setup(window=2)
    weights = rigged(params.online, 0.0, bias)
    sigmas = [1.0, np.sqrt(0.005), 0.005, 0.0]

    def loop(x):
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            c_skip, c_out, _ = (float(c) for c in beso.scalings(sigma, 0.5))
            denoised = c_skip * x + c_out * bias.reshape(2, 2)
            x = sigma_next / sigma * x + (1 - sigma_next / sigma) * denoised
        return x

    x0 = np.array([[0.5, -1.0], [0.3, 0.8]], np.float32)
    obs = jnp.zeros(2)
    got = beso.sample_windows(config, weights, obs, obs, jnp.asarray(x0), None)
    np.testing.assert_allclose(got, loop(x0), rtol=1e-5, atol=1e-6)
    action = beso.act(config, params.replace(ema=weights), obs, obs, None, deterministic=True)
    first = loop(np.zeros((2, 2)))[0]
    assert first[0] > 1
    np.testing.assert_allclose(action, np.clip(first, -1, 1), rtol=1e-5)


# --- Loss and update ---


def test_loss_by_hand():
    """F = b = (0.3, -0.1) on each action of a window of 2; rows at sigma 0.5 and 1 with given
    noise: target = (a - c_skip (a + sigma eps)) / c_out, L = mean (b - target)^2 over rows,
    window and action dimensions (computed here in NumPy)."""
    config, params = hand_setup(window=2)
    weights = rigged(params.online, 0.0, [0.3, -0.1, 0.3, -0.1])
    actions = np.array([[[0.5, -0.5], [1.0, 0.0]], [[-0.2, 0.4], [0.0, 0.9]]], np.float32)
    noise = np.array([[[1.0, 0.0], [-1.0, 2.0]], [[0.5, 0.5], [0.0, -1.0]]], np.float32)
    sigma = np.array([0.5, 1.0], np.float32)
    batch = {"observations": jnp.zeros((2, 2)), "actions": jnp.asarray(actions),
             "actor_goals": jnp.ones((2, 2))}  # fmt: skip
    loss, info = beso.denoising_loss(
        weights, batch, jnp.asarray(sigma), jnp.asarray(noise), jnp.ones(2), config
    )
    s = sigma[:, None, None]
    c_skip, c_out = 0.25 / (s**2 + 0.25), s * 0.5 / np.sqrt(s**2 + 0.25)
    noised = actions + s * noise
    target = (actions - c_skip * noised) / c_out
    np.testing.assert_allclose(loss, np.mean((np.array([0.3, -0.1]) - target) ** 2), rtol=1e-5)
    denoised = c_skip * noised + c_out * np.array([0.3, -0.1])
    np.testing.assert_allclose(info["denoised_mse"], np.mean((denoised - actions) ** 2), rtol=1e-5)


def test_goal_dropout_zeroes_the_whole_goal():
    """F = g_x: a row whose goal is dropped (keep 0) sees F = 0, the other F = g_x. Rows with
    actions 0 at sigma 1 and noise 0 have target 0, so L = mean over the kept row's F^2 = 0.8^2
    / 2 (two rows; window and action dims alike)."""
    config, params = hand_setup()
    weights = rigged(params.online, 1.0, -10.0, pick=4)
    batch = {"observations": jnp.zeros((2, 2)), "actions": jnp.zeros((2, 1, 2)),
             "actor_goals": jnp.array([[0.8, 0.0], [0.6, 0.0]])}  # fmt: skip
    loss, _ = beso.denoising_loss(
        weights, batch, jnp.ones(2), jnp.zeros((2, 1, 2)), jnp.array([1.0, 0.0]), config
    )
    np.testing.assert_allclose(loss, 0.8**2 / 2, rtol=1e-5)


def test_ema_by_hand():
    """Update n = step + 1 decays by min(ema_decay, (1 + n) / (10 + n)): 2/11 at the first
    update, 0.999 from n = 8991 on."""
    ema, online = {"w": jnp.array(0.0)}, {"w": jnp.array(1.0)}
    np.testing.assert_allclose(beso.ema_update(ema, online, 0.999, 0)["w"], 9 / 11, rtol=1e-6)
    np.testing.assert_allclose(beso.ema_update(ema, online, 0.999, 99)["w"], 9 / 110, rtol=1e-5)
    np.testing.assert_allclose(beso.ema_update(ema, online, 0.999, 20_000)["w"], 1e-3, rtol=1e-4)


def test_update_takes_an_adamw_step_and_moves_the_ema():
    """AdamW's first step moves each weight by -lr (sign(g) + weight_decay w) (Adam's first
    step is lr sign(g), to eps), so |dw + lr wd w| = lr where the gradient is not zero; the
    EMA, decaying by 2/11 at the first update, is then 2/11 of its start plus 9/11 of the new
    weights."""
    dataset = index_dataset()
    config = beso.Config(**TINY, lr=1e-2, weight_decay=0.5)
    state = beso.init(config, dataset, jax.random.PRNGKey(0))
    batch = beso.sample_batch(config, dataset, jax.random.PRNGKey(1))
    new, metrics = jax.jit(lambda s, b: beso.update_on_batch(config, s, b))(state, batch)
    before, after = state.params.online, new.params.online
    for w0, w1 in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        step = np.abs(np.asarray(w1 - w0) + 1e-2 * 0.5 * np.asarray(w0))
        moved = step > 1e-6
        assert moved.mean() > 0.5
        np.testing.assert_allclose(step[moved], 1e-2, rtol=1e-3)
    for e0, w1, e1 in zip(*map(jax.tree.leaves, (state.params.ema, after, new.params.ema)),
                          strict=True):  # fmt: skip
        np.testing.assert_allclose(e1, 2 / 11 * e0 + 9 / 11 * w1, rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1 and np.isfinite(metrics["denoising_loss"])


# --- Batches, acting, sweeps, training ---


def test_windows_repeat_the_last_action_at_a_trajectory_end():
    """Window 3 on trajectories of 4, 1 and 5 rows: action k of a row i's window is row
    min(i + k, F)'s action, F its trajectory's last row; goals are later rows of the same
    trajectory (the last row's is itself)."""
    dataset = index_dataset()
    config = beso.Config(batch_size=256, hidden_sizes=(8,), window=3)
    batch = jax.jit(lambda key: beso.sample_batch(config, dataset, key))(jax.random.PRNGKey(0))
    row = np.asarray(batch["observations"][:, 0]).astype(int)
    final = np.array([3, 3, 3, 3, 4, 9, 9, 9, 9, 9])[row]
    assert batch["actions"].shape == (256, 3, 2) and len(np.unique(row)) == 10
    window_rows = np.rint(np.asarray(batch["actions"][..., 0]) * 100).astype(int)
    np.testing.assert_array_equal(
        window_rows, np.minimum(row[:, None] + np.arange(3), final[:, None])
    )
    np.testing.assert_array_equal(
        batch["actions"][..., 1], np.asarray(dataset.actions)[window_rows, 1]
    )
    goal = np.asarray(batch["actor_goals"][:, 0]).astype(int)
    assert ((goal > row) | (row == final)).all() and (goal <= final).all()


def test_act_shapes_keys_and_bounds():
    """(d,) and (B, d) inputs give (A,) and (B, A) actions in [-1, 1]; deterministic actions do
    not depend on the key, sampled ones do, and Euler-ancestral samples too."""
    for sampler in ("ddim", "euler_ancestral"):
        config = beso.Config(**TINY, window=2, sampler=sampler)
        params = beso.init(config, index_dataset(), jax.random.PRNGKey(0)).params
        obs, goal = jnp.zeros((5, 2)), jnp.ones((5, 2))
        act = jax.jit(functools.partial(beso.act, config, params), static_argnums=3)
        single = act(obs[0], goal[0], jax.random.PRNGKey(1), True)
        batched = [act(obs, goal, jax.random.PRNGKey(k), True) for k in (1, 2)]
        sampled = [act(obs, goal, jax.random.PRNGKey(k), False) for k in (1, 2)]
        assert single.shape == (2,) and batched[0].shape == (5, 2)
        np.testing.assert_array_equal(batched[0], batched[1])
        np.testing.assert_allclose(single, batched[0][0], rtol=1e-5, atol=1e-6)
        assert not np.allclose(sampled[0], sampled[1])
        assert (jnp.abs(sampled[0]) <= 1).all()


def test_a_sweep_over_traced_fields_is_one_vmapped_program():
    """Configs differing in the guidance weight, lr, weight decay, EMA decay, goal dropout and
    noise range, stacked and vmapped, give each member's own update and actions."""
    dataset = index_dataset()
    configs = [
        beso.Config(**TINY, cond_lambda=1.0),
        beso.Config(**TINY, cond_lambda=2.0, lr=1e-3, weight_decay=0.0, ema_decay=0.9),
        beso.Config(**TINY, cond_lambda=0.5, cond_mask_prob=0.3, sigma_min=0.05, sigma_max=2.0),
    ]
    state = beso.init(configs[0], dataset, jax.random.PRNGKey(3))
    batch = beso.sample_batch(configs[0], dataset, jax.random.PRNGKey(4))
    obs, goal = jnp.zeros((4, 2)), jnp.array([[3.0, 0.0]] * 4)

    def step_and_act(config):
        new, metrics = beso.update_on_batch(config, state, batch)
        return new, metrics, beso.act(config, state.params, obs, goal, None, True)

    singles = [jax.jit(step_and_act)(c) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(step_and_act))(stacked)
    assert not np.allclose(singles[0][2], singles[1][2])  # guidance changes the action
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_is_finite_and_deterministic():
    """The residual denoiser with a window of 3 (the learning checks train the MLP)."""
    dataset = index_dataset(lengths=(20, 7, 13))
    config = beso.Config(batch_size=32, hidden_sizes=(8, 8), network="residual", window=3,
                         total_updates=100)  # fmt: skip
    run = jax.jit(lambda key: beso.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(0))
    assert int(state.step) == 100
    for name, values in metrics.items():
        assert values.shape == (100,) and np.isfinite(values).all(), name
    again, _ = run(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


# --- Named errors ---


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(sigma_min=1.0, sigma_max=1.0), "sigma_min=1, sigma_max=1: the noise range needs"),
        (dict(sigma_min=2.0), "sigma_min=2, sigma_max=1: the noise range needs 0 < sigma_min"),
        (dict(sigma_min=0.0), "sigma_min=0, sigma_max=1: the noise range needs 0 < sigma_min"),
        (dict(sigma_min=-0.1), "sigma_min=-0.1, sigma_max=1"),
        (dict(cond_lambda=-0.5), "cond_lambda=-0.5 is out of range: the guidance weight must"),
        (dict(cond_lambda=2.0, cond_mask_prob=0.0), "cond_lambda=2 mixes in the unconditional"),
        (dict(network="residual", hidden_sizes=(8, 8, 8)), "pairs of equal widths"),
        (dict(network="residual", hidden_sizes=(8, 16)), "pairs of equal widths"),
        (dict(actor_p_randomgoal=0.2), "actor_p_curgoal + actor_p_trajgoal + actor_p_randomgoal"),
    ],
)
def test_config_errors_are_named(fields, message):
    config = beso.Config(**{**TINY, **fields})
    with pytest.raises(ValueError, match=re.escape(message)):
        beso.check(config)
    with pytest.raises(ValueError, match=re.escape(message)):
        beso.init(config, index_dataset(), jax.random.PRNGKey(0))


def test_traced_configs_pass_the_check():
    """Under jit the traced fields are skipped (the runner checks each concrete config)."""
    traced = jax.jit(lambda c: beso.check(c) or c.cond_lambda)(beso.Config(cond_lambda=-1.0))
    assert float(traced) == -1.0
    with pytest.raises(ValueError, match="cond_lambda"):
        beso.check(beso.Config(cond_lambda=-1.0))


def test_dataset_errors_are_named():
    dataset, key = index_dataset(), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="window=6 does not fit: the longest trajectory has 5"):
        beso.init(beso.Config(**TINY, window=6), dataset, key)
    beso.init(beso.Config(**TINY, window=5), dataset, key)
    with pytest.raises(ValueError, match="continuous actions of shape"):
        discrete = dataset.replace(actions=jnp.zeros(10, jnp.int32))
        beso.init(beso.Config(**TINY), discrete, key)
    with pytest.raises(ValueError, match=r"actions in \[-1, 1\]"):
        beso.init(beso.Config(**TINY), dataset.replace(actions=3 * dataset.actions), key)
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        open_end = dataset.replace(timeouts=dataset.timeouts.at[-1].set(0))
        beso.init(beso.Config(**TINY), open_end, key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: beso.init(beso.Config(**TINY), d, key))(dataset)


@pytest.mark.parametrize(
    "field, value",
    [("sampler", "heun"), ("network", "gpt"), ("window", 0), ("num_sampling_steps", 0),
     ("cond_mask_prob", 1.5), ("cond_lambda", -1), ("sigma_min", 0), ("ema_decay", 1.5)],
)  # fmt: skip
def test_runner_refuses_nonsense_fields(field, value):
    with pytest.raises(config_lib.FieldOutOfRange, match=field):
        config_lib.make_config(beso.Config, {field: value})


# --- Learning ---


def bimodal_dataset(n=512, length=8, seed=0) -> Dataset:
    """One observation and goal, (0.3, -0.2), and actions +(0.7, 0.7) or -(0.7, 0.7) with equal
    probability; trajectories of 8 rows."""
    rng = np.random.default_rng(seed)
    actions = rng.choice([-1.0, 1.0], n)[:, None] * np.array([0.7, 0.7], np.float32)
    obs = np.tile(np.array([0.3, -0.2], np.float32), (n, 1))
    timeouts = np.zeros(n, np.float32)
    timeouts[length - 1 :: length] = 1
    return Dataset.from_arrays(
        observations=obs, actions=actions, rewards=np.zeros(n), terminals=np.zeros(n),
        timeouts=timeouts, next_observations=obs,
    )  # fmt: skip


def mode_masses(actions, radius=0.2):
    """Fractions of actions within ``radius`` of +(0.7, 0.7), of -(0.7, 0.7), and of the
    midpoint (0, 0) between them."""
    actions = np.asarray(actions)
    distance = lambda centre: np.linalg.norm(actions - centre, axis=-1)  # noqa: E731
    mode = np.array([0.7, 0.7])
    return [float((distance(c) < radius).mean()) for c in (mode, -mode, 0 * mode)]


@pytest.mark.slow
def test_beso_reproduces_a_bimodal_action_distribution_that_gaussian_bc_cannot():
    """2000 updates (batch 256, 64x64, lr 1e-3, otherwise BESO's defaults), then 2000 sampled
    actions for the one (s, g); fractions within 0.2 of +mode / -mode / the midpoint (0, 0),
    measured over training seeds 0, 1, 2 (2000 updates take ~10 s on 2 cores):

    * BESO, 10 DDIM steps: (0.48, 0.45, 0.011), (0.48, 0.46, 0.009), (0.47, 0.46, 0.009);
      10 Euler-ancestral steps: (0.53, 0.45, 0.002), (0.53, 0.46, 0.002), (0.52, 0.46, 0.004).
    * BESO, their 3 steps: DDIM (0.32, 0.27, 0.074), (0.30, 0.29, 0.074), (0.32, 0.28, 0.079),
      Euler-ancestral alike. Their first step lands on D(x; 1), near the posterior mean, which
      lies anywhere between the modes, where the denoiser at the next level (sigma = 0.07) saw
      no data and stays close to the identity; a 4 x 128 residual denoiser after 10,000 updates
      does little better (0.38, 0.31 at the modes).
    * GCBC (unit-std Gaussian, 500 updates): its mean, which deterministic acting takes, is
      (0.05 to 0.07, same), at the midpoint; its samples: (0.011, 0.014, 0.022).
    * The maximum-likelihood Gaussian (mean 0.06, std 0.70 per dimension): (0.018, 0.013, 0.036).

    The thresholds: with 10 steps each mode >= 0.4 and the midpoint <= 0.05; with 3 steps each
    mode >= 0.2; Gaussian BC < 0.05 at each mode."""
    dataset = bimodal_dataset()
    obs = jnp.tile(dataset.observations[:1], (2000, 1))
    config = beso.Config(batch_size=256, hidden_sizes=(64, 64), total_updates=2000, lr=1e-3)
    state, _ = jax.jit(lambda key: beso.train(config, dataset, key))(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(9)
    for sampler in ("ddim", "euler_ancestral"):
        many = config.replace(num_sampling_steps=10, sampler=sampler)
        plus, minus, middle = mode_masses(beso.act(many, state.params, obs, obs, key))
        assert plus >= 0.4 and minus >= 0.4 and middle <= 0.05, (sampler, plus, minus, middle)
    plus, minus, middle = mode_masses(beso.act(config, state.params, obs, obs, key))
    assert plus >= 0.2 and minus >= 0.2, (plus, minus, middle)

    bc = gcbc.Config(batch_size=256, hidden_sizes=(64, 64), total_updates=500, lr=1e-3)
    bc_state, _ = jax.jit(lambda key: gcbc.train(bc, dataset, key))(jax.random.PRNGKey(0))
    mean = gcbc.act(bc, bc_state.params, obs[:1], obs[:1], None, deterministic=True)
    assert mode_masses(mean) == [0.0, 0.0, 1.0], mean
    plus, minus, _ = mode_masses(gcbc.act(bc, bc_state.params, obs, obs, key))
    assert plus < 0.05 and minus < 0.05, (plus, minus)
    actions = np.asarray(dataset.actions)
    fitted = actions.mean(0) + actions.std(0) * np.random.default_rng(0).normal(size=(2000, 2))
    plus, minus, _ = mode_masses(fitted)
    assert plus < 0.05 and minus < 0.05, (plus, minus)


@pytest.mark.slow
def test_reaches_goals_in_an_open_square():
    """Noisy straight lines toward random targets (tests/test_gc_bc_ivl_iql.py's data); after
    1000 updates (batch 256, 64x64, lr 1e-3; ~10 s on 2 cores) the share of 200 random goals
    reached within 0.05 in 60 steps, training seeds 0 / 1 / 2: deterministic (x_0 = 0) 0.85 /
    0.84 / 0.71, sampled 0.70 / 0.70 / 0.73; untrained 0.01-0.03 and 0.05-0.07. GCBC, same
    budget (seed 0): 1.00 deterministic, 0.92 sampled: its mean is the expert's direction, while
    BESO learns the noisy actions' whole distribution. Thresholds: 0.6, 0.5 and 0.2."""
    dataset = straight_line_dataset(jax.random.PRNGKey(0))
    config = beso.Config(batch_size=256, hidden_sizes=(64, 64), total_updates=1000, lr=1e-3)
    state, _ = jax.jit(lambda key: beso.train(config, dataset, key))(jax.random.PRNGKey(0))

    @functools.partial(jax.jit, static_argnums=2)
    def success(params, rng, deterministic):
        start_key, goal_key, act_key = jax.random.split(rng, 3)
        x = jax.random.uniform(start_key, (200, 2))
        goal = jax.random.uniform(goal_key, (200, 2))

        def step(carry, key):
            x, done = carry
            x = jnp.clip(x + 0.05 * beso.act(config, params, x, goal, key, deterministic), 0, 1)
            return (x, done | (jnp.linalg.norm(x - goal, axis=-1) < 0.05)), None

        keys = jax.random.split(act_key, 60)
        return jax.lax.scan(step, (x, jnp.zeros(200, bool)), keys)[0][1].mean()

    untrained = beso.init(config, dataset, jax.random.PRNGKey(0)).params
    key = jax.random.PRNGKey(2)
    assert success(state.params, key, True) >= 0.6
    assert success(state.params, key, False) >= 0.5
    assert success(untrained, key, True) <= 0.2
