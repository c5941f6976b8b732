"""f-DVL: the three dual V losses on hand-computed batches (gradients included: the clip, and
reverse-KL's stop-gradient on z_max), the V loss on the target critics over the batch's and the
uniform actions, the Huber critic loss, the AWR actor loss, the step order, jit/vmap agreement,
determinism, named errors for bad datasets and configs, and learning on a Pendulum dataset."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax import agents
from rljax.agents import fdvl
from rljax.data import Dataset
from rljax.runner.config import FieldOutOfRange, make_config, member_configs

TINY = dict(batch_size=32, hidden_sizes=(16, 16))


def constant_net(params, value):
    """The same network made to output ``value`` everywhere: zero weights, last bias = value."""
    params = jax.tree.map(jnp.zeros_like, params)
    layers = params["params"]
    layers = layers.get("VmapCritic_0", layers)  # a TwinCritic nests its layers one level deeper
    last = max((k for k in layers if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    layers[last]["bias"] = jnp.broadcast_to(jnp.asarray(value), layers[last]["bias"].shape)
    return params


def batch_of(dataset: Dataset, n=None) -> dict:
    keys = ("observations", "actions", "rewards", "terminals", "next_observations")
    return {k: getattr(dataset, k)[:n] for k in keys}


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def hand_batch():
    return {
        "observations": jnp.zeros((2, 3)),
        "actions": jnp.array([[0.0, 0.0], [1.0, 0.0]]),
        "rewards": jnp.array([1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0]),
        "next_observations": jnp.zeros((2, 3)),
    }


def constant_params(config, **constants):
    """f-DVL params whose networks named in ``constants`` output those constants."""
    state = fdvl.init(config, synthetic_dataset(), jax.random.PRNGKey(0))
    nets = {k: constant_net(getattr(state.params, k), v) for k, v in constants.items()}
    return state, state.params.replace(**nets)


def mean_loss_and_grad(loss, x):
    """The batch mean of an elementwise loss and its gradient with respect to each x."""
    return jax.value_and_grad(lambda x: loss(x).mean())(jnp.asarray(x, jnp.float32))


# --- The three dual V losses, elementwise in x = min_i Qbar_i(s, a) - V(s) ---


def test_chi_square_loss_by_hand():
    """l = alpha max(x + x^2/4, 0) - (1 - alpha) x, alpha = 0.7, x = (2, -1, -6):
    x + x^2/4 = (3, -0.75, 3); l = (2.1 - 0.6, 0 + 0.3, 2.1 + 1.8) = (1.5, 0.3, 3.9), mean 1.9.
    dl/dx = alpha (1 + x/2) [x + x^2/4 > 0] - (1 - alpha) = (1.1, -0.3, -1.7): inside (-4, 0)
    only the linear term pulls; below -4 the quadratic pushes V down again."""
    loss, grad = mean_loss_and_grad(lambda x: fdvl.chi_square_loss(x, 0.7), [2.0, -1.0, -6.0])
    np.testing.assert_allclose(loss, 1.9, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([1.1, -0.3, -1.7]) / 3, rtol=1e-5)
    # alpha = 1 (the MuJoCo command): no linear term, and no gradient at all inside (-4, 0).
    loss, grad = mean_loss_and_grad(lambda x: fdvl.chi_square_loss(x, 1.0), [2.0, -1.0, -6.0])
    np.testing.assert_allclose(loss, 2.0, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([2.0, 0.0, -2.0]) / 3, rtol=1e-5, atol=1e-7)


def test_total_variation_loss_by_hand():
    """l = alpha max(x, 0) - (1 - alpha) x, alpha = 0.8, x = (2, -1, -6):
    l = (1.6 - 0.4, 0.2, 1.2), mean 2.6 / 3; dl/dx = 0.8 [x > 0] - 0.2 = (0.6, -0.2, -0.2).
    V settles where P(x > 0) = (1 - alpha) / alpha, the 75% quantile of Q here."""
    loss, grad = mean_loss_and_grad(lambda x: fdvl.total_variation_loss(x, 0.8), [2.0, -1.0, -6.0])
    np.testing.assert_allclose(loss, 2.6 / 3, rtol=1e-6)
    np.testing.assert_allclose(grad, np.array([0.6, -0.2, -0.2]) / 3, rtol=1e-5)


def test_reverse_kl_loss_by_hand_with_the_clip():
    """alpha = 2, max_clip = 5, x = (1, -2, 12): z = (0.5, -1, min(6, 5) = 5), z_max = 5.
    l = e^(z - 5) - z e^-5 - e^-5 = (e^-4.5 - 1.5 e^-5, e^-6, 1 - 6 e^-5).
    dl/dx = (e^(z - 5) - e^-5) / alpha where z is not clipped, 0 where it is."""
    e = np.exp
    loss, grad = mean_loss_and_grad(lambda x: fdvl.reverse_kl_loss(x, 2.0, 5.0), [1.0, -2.0, 12.0])
    expected = (e(-4.5) - 1.5 * e(-5), e(-6), 1 - 6 * e(-5))
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-5)
    expected_grad = np.array([(e(-4.5) - e(-5)) / 2, (e(-6) - e(-5)) / 2, 0.0]) / 3
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-9)


def test_reverse_kl_holds_z_max_fixed():
    """alpha = 2, x = (1, -2, 6): z = (0.5, -1, 3), z_max = 3 (unclipped, so a gradient through
    it would show). With z_max held fixed, dl_i/dx_i = (e^(z_i - 3) - e^-3) / 2: the largest
    row's gradient is 0, and differentiating through z_max would give other numbers."""
    e = np.exp
    x = [1.0, -2.0, 6.0]
    loss, grad = mean_loss_and_grad(lambda x: fdvl.reverse_kl_loss(x, 2.0, 5.0), x)
    z = np.array([0.5, -1.0, 3.0])
    np.testing.assert_allclose(loss, np.mean(e(z - 3) - z * e(-3) - e(-3)), rtol=1e-5)
    np.testing.assert_allclose(grad, (e(z - 3) - e(-3)) / 2 / 3, rtol=1e-4, atol=1e-9)

    def through_z_max(x):  # the same loss without the stop-gradient
        z = jnp.minimum(x / 2.0, 5.0)
        z_max = jnp.maximum(z.max(), -1.0)
        return jnp.exp(z - z_max) - z * jnp.exp(-z_max) - jnp.exp(-z_max)

    _, other = mean_loss_and_grad(through_z_max, x)
    assert np.abs(np.asarray(other) - np.asarray(grad)).max() > 1e-3


def test_reverse_kl_floors_z_max_at_minus_one():
    """alpha = 2, x = (-4, -6): z = (-2, -3), max -2 < -1 so z_max = -1:
    l = e^(z + 1) - z e - e = (e^-1 + e, e^-2 + 2e)."""
    e = np.exp
    loss, _ = mean_loss_and_grad(lambda x: fdvl.reverse_kl_loss(x, 2.0, 5.0), [-4.0, -6.0])
    np.testing.assert_allclose(loss, np.mean([e(-1) + e(1), e(-2) + 2 * e(1)]), rtol=1e-5)


@pytest.mark.parametrize(
    "f, alpha, expected",
    [("chi_square", 0.7, 1.9), ("total_variation", 0.8, 2.6 / 3)],
)
def test_dual_value_loss_dispatches_on_f(f, alpha, expected):
    config = fdvl.Config(f=f, alpha=alpha)
    np.testing.assert_allclose(
        fdvl.dual_value_loss(jnp.array([2.0, -1.0, -6.0]), config), expected, rtol=1e-6
    )


# --- The V loss on the networks ---


def test_value_loss_uses_the_smaller_target_critic():
    """Q = 10 online, Qbar = (1, 3) target, V = 0.5: x = min Qbar - V = 0.5 on every row, the
    uniform-action rows included. chi_square, alpha = 1: l = 0.5 + 0.25 / 4 = 0.5625 (the
    online critics would give 10.6^2). dL/dV = -(1 + x / 2) = -1.25 through V's last bias."""
    config = fdvl.Config(hidden_sizes=(4, 4), alpha=1.0)
    state, params = constant_params(config, value=0.5, critic=jnp.array([[10.0], [10.0]]))
    target = constant_net(params.critic, jnp.array([[1.0], [3.0]]))
    batch = hand_batch()
    uniform = fdvl.uniform_actions(config, batch["actions"], jax.random.PRNGKey(1))
    assert uniform.shape == (1, 2, 2)  # sample_random_times defaults to 1 (the README's)

    def loss(value_params):
        return fdvl.value_loss(value_params, params, target, batch, uniform, config)

    np.testing.assert_allclose(loss(params.value), [0.5625, 0.5], rtol=1e-6)
    grads = jax.grad(lambda v: loss(v)[0])(params.value)
    np.testing.assert_allclose(grads["params"]["Dense_2"]["bias"], [-1.25], rtol=1e-5)
    assert "LayerNorm_0" in params.value["params"]  # layer_norm defaults on, in V only
    assert "LayerNorm_0" not in params.critic["params"]["VmapCritic_0"]


def hand_critic():
    """Twin-critic params, hidden width 1, 2-D observations and 1-D actions, with
    Qbar_0 = relu(a + 10) = a + 10 and Qbar_1 = 2 (a + 10) - 5: min Qbar = a + 10 on [-1, 1]."""
    kernel = jnp.zeros((2, 3, 1)).at[:, 2, 0].set(1.0)  # inputs: 2 obs dims, then the action
    slopes, offsets = jnp.array([1.0, 2.0]).reshape(2, 1, 1), jnp.array([[0.0], [-5.0]])
    layers = {
        "Dense_0": {"kernel": kernel, "bias": jnp.full((2, 1), 10.0)},
        "Dense_1": {"kernel": slopes, "bias": offsets},
    }
    return {"params": {"VmapCritic_0": layers}}


def test_value_loss_rows_include_uniform_actions():
    """sample_random_times = 2: the V loss runs on the batch's rows and two uniform actions per
    state, V(s) shared by a state's rows. With min Qbar = a + 10 and V = 9.5, x = a + 0.5 on each
    row; each f's loss is the mean over all 6 rows (reverse_kl's z_max over all 6 too)."""
    config = fdvl.Config(hidden_sizes=(1,), layer_norm=False, sample_random_times=2)
    batch = {
        "observations": jnp.array([[0.1, 0.2], [0.3, -0.4]]),
        "actions": jnp.array([[0.5], [-1.0]]),
    }
    uniform = fdvl.uniform_actions(config, batch["actions"], jax.random.PRNGKey(7))
    assert uniform.shape == (2, 2, 1)
    assert (np.abs(uniform) <= 1).all() and len(np.unique(uniform)) == 4
    value = {"params": {
        "Dense_0": {"kernel": jnp.zeros((2, 1)), "bias": jnp.zeros(1)},
        "Dense_1": {"kernel": jnp.zeros((1, 1)), "bias": jnp.array([9.5])},
    }}  # fmt: skip
    params = fdvl.Params(None, None, value, jnp.zeros(2), jnp.ones(2), action_dim=1)
    x = np.concatenate([[0.5, -1.0], np.asarray(uniform).ravel()]) + 0.5
    for f, alpha in (("chi_square", 0.6), ("total_variation", 0.8), ("reverse_kl", 2.0)):
        config = dataclasses.replace(config, f=f, alpha=alpha)
        loss, v_mean = fdvl.value_loss(value, params, hand_critic(), batch, uniform, config)
        if f == "chi_square":
            expected = 0.6 * np.maximum(x + x**2 / 4, 0) - 0.4 * x
        elif f == "total_variation":
            expected = 0.8 * np.maximum(x, 0) - 0.2 * x
        else:
            z = np.minimum(x / 2, 5.0)
            z_max = max(z.max(), -1.0)
            expected = np.exp(z - z_max) - z * np.exp(-z_max) - np.exp(-z_max)
        np.testing.assert_allclose([loss, v_mean], [expected.mean(), 9.5], rtol=1e-5)
    # sample_random_times = 0: the batch's rows alone.
    none = fdvl.uniform_actions(dataclasses.replace(config, sample_random_times=0),
                                batch["actions"], jax.random.PRNGKey(7))  # fmt: skip
    assert none.shape == (0, 2, 1)
    config = dataclasses.replace(config, f="total_variation", alpha=0.8)
    loss, _ = fdvl.value_loss(value, params, hand_critic(), batch, none, config)
    np.testing.assert_allclose(loss, np.mean([0.6, 0.1]), rtol=1e-5)  # x = (1, -0.5)


# --- The critics and the actor ---


def test_critic_loss_is_huber_by_hand():
    """V = 2, Q = (0.5, 2), y = r + 0.9 (1 - d) V = (2.8, 2): errors (-2.3, -1.5) and (-0.8, 0).
    delta = 20 (all quadratic): 0.5 e^2 -> (2.645 + 1.125) / 2 + (0.32 + 0) / 2 = 2.045.
    delta = 1: |e| > 1 is linear, 0.5 + (|e| - 1): (1.8 + 1.0) / 2 + 0.32 / 2 = 1.56.
    dL/dQ_1 = mean(clip(e, -delta, delta)) = (-1 - 1) / 2 = -1 for delta = 1."""
    config = fdvl.Config(hidden_sizes=(4, 4), gamma=0.9)
    _, params = constant_params(config, value=2.0, critic=jnp.array([[0.5], [2.0]]))
    loss, q_mean = fdvl.critic_loss(params.critic, params, hand_batch(), config)
    np.testing.assert_allclose([loss, q_mean], [2.045, 1.25], rtol=1e-6)
    config = dataclasses.replace(config, huber_delta=1.0)
    loss, _ = fdvl.critic_loss(params.critic, params, hand_batch(), config)
    np.testing.assert_allclose(loss, 1.56, rtol=1e-6)
    grads = jax.grad(lambda c: fdvl.critic_loss(c, params, hand_batch(), config)[0])(params.critic)
    last_bias = grads["params"]["VmapCritic_0"]["Dense_2"]["bias"]
    np.testing.assert_allclose(last_bias[:, 0], [-1.0, -0.4], rtol=1e-5)


@pytest.mark.parametrize("beta, weight", [(3.0, 100.0), (0.1, np.exp(0.2))])
def test_actor_loss_is_awr_with_weights_clipped_at_100(beta, weight):
    """A = min Qbar - V = 2 - 0 = 2: exp(3 * 2) = 403 is clipped to 100; exp(0.2) is not.
    log pi(a) = sum_j -a_j^2 / 2 - log(2 pi) / 2 = (-1.837877, -2.337877), mean -2.087877."""
    config = fdvl.Config(hidden_sizes=(4, 4), beta=beta)
    _, params = constant_params(config, value=0.0, actor=0.0)
    target = constant_net(params.critic, jnp.array([[2.0], [5.0]]))
    loss, aux = fdvl.actor_loss(params.actor, params, target, hand_batch(), config)
    np.testing.assert_allclose(loss, weight * 2.0878771, rtol=1e-5)
    np.testing.assert_allclose(aux["weight"], weight, rtol=1e-5)
    # The weights carry no gradient: d/dlog_std_j at 0 = -w (mean a_j^2 - 1) = (0.5 w, w).
    grads = jax.grad(lambda a: fdvl.actor_loss(a, params, target, hand_batch(), config)[0])(
        params.actor
    )
    np.testing.assert_allclose(grads["params"]["log_std"], [0.5 * weight, weight], rtol=1e-5)


# --- The step ---


@pytest.mark.parametrize("f", fdvl.DIVERGENCES)
def test_update_order_value_actor_critic_target(f):
    """V first (on the target critics, over the batch and its uniform actions drawn from a key
    split off state.rng); the actor and the critics then use the *new* V; Polyak last."""
    alpha = 2.0 if f == "reverse_kl" else 0.7
    config = fdvl.Config(**TINY, f=f, alpha=alpha, normalize_obs=False,
                         reward_preprocessing="none", tau=0.1)  # fmt: skip
    dataset = synthetic_dataset()
    state = fdvl.init(config, dataset, jax.random.PRNGKey(5))
    batch = batch_of(dataset, 32)
    new, metrics = jax.jit(fdvl.update_on_batch)(config, state, batch)
    rng, key = jax.random.split(state.rng)
    np.testing.assert_array_equal(new.rng, rng)
    uniform = fdvl.uniform_actions(config, batch["actions"], key)
    expected_v, _ = fdvl.value_loss(
        state.params.value, state.params, state.target_critic, batch, uniform, config
    )
    with_new_value = state.params.replace(value=new.params.value)
    expected_pi, _ = fdvl.actor_loss(
        state.params.actor, with_new_value, state.target_critic, batch, config
    )
    expected_q, _ = fdvl.critic_loss(state.params.critic, with_new_value, batch, config)
    np.testing.assert_allclose(metrics["value_loss"], expected_v, rtol=1e-5)
    np.testing.assert_allclose(metrics["actor_loss"], expected_pi, rtol=1e-5)
    np.testing.assert_allclose(metrics["critic_loss"], expected_q, rtol=1e-5)
    stale_q, _ = fdvl.critic_loss(state.params.critic, state.params, batch, config)
    assert abs(float(stale_q) - float(expected_q)) > 1e-6
    target = jax.tree.map(lambda q, t: 0.9 * t + 0.1 * q, new.params.critic, state.target_critic)
    assert_trees_close(new.target_critic, target, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("f", fdvl.DIVERGENCES)
def test_update_agrees_under_jit_and_vmap(f):
    """Two configs that differ in every traced loss coefficient, stacked and vmapped, give each
    member what a jitted update with that config gives."""
    dataset = synthetic_dataset()
    batch = batch_of(dataset, 32)
    alphas = (2.0, 8.0) if f == "reverse_kl" else (1.0, 0.6)
    configs = [
        fdvl.Config(**TINY, f=f, alpha=a, beta=b, max_clip=m, huber_delta=d, actor_lr=lr)
        for a, b, m, d, lr in zip(
            alphas, (3.0, 10.0), (5.0, 1.0), (20.0, 0.5), (3e-4, 1e-3), strict=True
        )
    ]
    state = fdvl.init(configs[0], dataset, jax.random.PRNGKey(6))
    singles = [jax.jit(fdvl.update_on_batch)(c, state, batch) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.vmap(fdvl.update_on_batch, in_axes=(0, None, None))(stacked, state, batch)
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        assert_trees_close(member, single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0][1]["value_loss"], singles[1][1]["value_loss"])


@pytest.mark.parametrize("f", fdvl.DIVERGENCES)
def test_train_is_finite_and_deterministic(f):
    dataset = synthetic_dataset()
    config = fdvl.Config(**TINY, f=f, alpha=8.0 if f == "reverse_kl" else 0.8, total_updates=300)
    run = jax.jit(lambda key: fdvl.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(7))
    again, _ = run(jax.random.PRNGKey(7))
    assert int(state.step) == 300
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
    assert {"value_loss", "critic_loss", "actor_loss", "grad_norm", "q_mean"} <= set(metrics)
    assert_trees_close(state.params, again.params, rtol=0, atol=0)
    assert float(metrics["actor_lr"][-1]) < float(metrics["actor_lr"][0])


# --- Named errors ---


def test_init_names_bad_datasets():
    config = fdvl.Config(**TINY)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fdvl.init(config, synthetic_dataset(action_scale=2.0), jax.random.PRNGKey(0))
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        fdvl.init(config, images, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: fdvl.init(config, d, jax.random.PRNGKey(0)))(synthetic_dataset())
    flat = synthetic_dataset().replace(rewards=jnp.zeros(64))
    with pytest.raises(ValueError, match="reward_preprocessing"):
        fdvl.init(config, flat, jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "field, value",
    [
        ("f", "reverse-KL"),  # the authors' README spelling, which their own code misses
        ("f", "chi-square"),
        ("alpha", 0.0),
        ("sample_random_times", -1),
        ("max_clip", 0.0),
        ("huber_delta", 0.0),
        ("beta", -1.0),
        ("gamma", 1.5),
        ("tau", 0.0),
        ("batch_size", 0),
        ("reward_preprocessing", "mujoco"),
    ],
)
def test_bad_field_values_are_refused_by_name(field, value):
    with pytest.raises(FieldOutOfRange, match=field):
        make_config(fdvl.Config, {field: value})


def test_cross_field_rules():
    """alpha above 1 is a temperature only for reverse_kl; chi_square and total_variation take
    alpha in (0, 1]. check() says so, and the runner reports it as FieldOutOfRange."""
    fdvl.check(fdvl.Config(f="reverse_kl", alpha=8.0))
    fdvl.check(fdvl.Config(f="total_variation", alpha=1.0))
    for f in ("chi_square", "total_variation"):
        with pytest.raises(ValueError, match="alpha must lie in"):
            fdvl.check(fdvl.Config(f=f, alpha=1.5))
    declared = agents.declaration("fdvl")
    with pytest.raises(FieldOutOfRange, match="alpha"):
        member_configs(declared, {"f": "total_variation"}, {"alpha": ["0.8", "1.5"]})
    # A Config built by hand with an unknown f is refused by name too, before anything traces.
    with pytest.raises(ValueError, match="reverse_kl"):
        fdvl.check(fdvl.Config(f="reverse-KL"))
    with pytest.raises(ValueError, match="chi-square, total-variation and reverse-kl"):
        fdvl.init(fdvl.Config(**TINY, f="reverse-kl"), synthetic_dataset(), jax.random.PRNGKey(0))


# --- Learning from a Pendulum dataset ---


@pytest.mark.slow
def test_fdvl_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On the generated Pendulum medium-replay data (as tests/test_offline_learning.py: the
    behaviour SAC stopped at 48k steps, ~23k transitions from random-level play to medium), f-DVL
    with the README's MuJoCo settings (chi_square, alpha 1, one uniform action per state) but
    batch 256 instead of the code's 1024 (the CI budget: 1024 costs ~3x the CPU time) reaches a
    far higher normalized score than BC: 5000 updates, hidden (64, 64), 3 seeds, 20 evaluation
    episodes. Measured when written (final scores, seeds 0-2): BC -46.0 (-46.0, -37.0, -54.9),
    f-DVL 51.0 (34.8, 66.4, 52.0), a margin of 97; with seeds 100-102, BC -41.0 and f-DVL 27.9
    (35.4, 44.0, 4.4), a margin of 69; batch 1024, seeds 0-2: 34.4. The assertion asks for 40,
    under the smaller measured margin, leaving room for seed noise."""
    from rljax.runner.loop import train
    from rljax.runner.spec import RunSpec

    path, metadata = pendulum_medium_replay(tmp_path)

    def scores(algo, **agent):
        spec = RunSpec(
            algo=algo, env=metadata["env"], seeds=3, dataset=str(path), eval_episodes=20,
            agent={"total_updates": 5000, "hidden_sizes": [64, 64], **agent}, chunk_updates=2500,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc, f_dvl = scores("bc"), scores("fdvl", batch_size=256)
    assert f_dvl.mean() >= bc.mean() + 40, (bc, f_dvl)
