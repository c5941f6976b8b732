"""HIQL and OTA: HGCDataset's goals and targets and OTA's option-level goals on a dataset whose
observation is its row index, each loss on a hand-computed batch (with linear or constant
networks), the stop-gradients, the subgoal representation's norm, acting, deterministic training
with finite metrics, and named init errors."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.agents import hiql, ota
from rljax.data import Dataset

LOG_2PI = float(np.log(2 * np.pi))


def index_dataset(lengths=(40, 20), action_dim=2, discrete=False, seed=0) -> Dataset:
    """Trajectories of the given lengths back to back; row i observes [i, 0], so every sampled
    goal or target shows its row index in column 0."""
    n = sum(lengths)
    rng = np.random.default_rng(seed)
    obs = np.stack([np.arange(n), np.zeros(n)], -1).astype(np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[np.cumsum(lengths) - 1] = 1
    actions = rng.integers(0, 4, n) if discrete else rng.uniform(-1, 1, (n, action_dim))
    return Dataset.from_arrays(
        observations=obs,
        actions=actions,
        rewards=np.zeros(n),
        terminals=np.zeros(n),
        timeouts=timeouts,
        next_observations=obs + np.array([1, 0], np.float32),
    )


def rows(batch, key):
    return np.asarray(batch[key][:, 0]).astype(int)


def finals(i):
    return np.where(i < 40, 39, 59)  # the last row of each trajectory of index_dataset()


# --- Batches ---


@pytest.mark.parametrize("module", [hiql, ota])
def test_low_goals_and_high_targets_follow_hgcdataset(module):
    dataset = index_dataset()
    for p_random in (0.0, 1.0, 0.5):
        config = module.Config(
            batch_size=2048,
            actor_p_curgoal=0.0,
            actor_p_trajgoal=1 - p_random,
            actor_p_randomgoal=p_random,
        )
        batch = module.sample_batch(config, dataset, jax.random.PRNGKey(0))
        i, final = rows(batch, "observations"), finals(rows(batch, "observations"))
        np.testing.assert_array_equal(rows(batch, "low_actor_goals"), np.minimum(i + 25, final))
        goal, target = rows(batch, "high_actor_goals"), rows(batch, "high_actor_targets")
        np.testing.assert_array_equal(batch["actor_goals"], batch["high_actor_goals"])
        future = (goal >= np.minimum(i + 1, final)) & (goal <= final)  # uniform over [i + 1, F]
        from_goal = target == np.minimum(i + 25, goal)
        from_final = target == np.minimum(i + 25, final)
        if p_random == 0:
            assert future.all() and from_goal.all()
        elif p_random == 1:
            assert from_final.all()
            assert (~future).mean() > 0.3  # random rows, mostly outside [i + 1, F]
        else:
            assert (from_goal | from_final).all()
            assert 0.45 < future.mean() < 0.75  # half future goals, plus random rows there
            assert (~future).mean() > 0.25 and from_final[~future].all()
        # Value goals: rewards and masks from reaching the goal at the current row.
        success = rows(batch, "value_goals") == i
        np.testing.assert_array_equal(batch["rewards"], success - 1.0)
        np.testing.assert_array_equal(batch["masks"], 1.0 - success)
        if module is hiql:
            assert 0.1 < success.mean() < 0.3  # value_p_curgoal = 0.2 (plus chance hits)
        else:
            assert success.mean() < 0.06  # value_p_curgoal = 0: chance hits only


def test_ota_option_ends_rewards_and_masks():
    dataset = index_dataset()
    n = 5
    sample = lambda c: ota.sample_batch(c, dataset, jax.random.PRNGKey(3))  # noqa: E731

    # Goals of the same trajectory: the option ends at the goal or after n steps.
    batch = sample(ota.Config(batch_size=2048, value_p_trajgoal=1.0, value_p_randomgoal=0.0))
    i, final = rows(batch, "observations"), finals(rows(batch, "observations"))
    goal, option = rows(batch, "high_value_goals"), rows(batch, "high_value_option_observations")
    assert ((goal > i) | (goal == final)).all() and (goal <= final).all()
    np.testing.assert_array_equal(option, np.minimum(i + n, goal))
    success = option == goal  # the goal lies within n steps
    assert 0.02 < success.mean() < 0.5
    np.testing.assert_array_equal(batch["high_value_rewards"], success - 1.0)
    np.testing.assert_array_equal(batch["high_value_masks"], 1.0 - success)

    # Random goals: the option times out at min(i + n, F).
    batch = sample(ota.Config(batch_size=2048, value_p_trajgoal=0.0, value_p_randomgoal=1.0))
    i, final = rows(batch, "observations"), finals(rows(batch, "observations"))
    goal, option = rows(batch, "high_value_goals"), rows(batch, "high_value_option_observations")
    np.testing.assert_array_equal(option, np.minimum(i + n, final))
    np.testing.assert_array_equal(batch["high_value_rewards"], (option == goal) - 1.0)
    assert len(np.unique(goal)) > 40  # uniform over the 60 rows

    # The current-goal branch makes the option's end the goal: success, reward 0, mask 0.
    config = ota.Config(
        batch_size=256, value_p_curgoal=1.0, value_p_trajgoal=0.0, value_p_randomgoal=0.0
    )
    batch = sample(config)
    i, final = rows(batch, "observations"), finals(rows(batch, "observations"))
    np.testing.assert_array_equal(rows(batch, "high_value_goals"), np.minimum(i + n, final))
    np.testing.assert_array_equal(batch["high_value_rewards"], 0.0)
    np.testing.assert_array_equal(batch["high_value_masks"], 0.0)

    # The default mixture (0, 0.5, 0.5); gc_negative=False gives rewards 1 / 0.
    batch = sample(ota.Config(batch_size=4096, gc_negative=False))
    i, final = rows(batch, "observations"), finals(rows(batch, "observations"))
    goal, option = rows(batch, "high_value_goals"), rows(batch, "high_value_option_observations")
    ended = option == np.minimum(i + n, goal)
    timed_out = option == np.minimum(i + n, final)
    assert (ended | timed_out).all()
    np.testing.assert_array_equal(batch["high_value_rewards"], option == goal)
    np.testing.assert_array_equal(batch["rewards"], rows(batch, "value_goals") == i)
    # Half the goals come from the trajectory: about half of the options can end at the goal.
    same_trajectory = (goal >= i) & (goal <= final)
    assert 0.45 < same_trajectory.mean() < 0.75  # 0.5 plus random rows that fall there


# --- Losses by hand ---


def linear_params(params, slopes=None, bias=None):
    """A network of hidden_sizes=() is one Dense layer; set its kernel to read obs[0] with the
    given slope per head (or zero) and its bias (or zero)."""
    params = jax.tree.map(jnp.zeros_like, params)
    inner = params["params"]
    layer = inner.get("VmapValueHead_0", inner)["Dense_0"]
    if slopes is not None:
        layer["kernel"] = layer["kernel"].at[:, 0, 0].set(jnp.ravel(jnp.asarray(slopes)))
    if bias is not None:
        layer["bias"] = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), layer["bias"].shape)
    return params


LINEAR = dict(hidden_sizes=(), layer_norm=False, rep_dim=2)


def value_batch():
    # Three rows; the networks below are constant, so only rewards and masks matter.
    return {
        "observations": jnp.zeros((3, 2)),
        "next_observations": jnp.ones((3, 2)),
        "value_goals": jnp.ones((3, 2)),
        "rewards": jnp.array([-1.0, 0.0, 0.2]),
        "masks": jnp.array([1.0, 0.0, 1.0]),
    }


# Targets (Vbar_1, Vbar_2) = (0, -1), online (V_1, V_2) = (-0.5, -2), gamma 0.9, expectile 0.7:
# mean Vbar(s) = -0.5;  adv = r + 0.9 m min(0, -1) + 0.5 = [-1.4, 0.5, -0.2] -> w = [0.3, 0.7, 0.3]
# (with the mean instead of the min, row 3 would get adv = 0.25 and w = 0.7).
# Head 1: q = r + 0.9 m 0 = [-1, 0, 0.2], errors q - V_1 = [-0.5, 0.5, 0.7]
# Head 2: q = r + 0.9 m (-1) = [-1.9, 0, -0.7], errors q - V_2 = [0.1, 2, 1.3]
# L = (0.3 * 0.25 + 0.7 * 0.25 + 0.3 * 0.49) / 3 + (0.3 * 0.01 + 0.7 * 4 + 0.3 * 1.69) / 3
#   = (0.397 + 3.31) / 3
VALUE_LOSS = 3.707 / 3


def test_hiql_value_loss_by_hand():
    config = hiql.Config(discount=0.9, expectile=0.7, **LINEAR)
    params = hiql.init(config, index_dataset(), jax.random.PRNGKey(0)).params
    params = params.replace(value=linear_params(params.value, bias=[[-0.5], [-2.0]]))
    target = linear_params(params.value, bias=[[0.0], [-1.0]])
    loss, info = hiql.value_loss(params, target, value_batch(), config)
    np.testing.assert_allclose(loss, VALUE_LOSS, rtol=1e-6)
    np.testing.assert_allclose(info["v_mean"], -1.25, rtol=1e-6)


def test_ota_value_losses_by_hand_one_discount_per_option():
    config = ota.Config(discount=0.9, expectile=0.7, abstraction_factor=5, **LINEAR)
    params = ota.init(config, index_dataset(), jax.random.PRNGKey(0)).params
    online = linear_params(params.high_value, bias=[[-0.5], [-2.0]])
    target = linear_params(params.high_value, bias=[[0.0], [-1.0]])
    params = params.replace(low_value=online, high_value=online)
    hand = value_batch()
    # V_H reads the option keys; the one-step keys hold values that would change the result.
    batch = {
        "observations": hand["observations"],
        "high_value_option_observations": hand["next_observations"],
        "high_value_goals": hand["value_goals"],
        "high_value_rewards": hand["rewards"],
        "high_value_masks": hand["masks"],
        "rewards": jnp.zeros(3),
        "masks": jnp.ones(3),
    }
    loss, v_mean = ota.high_value_loss(params, target, batch, config)
    np.testing.assert_allclose(loss, VALUE_LOSS, rtol=1e-6)  # gamma = 0.9, not 0.9^5
    np.testing.assert_allclose(v_mean, -1.25, rtol=1e-6)
    loss, _ = ota.low_value_loss(params, target, hand, config)
    np.testing.assert_allclose(loss, VALUE_LOSS, rtol=1e-6)


# Low actor, alpha 3: V(s, w) = mean slope 2 * s[0] (slopes 1 and 3), s[0] = 0, s'[0] = [0.5, 2]
# A = 2 * [0.5, 2] = [1, 4] -> weights [exp(3), min(exp(12), 100)] = [20.0855, 100]
# pi_lo = N((0.5, 0), I), actions [(1, 0), (0, 0)]: log pi = -0.5 * 0.25 - log(2 pi) for both
LOW_ACTOR_LOSS = -(np.exp(3.0) + 100.0) / 2 * (-0.125 - LOG_2PI)
# High actor, alpha 3: A = 2 * (w'[0] - s[0]) = 2 * [0.1, -1] -> weights exp([0.6, -6]);
# phi = (3, 4) / 5 * sqrt(2) has norm sqrt(2) (rep_dim 2); pi_hi = N(0, I):
# log pi(phi) = -0.5 * |phi|^2 - log(2 pi) = -1 - log(2 pi)  (unnormalized: -12.5 - log(2 pi))
HIGH_ACTOR_LOSS = (np.exp(0.6) + np.exp(-6.0)) / 2 * (1.0 + LOG_2PI)


def actor_batch():
    return {
        "observations": jnp.zeros((2, 2)),
        "next_observations": jnp.array([[0.5, 0.0], [2.0, 0.0]]),
        "actions": jnp.array([[1.0, 0.0], [0.0, 0.0]]),
        "low_actor_goals": jnp.ones((2, 2)),
        "high_actor_goals": jnp.ones((2, 2)),
        "high_actor_targets": jnp.array([[0.1, 0.0], [-1.0, 0.0]]),
    }


def hand_actor_params(module, params, low_slopes, high_slopes):
    rep = linear_params(params.goal_rep, bias=[3.0, 4.0])
    low_actor = linear_params(params.low_actor, bias=[0.5, 0.0])
    high_actor = linear_params(params.high_actor)
    if module is hiql:
        value = linear_params(params.value, slopes=low_slopes)
        return params.replace(goal_rep=rep, value=value, low_actor=low_actor, high_actor=high_actor)
    return params.replace(
        goal_rep=rep,
        low_value=linear_params(params.low_value, slopes=low_slopes),
        high_value=linear_params(params.high_value, slopes=high_slopes),
        low_actor=low_actor,
        high_actor=high_actor,
    )


def test_hiql_actor_losses_by_hand():
    config = hiql.Config(low_alpha=3.0, high_alpha=3.0, **LINEAR)
    params = hiql.init(config, index_dataset(), jax.random.PRNGKey(1)).params
    params = hand_actor_params(hiql, params, [[1.0], [3.0]], None)
    loss, info = hiql.low_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, LOW_ACTOR_LOSS, rtol=1e-5)
    np.testing.assert_allclose(info["low_advantage"], 2.5, rtol=1e-6)
    loss, info = hiql.high_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, HIGH_ACTOR_LOSS, rtol=1e-5)
    np.testing.assert_allclose(info["high_log_prob"], -1.0 - LOG_2PI, rtol=1e-6)


def test_ota_low_actor_uses_low_value_and_high_actor_high_value():
    config = ota.Config(low_alpha=3.0, high_alpha=3.0, **LINEAR)
    params = ota.init(config, index_dataset(), jax.random.PRNGKey(1)).params
    # V_L has slope 2, V_H slope 0: the low actor sees A = [1, 4], the high actor A = 0.
    params = hand_actor_params(ota, params, [[1.0], [3.0]], [[0.0], [0.0]])
    loss, _ = ota.low_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, LOW_ACTOR_LOSS, rtol=1e-5)
    loss, _ = ota.high_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, 1.0 + LOG_2PI, rtol=1e-5)  # weight exp(0) = 1
    # Swapped, the high actor sees A = 2 * [0.1, -1].
    params = hand_actor_params(ota, params, [[0.0], [0.0]], [[1.0], [3.0]])
    loss, _ = ota.high_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, HIGH_ACTOR_LOSS, rtol=1e-5)
    loss, _ = ota.low_actor_loss(params, actor_batch(), config)
    np.testing.assert_allclose(loss, 0.125 + LOG_2PI, rtol=1e-5)


def test_discrete_low_actor_log_prob_is_categorical():
    dataset = index_dataset(discrete=True)
    config = hiql.Config(discrete=True, **LINEAR)
    params = hiql.init(config, dataset, jax.random.PRNGKey(0)).params
    assert params.action_dim == 4
    logits = jnp.array([1.0, 2.0, 0.0, -1.0])
    params = params.replace(low_actor=linear_params(params.low_actor, bias=logits))
    log_prob = hiql.low_log_prob(
        config, params, jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.array([1, 3])
    )
    np.testing.assert_allclose(log_prob, jax.nn.log_softmax(logits)[jnp.array([1, 3])], rtol=1e-6)


@pytest.mark.parametrize("module", [hiql, ota])
def test_phi_is_trained_by_the_values_only(module):
    config = module.Config(hidden_sizes=(8,), rep_dim=4)
    dataset = index_dataset()
    dataset = dataset.replace(observations=dataset.observations / 60)
    state = module.init(config, dataset, jax.random.PRNGKey(0))
    batch = module.sample_batch(config, dataset, jax.random.PRNGKey(1))
    targets = (
        (state.target_value,)
        if module is hiql
        else (state.target_low_value, state.target_high_value)
    )

    @jax.jit
    def grads(params):
        total = lambda p: module.total_loss(p, *targets, batch, config)[0]  # noqa: E731
        low = lambda p: module.low_actor_loss(p, batch, config)[0]  # noqa: E731
        high = lambda p: module.high_actor_loss(p, batch, config)[0]  # noqa: E731
        return jax.grad(total)(params), jax.grad(low)(params), jax.grad(high)(params)

    def norm(tree):
        return float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))

    total, low, high = grads(state.params)
    assert norm(low.goal_rep) == 0 and norm(low.low_actor) > 0
    assert norm(high.goal_rep) == 0 and norm(high.high_actor) > 0
    assert 0 < norm(total.goal_rep) < np.inf
    # A representation MLP whose output is exactly zero gives phi = 0, not NaN.
    zero = state.params.replace(goal_rep=jax.tree.map(jnp.zeros_like, state.params.goal_rep))
    phi = module.goal_representation(config, zero.goal_rep, jnp.ones((3, 2)), jnp.ones((3, 2)))
    np.testing.assert_array_equal(phi, 0.0)
    assert np.isfinite(norm(grads(zero)[0]))


# --- Representation and acting ---


@pytest.mark.parametrize("module", [hiql, ota])
def test_goal_representation_and_act_renormalise_to_sqrt_rep_dim(module):
    config = module.Config(hidden_sizes=(16,), rep_dim=10)
    params = module.init(config, index_dataset(), jax.random.PRNGKey(0)).params
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    goal = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
    phi = module.goal_representation(config, params.goal_rep, obs, goal)
    np.testing.assert_allclose(jnp.linalg.norm(phi, axis=-1), np.sqrt(10), rtol=1e-5)
    # act: the high actor's mean (norm ~1e-2 at init), rescaled to sqrt(10), read by the low one.
    net = module._networks(config, params.action_dim)
    low_actor, high_actor = net.low_actor, net.high_actor
    mean = high_actor.apply(params.high_actor, jnp.concatenate([obs, goal], -1))
    assert (jnp.linalg.norm(mean, axis=-1) < 1).all()
    rep = mean / jnp.linalg.norm(mean, axis=-1, keepdims=True) * np.sqrt(10)
    expected = jnp.clip(low_actor.apply(params.low_actor, jnp.concatenate([obs, rep], -1)), -1, 1)
    action = module.act(config, params, obs, goal, None, deterministic=True)
    np.testing.assert_allclose(action, expected, rtol=1e-5, atol=1e-6)
    unnormalised = low_actor.apply(params.low_actor, jnp.concatenate([obs, mean], -1))
    assert np.abs(action - unnormalised).max() > 1e-4
    # Unbatched inputs and sampling.
    np.testing.assert_allclose(
        module.act(config, params, obs[0], goal[0], None, deterministic=True), action[0], rtol=1e-5
    )
    sampled = module.act(config, params, obs, goal, jax.random.PRNGKey(3))
    assert sampled.shape == (5, 2) and (jnp.abs(sampled) <= 1).all()
    assert np.abs(sampled - action).max() > 1e-3


def test_discrete_act_is_argmax_or_a_sample():
    config = hiql.Config(hidden_sizes=(16,), discrete=True)
    params = hiql.init(config, index_dataset(discrete=True), jax.random.PRNGKey(0)).params
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    greedy = hiql.act(config, params, obs, obs + 1, None, deterministic=True)
    assert greedy.shape == (64,) and jnp.issubdtype(greedy.dtype, jnp.integer)
    assert hiql.act(config, params, obs[0], obs[0] + 1, None, deterministic=True).shape == ()
    sampled = hiql.act(config, params, obs, obs + 1, jax.random.PRNGKey(2))
    assert set(np.unique(sampled)) <= {0, 1, 2, 3} and len(np.unique(sampled)) > 1


# --- Training ---


@pytest.mark.parametrize("module, discrete", [(hiql, True), (ota, False)], ids=["hiql", "ota"])
def test_train_is_deterministic_with_finite_metrics(module, discrete):
    dataset = index_dataset(lengths=(30, 30, 30, 30), discrete=discrete)
    dataset = dataset.replace(
        observations=dataset.observations / 120, next_observations=dataset.next_observations / 120
    )
    config = module.Config(
        batch_size=16, hidden_sizes=(8,), subgoal_steps=5, discrete=discrete, total_updates=100
    )
    run = jax.jit(lambda key: module.train(config, dataset, key))
    (state, metrics), (state2, _) = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state2.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 100
    assert "grad_norm" in metrics
    for name, values in metrics.items():
        assert values.shape == (100,) and np.isfinite(values).all(), name
    losses = [k for k in metrics if k.endswith("value_loss")]
    for k in losses:  # the values learn something about the dataset
        assert metrics[k][-20:].mean() < metrics[k][:20].mean(), k
    other, _ = run(jax.random.PRNGKey(1))
    assert not np.allclose(jax.tree.leaves(other.params)[0], jax.tree.leaves(state.params)[0])


# --- Errors ---


@pytest.mark.parametrize("module", [hiql, ota])
def test_init_errors_are_named(module):
    dataset = index_dataset()
    key = jax.random.PRNGKey(0)
    total = 1.0 + module.Config().value_p_randomgoal  # 1.3 (HIQL) or 1.5 (OTA)
    message = f"value_p_curgoal + value_p_trajgoal + value_p_randomgoal = {total:.6g}; they must"
    with pytest.raises(ValueError, match=re.escape(message)):
        module.init(module.Config(value_p_curgoal=0.5, value_p_trajgoal=0.5), dataset, key)
    total = module.Config().actor_p_trajgoal + 0.7  # 1.7 (HIQL) or 1.2 (OTA)
    message = f"actor_p_curgoal + actor_p_trajgoal + actor_p_randomgoal = {total:.6g}; they must"
    with pytest.raises(ValueError, match=re.escape(message)):
        module.init(module.Config(actor_p_randomgoal=0.7), dataset, key)
    with pytest.raises(ValueError, match="discrete=True needs integer actions"):
        module.init(module.Config(discrete=True), dataset, key)
    with pytest.raises(ValueError, match="integer actions need discrete=True"):
        module.init(module.Config(), index_dataset(discrete=True), key)
    unended = dataset.replace(timeouts=dataset.timeouts.at[-1].set(0))
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        module.init(module.Config(), unended, key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: module.sample_batch(module.Config(), d, key))(dataset)
