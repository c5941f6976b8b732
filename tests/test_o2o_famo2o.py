"""FamO2O (rljax/agents/famo2o.py): the beta encoding and range map, the balance, temperature and
universal-actor losses of both variants on hand-computed batches (with linear networks,
hidden_sizes=(), so numpy can redo them), which networks each loss moves, the phase switch,
the online batch's composition, jit / vmap agreement, determinism, the named errors, and a
learning check (offline then online on Pendulum medium-replay)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import pendulum_medium_replay, synthetic_dataset

from rljax import agents, envs
from rljax.agents import famo2o
from rljax.data import files
from rljax.runner import evaluation
from rljax.runner.config import FieldOutOfRange, make_config

OBS_DIM, ACTION_DIM, D, N = 3, 1, 6, 10000.0
LINEAR = dict(hidden_sizes=(), batch_size=8, total_updates=2, cql_n_actions=2)


def dataset():
    """Pendulum's shapes (obs 3, action 1), actions in [-1, 1]."""
    return synthetic_dataset(n=64, obs_dim=OBS_DIM, action_dim=ACTION_DIM)


def linear(tree):
    """(kernel, bias) of the one Dense layer in a network built with hidden_sizes=()."""
    leaves = {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in
              jax.tree_util.tree_flatten_with_path(tree)[0]}  # fmt: skip
    kernel = next(v for k, v in leaves.items() if "kernel" in k)
    bias = next(v for k, v in leaves.items() if "bias" in k)
    return kernel, bias


def leaf(tree, name):
    return next(
        np.asarray(x, np.float64)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if name in jax.tree_util.keystr(p)
    )


def encode(beta, n=N, d=D):
    """The sinusoid encoding, one entry at a time."""
    out = np.zeros((len(beta), d))
    for row, b in enumerate(beta):
        for i in range(d // 2):
            out[row, 2 * i] = np.sin(b / n ** (2 * i / d))
            out[row, 2 * i + 1] = np.cos(b / n ** (2 * i / d))
    return out


def twin_q(critic_params, obs, action):
    """min over the two linear critics; their kernels are stacked (2, in, 1)."""
    kernel, bias = linear(critic_params)
    x = np.concatenate([obs, action], -1)
    return np.min([x @ kernel[i] + bias[i] for i in range(2)], 0)[:, 0]


def tanh_log_prob(eps, log_std, pre_tanh):
    """log density of tanh(mean + std eps) on (-1, 1), summed over the last axis."""
    gaussian = -0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi)
    return (gaussian - np.log(1 - np.tanh(pre_tanh) ** 2)).sum(-1)


def setup(variant, **changes):
    config = famo2o.Config(variant=variant, **(LINEAR | changes))
    state = famo2o.init(config, dataset(), jax.random.PRNGKey(0))
    # Move the biases off zero so that every term matters.
    params = state.params
    params = params.replace(
        balance=jax.tree.map(lambda x: x + 0.3, params.balance),
        actor=jax.tree.map(lambda x: x - 0.2, params.actor),
        log_temperature=jnp.asarray(-0.4),
    )
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(5, OBS_DIM)).astype(np.float32)
    return config, state.replace(params=params), obs


# --- The encoding and the range ---


def test_sincos_encoding_by_hand():
    beta = np.array([0.5, 1.0, 7.3, 13.9])
    got = famo2o.sincos_encoding(jnp.asarray(beta), N, D)
    np.testing.assert_allclose(got, encode(beta), rtol=1e-5, atol=1e-6)
    assert famo2o.sincos_encoding(jnp.asarray(2.0), N, D).shape == (D,)


@pytest.mark.parametrize("variant, low, high", [("iql", 1.0, 5.0), ("cql", 0.5, 1.5)])
def test_beta_stays_in_the_variant_range(variant, low, high):
    """The default ranges (the authors' AWR range, and the CQL locomotion weight on Q), mapped
    with (x + 1) / 2: x = -1 gives beta_min (the authors' jax_cql map would give 2 min - max),
    and sampled, mode and per-row betas stay inside, however far the balance mean goes."""
    config, state, obs = setup(variant)
    assert famo2o.beta_range(config) == (low, high)
    np.testing.assert_allclose(famo2o.to_beta(config, jnp.array([-1.0, 0.0, 1.0])),
                               [low, (low + high) / 2, high])  # fmt: skip
    for shift in (-50.0, 0.0, 50.0):
        balance = jax.tree.map(lambda x: x + shift, state.params.balance)  # noqa: B023
        sampled, _ = famo2o.sample_beta(config, balance, obs, jax.random.PRNGKey(3))
        mode = famo2o.balance_mode(config, balance, obs)
        online = famo2o._row_beta(config, balance, obs, jax.random.PRNGKey(4), True)
        for beta in (sampled, mode, online):
            assert beta.shape == (5,)
            assert (low <= beta).all() and (beta <= high).all(), (shift, beta)
    offline = famo2o._row_beta(config, None, np.zeros((4000, 3)), jax.random.PRNGKey(5), False)
    assert low <= offline.min() < low + 0.01 and high - 0.01 < offline.max() <= high
    # within 4 standard errors of the uniform's mean
    sigma = (high - low) / np.sqrt(12 * 4000)
    np.testing.assert_allclose(offline.mean(), (low + high) / 2, atol=4 * sigma)


# --- Losses by hand ---


def balance_sample_by_hand(config, params, obs, rng, low, high):
    """x, log pi_b(x|s), beta and the universal policy's input for the balance loss's keys."""
    beta_key, action_key = jax.random.split(rng)
    kernel, bias = linear(params.balance)
    log_std = leaf(params.balance, "log_std")
    mean = obs @ kernel + bias
    eps = np.asarray(jax.random.normal(beta_key, mean.shape), np.float64)
    pre = mean + np.exp(log_std) * eps
    log_prob = tanh_log_prob(eps, log_std, pre)
    beta = (np.tanh(pre[:, 0]) + 1) / 2 * (high - low) + low
    return log_prob, beta, np.concatenate([obs, encode(beta)], -1), action_key


def test_iql_balance_loss_by_hand():
    """L_b = mean(alpha_b log pi_b(x|s) - min Qbar(s, a~)), a~ from the Gaussian pi_u at
    enc(map(x)); it moves the balance model only (pi_u's gradient is zero)."""
    config, state, obs = setup("iql")
    params, rng, temperature = state.params, jax.random.PRNGKey(7), 0.7
    log_prob, beta, inputs, action_key = balance_sample_by_hand(config, params, obs, rng, 1, 5)
    kernel, bias = linear(params.actor)
    log_std = np.clip(leaf(params.actor, "log_std"), -5, 2)
    eps = np.asarray(jax.random.normal(action_key, (5, ACTION_DIM)), np.float64)
    action = np.tanh(inputs @ kernel + bias) + np.exp(log_std) * eps
    expected = np.mean(temperature * log_prob - twin_q(state.target_critic, obs, action))

    loss, (got_log_prob, got_beta) = famo2o.balance_loss(
        params.balance, params, state.target_critic, obs, temperature, rng, config
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(got_log_prob, log_prob, rtol=1e-4)
    np.testing.assert_allclose(got_beta, beta, rtol=1e-5)

    grads = jax.grad(lambda b, p: famo2o.balance_loss(
        b, p, state.target_critic, obs, temperature, rng, config)[0], argnums=(0, 1))(
        params.balance, params)  # fmt: skip
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[0]))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads[1].actor))


def test_cql_balance_loss_by_hand():
    """CQL variant: L_b = -mean(min Q(s, a~)), a~ from pi_u's tanh-Gaussian (no entropy term)."""
    config, state, obs = setup("cql")
    params, rng = state.params, jax.random.PRNGKey(8)
    _, beta, inputs, action_key = balance_sample_by_hand(config, params, obs, rng, 0.5, 1.5)
    out = inputs @ linear(params.actor)[0] + linear(params.actor)[1]
    mean, raw = out[:, :ACTION_DIM], out[:, ACTION_DIM:]
    log_std = np.clip(
        leaf(params.actor, "log_std_multiplier") * raw + leaf(params.actor, "log_std_offset"),
        -20, 2,
    )  # fmt: skip
    eps = np.asarray(jax.random.normal(action_key, (5, ACTION_DIM)), np.float64)
    action = np.tanh(mean + np.exp(log_std) * eps)
    expected = -np.mean(twin_q(params.critic, obs, action))
    loss, (_, got_beta) = famo2o.balance_loss(
        params.balance, params, params.critic, obs, 0.0, rng, config
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(got_beta, beta, rtol=1e-5)
    actor_grad = jax.grad(
        lambda p: famo2o.balance_loss(params.balance, p, params.critic, obs, 0.0, rng, config)[0]
    )(params).actor
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(actor_grad))


def test_balance_temperature_loss_by_hand():
    """L_ab = alpha_b (H_b - H_target): its gradient in log alpha_b is the loss itself."""
    loss, grad = jax.value_and_grad(famo2o.balance_temperature_loss)(jnp.log(2.0), 0.3, -0.5)
    np.testing.assert_allclose([loss, grad], [2.0 * 0.8, 2.0 * 0.8], rtol=1e-6)


def online_beta(config, state, obs):
    """The actor's beta as the online step draws it, from the balance params given."""
    return lambda balance: famo2o._row_beta(config, balance, obs, jax.random.PRNGKey(9), True)


def test_iql_universal_actor_loss_by_hand():
    """L_u = -mean(min(exp(beta (min Qbar(s, a) - V(s))), 100) log pi_u(a|s, enc(beta))), beta
    per row; the balance model gets no gradient through the online beta."""
    config, state, obs = setup("iql")
    params = state.params
    actions = np.array([[0.9], [-0.4], [0.1], [-1.0], [0.5]])
    batch = {"observations": obs, "actions": actions}
    beta = np.array([1.0, 2.5, 4.9, 3.0, 30.0])  # the last one's weight clips at 100
    kernel, bias = linear(params.value)
    advantage = twin_q(state.target_critic, obs, actions) - (obs @ kernel + bias)[:, 0]
    weight = np.minimum(np.exp(beta * advantage), 100.0)
    kernel, bias = linear(params.actor)
    mean = np.tanh(np.concatenate([obs, encode(beta)], -1) @ kernel + bias)
    log_std = np.clip(leaf(params.actor, "log_std"), -5, 2)
    log_pi = (-0.5 * ((actions - mean) / np.exp(log_std)) ** 2 - log_std
              - 0.5 * np.log(2 * np.pi)).sum(-1)  # fmt: skip
    loss, aux = famo2o.awr_actor_loss(
        params.actor, params, state.target_critic, batch, jnp.asarray(beta), config
    )
    np.testing.assert_allclose(loss, -np.mean(weight * log_pi), rtol=1e-4)
    np.testing.assert_allclose(aux["weight"], weight.mean(), rtol=1e-4)

    beta_of = online_beta(config, state, obs)
    balance_grad = jax.grad(
        lambda b: famo2o.awr_actor_loss(
            params.actor, params, state.target_critic, batch, beta_of(b), config
        )[0]
    )(params.balance)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(balance_grad))  # fmt: skip


def test_cql_universal_actor_loss_by_hand():
    """CQL variant: L_u = mean(alpha log pi_u(a~|s, enc(beta)) - beta min Q(s, a~)), beta per
    row; the balance model gets no gradient through the online beta."""
    config, state, obs = setup("cql")
    params, rng = state.params, jax.random.PRNGKey(10)
    beta = np.array([0.5, 0.7, 1.0, 1.2, 1.5])
    out = np.concatenate([obs, encode(beta)], -1) @ linear(params.actor)[0]
    out = out + linear(params.actor)[1]
    mean, raw = out[:, :ACTION_DIM], out[:, ACTION_DIM:]
    log_std = leaf(params.actor, "log_std_multiplier") * raw + leaf(params.actor, "log_std_offset")
    eps = np.asarray(jax.random.normal(rng, (5, ACTION_DIM)), np.float64)
    pre = mean + np.exp(log_std) * eps
    log_pi = tanh_log_prob(eps, log_std, pre)
    alpha = np.exp(-0.4)
    expected = np.mean(alpha * log_pi - beta * twin_q(params.critic, obs, np.tanh(pre)))
    loss, got_log_pi = famo2o.q_weighted_actor_loss(
        params.actor, params, obs, jnp.asarray(beta), rng, config
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    np.testing.assert_allclose(got_log_pi, log_pi, rtol=1e-4, atol=1e-5)

    beta_of = online_beta(config, state, obs)
    balance_grad = jax.grad(lambda b: famo2o.q_weighted_actor_loss(
        params.actor, params, obs, beta_of(b), rng, config)[0])(params.balance)  # fmt: skip
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(balance_grad))


@pytest.mark.parametrize("variant", ["iql", "cql"])
def test_a_gradient_step_moves_every_network(variant):
    """One offline step changes the universal policy, the balance model, the critics and the
    temperature (and V in the iql variant); its metrics are finite and its betas in range."""
    config, state, _ = setup(variant)
    data = dataset()
    new, metrics = jax.jit(lambda s: famo2o.update(config, data, s))(state)
    names = ["actor", "balance", "critic", "log_temperature"] + (
        ["value"] if variant == "iql" else []
    )
    for name in names:
        before, after = getattr(state.params, name), getattr(new.params, name)
        moved = [
            not np.allclose(a, b)
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
        ]
        assert any(moved), f"{variant}: {name} did not move"  # fmt: skip
    low, high = famo2o.beta_range(config)
    for key, value in metrics.items():
        assert np.isfinite(value), (key, value)
    assert low <= metrics["beta_mean"] <= high and low <= metrics["balance_beta_mean"] <= high


# --- The online phase ---


def online_config(variant="iql", **changes):
    return famo2o.Config(
        variant=variant, **(LINEAR | dict(online_steps=6, num_envs=2, utd_ratio=2) | changes)
    )


ENV = envs.make("Pendulum-v1", unit_actions=True)


@pytest.mark.parametrize("variant", ["iql", "cql"])
def test_begin_online_carries_the_offline_learner(variant):
    """The online state: the offline params, target critics, optimizers and reward transform
    unchanged; an empty replay of min(replay_size, online_steps) rows; reset envs."""
    config = online_config(variant, replay_size=4)
    data = dataset()
    state, _ = famo2o.train(config, data, jax.random.PRNGKey(0))
    online = famo2o.begin_online(config, data, *ENV, state)
    assert isinstance(online, famo2o.OnlineState) and type(online.params) is famo2o.Params
    for name in ("params", "target_critic", "actor_opt", "balance_opt", "reward_scale", "step"):
        for a, b in zip(jax.tree.leaves(getattr(state, name)),
                        jax.tree.leaves(getattr(online, name)), strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert online.replay.data["observations"].shape == (4, OBS_DIM)
    assert int(online.replay.size) == 0 and online.obs.shape == (2, OBS_DIM)


def test_online_batches_hold_the_configured_share_of_dataset_rows():
    """mixed_batch: with offline_fraction 0 no dataset row is drawn after the boundary; with
    0.25, the first quarter of the batch exactly (dataset rewards 1, online rows' -1)."""
    data = dataset()
    offline = {k: jnp.ones_like(getattr(data, k)) for k in famo2o.ONLINE_KEYS}
    replay = famo2o.replay_init(16, data)
    rows = {k: -jnp.ones((16, *v.shape[1:])) for k, v in replay.data.items()}
    replay = famo2o.replay_add(replay, rows)
    for fraction, expected in ((0.0, 0), (0.25, 16), (1.0, 64)):
        batch = famo2o.mixed_batch(offline, replay, fraction, 64, jax.random.PRNGKey(0))
        assert int((batch["rewards"] > 0).sum()) == expected
        assert (batch["rewards"][:expected] > 0).all()


@pytest.mark.parametrize("variant", ["iql", "cql"])
def test_update_online_jit_vmap_and_determinism(variant):
    """update_online under jit equals a vmapped pair of configs (offline_fraction 0 and 1)
    member by member, runs twice to the same numbers, and reports finite losses and the
    training episodes' fields (never episode_return)."""
    data = dataset()
    configs = [online_config(variant, offline_fraction=f) for f in (0.0, 1.0)]

    def run(config, key):
        state = famo2o.init(config, data, key)
        online = famo2o.begin_online(config, data, *ENV, state)
        online, _ = famo2o.update_online(config, data, *ENV, online)
        return famo2o.update_online(config, data, *ENV, online)

    key = jax.random.PRNGKey(3)
    singles = [jax.jit(run)(c, key) for c in configs]
    again = jax.jit(run)(configs[0], key)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    vmapped = jax.jit(jax.vmap(run, in_axes=(0, None)))(stacked, key)
    for member, single in enumerate(singles):
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(vmapped), strict=True):
            np.testing.assert_allclose(a, np.asarray(b)[member], rtol=2e-5, atol=2e-5)
    for a, b in zip(jax.tree.leaves(singles[0]), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics = singles[0]
    assert "episode_train_return" in metrics and "episode_return" not in metrics
    assert all(np.isfinite(v) for k, v in metrics.items() if not k.startswith("episode_"))
    assert int(state.replay.size) == 4 and int(state.step) == 2 * 2


# --- Named errors ---


def test_bad_configs_raise_named_errors():
    for fraction in (-0.1, 1.5):
        with pytest.raises(FieldOutOfRange, match="offline_fraction"):
            make_config(famo2o.Config, {"offline_fraction": fraction})
    with pytest.raises(FieldOutOfRange, match="variant"):
        make_config(famo2o.Config, {"variant": "awac"})
    with pytest.raises(ValueError, match="online_steps=5 must be a multiple of num_envs=2"):
        famo2o.check(famo2o.Config(online_steps=5, num_envs=2))
    with pytest.raises(ValueError, match="awr_beta_min=5.0 must be below awr_beta_max=5.0"):
        famo2o.check(famo2o.Config(awr_beta_min=5.0))
    with pytest.raises(ValueError, match="q_weight_min=2.0 must be below q_weight_max"):
        famo2o.check(famo2o.Config(variant="cql", q_weight_min=2.0))
    famo2o.check(famo2o.Config(variant="cql", awr_beta_min=9.0))  # the other variant's range
    with pytest.raises(ValueError, match="sincos_d=5 must be even"):
        famo2o.check(famo2o.Config(sincos_d=5))


# --- Learning ---


@pytest.mark.slow
def test_fine_tuning_improves_on_the_offline_policy(tmp_path):
    """Offline then online on Pendulum medium-replay (~23k rows, tests/runs.py), the IQL variant
    with 64-64 networks: 5000 offline updates, then 4000 online env steps (1 env, 1 gradient
    step each, half of each batch from the dataset). Greedy return over 20 episodes, measured
    (seeds 0 and 1 of PRNGKey): after the offline phase -1163 and -1144, after the online phase
    -244 and -275 (the online training episodes go from about -1250 to -250). Asserted on seed
    0: at least 400 better after fine-tuning and above -700; ~80 s on one busy core."""
    path, _ = pendulum_medium_replay(tmp_path)
    data, _ = files.load(str(path))
    config = famo2o.Config(
        total_updates=5000, hidden_sizes=(64, 64), online_steps=4000, num_envs=1, utd_ratio=1
    )
    declared = agents.declaration("famo2o")

    def evaluate(params):
        policy = evaluation.agent_policy(declared, config, params, deterministic=True)
        return evaluation.evaluate_policy(policy, *ENV, 20, jax.random.PRNGKey(100)).mean()

    @jax.jit
    def run(key):
        state, _ = famo2o.train(config, data, key)
        online, _ = famo2o.fine_tune(config, data, *ENV, state)
        return evaluate(state.params), evaluate(online.params)

    before, after = (float(x) for x in run(jax.random.PRNGKey(0)))
    assert after >= before + 400 and after > -700, (before, after)
