"""Goal-conditioned GCBC, GCIVL and GCIQL (OGBench's agents): each loss on a hand-computed
batch (the expectile weight's sign from GCIVL's target advantage, AWR's clip at 100, DDPG+BC's
stop-gradient normaliser and action clipping, discrete actions), the batch's goals, act on
single and batched inputs, traced sweeps, deterministic finite training on a tiny dataset, named
init errors, and reaching goals in an open square."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import goal_dataset, one_unit, one_unit_free, straight_line_dataset

from rljax.agents import gcbc, gciql, gcivl

AGENTS = [gcbc, gcivl, gciql]
TINY = dict(batch_size=32, hidden_sizes=(8,))  # one small layer: XLA compiles it faster
HAND = dict(hidden_sizes=(1,))  # one hidden unit: see runs.one_unit
LOG_2PI = float(np.log(2 * np.pi))


def hand_batch(**arrays):
    """Two-row batches in a 2-d observation / goal space unless given."""
    zeros = jnp.zeros((2, 2))
    base = dict(observations=zeros, next_observations=zeros, value_goals=zeros, actor_goals=zeros,
                actions=zeros, rewards=jnp.zeros(2), masks=jnp.ones(2))  # fmt: skip
    return base | {k: jnp.asarray(v) for k, v in arrays.items()}


# --- GCBC ---


def test_gcbc_loss_by_hand():
    config = gcbc.Config(**HAND)
    params = gcbc.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    actor = one_unit(params.actor, 0.0, [0.5, -0.5])  # mu = (0.5, -0.5), std 1
    batch = hand_batch(actions=[[1.0, 0.0], [0.5, 0.5]])
    # log pi = -||a - mu||^2 / 2 - log(2 pi): -(0.25 + 0.25) / 2 and -(0 + 1) / 2, less log(2 pi)
    loss, info = gcbc.actor_loss(actor, params, batch, config)
    np.testing.assert_allclose(loss, (0.25 + 0.5) / 2 + LOG_2PI, rtol=1e-6)
    np.testing.assert_allclose(info["mse"], (0.25 + 0.25 + 0 + 1) / 4, rtol=1e-6)


def test_gcbc_discrete_loss_by_hand():
    config = gcbc.Config(**HAND, discrete=True)
    params = gcbc.init(config, goal_dataset(discrete=True), jax.random.PRNGKey(0)).params
    assert params.action_dim == 3  # the largest action in the data + 1
    actor = one_unit(params.actor, 0.0, [0.0, np.log(3.0), -np.inf])  # probabilities 1/4, 3/4, 0
    batch = hand_batch(actions=jnp.array([0, 1]))
    loss, _ = gcbc.actor_loss(actor, params, batch, config)
    np.testing.assert_allclose(loss, -(np.log(0.25) + np.log(0.75)) / 2, rtol=1e-6)


# --- GCIVL ---


def test_gcivl_value_loss_by_hand():
    """Target heads Vbar = (-2, -4), current heads V = (3, 1), gamma 0.9, expectile 0.9.
    adv = r + 0.9 m min(Vbar) - mean(Vbar) = r - 3.6 m + 3 over rows (r, m) = (-1, 1), (0, 0),
    (0, 1): -1.6, 3, -0.6, so weights 0.1, 0.9, 0.1. Head targets r + 0.9 m Vbar_j:
    (-2.8, -4.6), (0, 0), (-1.8, -3.6); errors to V = (3, 1): (-5.8, -5.6), (-3, -1), (-4.8, -4.6).
    L = (0.1 * 33.64 + 0.9 * 9 + 0.1 * 23.04) / 3 + (0.1 * 31.36 + 0.9 * 1 + 0.1 * 21.16) / 3
      = 4.589333 + 2.050667 = 6.64.
    Weights from each head's own error (IQL's) would give row 2 weight 0.1; the current V in
    the advantage would make row 2's advantage -2; the mean of Vbar in the bootstrap would
    make row 3's +0.3: each changes L."""
    config = gcivl.Config(**HAND, layer_norm=False, discount=0.9, expectile=0.9)
    params = gcivl.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    target = one_unit(params.value, [0.0, 0.0], [-2.0, -4.0])
    value = one_unit(params.value, [0.0, 0.0], [3.0, 1.0])
    zeros = jnp.zeros((3, 2))
    batch = hand_batch(observations=zeros, next_observations=zeros, value_goals=zeros,
                       rewards=[-1.0, 0.0, 0.0], masks=[1.0, 0.0, 1.0])  # fmt: skip
    loss, info = gcivl.value_loss(value, target, batch, config)
    np.testing.assert_allclose(loss, 6.64, rtol=1e-5)
    np.testing.assert_allclose(info["v_mean"], 2.0, rtol=1e-6)


def test_gcivl_actor_loss_by_hand():
    """V_j(s, g) = c_j (s_x + 10) with c = (1, 3): the mean head is 2 (s_x + 10), so the
    advantage V(s', g) - V(s, g) = 2 (s'_x - s_x) is 0.2 and 1.0 on the two rows; alpha 10
    gives weights e^2 and e^10, clipped to 100. With mu = 0 and actions (1, 0), (1, 1):
    log pi = -0.5 - log 2pi and -1 - log 2pi, L = (e^2 (0.5 + log 2pi) + 100 (1 + log 2pi)) / 2.
    The reversed advantage (V(s) - V(s')) or no clip would change L by orders of magnitude."""
    config = gcivl.Config(**HAND, layer_norm=False, alpha=10.0)
    params = gcivl.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    params = params.replace(value=one_unit(params.value, [1.0, 3.0], [0.0, 0.0], pick=0))
    actor = one_unit(params.actor, 0.0, [0.0, 0.0])
    batch = hand_batch(observations=[[0.0, 0.0], [0.5, 0.0]],
                       next_observations=[[0.1, 0.0], [1.0, 0.0]],
                       actions=[[1.0, 0.0], [1.0, 1.0]])  # fmt: skip
    loss, info = gcivl.actor_loss(actor, params, batch, config)
    expected = (np.exp(2.0) * (0.5 + LOG_2PI) + 100 * (1 + LOG_2PI)) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(info["actor_advantage"], 0.6, rtol=1e-5)


# --- GCIQL ---


def test_gciql_value_loss_by_hand():
    """u = min(Qbar) - V with target heads (2, 5): V = 1 gives u = 1 and L = 0.9 * 1; V = 4
    gives u = -2 and L = 0.1 * 4. The online critics (100) must not enter."""
    config = gciql.Config(**HAND, layer_norm=False, expectile=0.9)
    params = gciql.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    params = params.replace(critic=one_unit(params.critic, [0.0, 0.0], [100.0, 100.0]))
    target = one_unit(params.critic, [0.0, 0.0], [2.0, 5.0])
    for v, expected in ((1.0, 0.9), (4.0, 0.4)):
        value = one_unit(params.value, 0.0, v)
        loss, _ = gciql.value_loss(value, params, target, hand_batch(), config)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_gciql_critic_loss_by_hand():
    """Targets r + 0.9 m V(s', g) with V = 2: rows (r, m) = (-1, 1), (0, 0) give 0.8 and 0.
    Heads (1, 0.5): ((0.2^2 + 1^2) + (0.3^2 + 0.5^2)) / 2 = (1.04 + 0.34) / 2 = 0.69."""
    config = gciql.Config(**HAND, layer_norm=False, discount=0.9)
    params = gciql.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    params = params.replace(value=one_unit(params.value, 0.0, 2.0))
    critic = one_unit(params.critic, [0.0, 0.0], [1.0, 0.5])
    batch = hand_batch(rewards=[-1.0, 0.0], masks=[1.0, 0.0])
    loss, _ = gciql.critic_loss(critic, params, batch, config)
    np.testing.assert_allclose(loss, 0.69, rtol=1e-5)


def test_gciql_awr_actor_loss_by_hand():
    """A = min(3, 1) - 0.5 = 0.5 with the online critics and value; alpha 2 gives weight e;
    mu = 0, action (1, 0): L = e (0.5 + log 2pi)."""
    config = gciql.Config(**HAND, layer_norm=False, actor_loss="awr", alpha=2.0)
    params = gciql.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    params = params.replace(
        critic=one_unit(params.critic, [0.0, 0.0], [3.0, 1.0]),
        value=one_unit(params.value, 0.0, 0.5),
    )
    actor = one_unit(params.actor, 0.0, [0.0, 0.0])
    loss, _ = gciql.actor_loss(actor, params, hand_batch(actions=[[1.0, 0.0]] * 2), config)
    np.testing.assert_allclose(loss, np.e * (0.5 + LOG_2PI), rtol=1e-5)


def test_gciql_ddpgbc_actor_loss_and_gradient_by_hand():
    """Critic heads Q_j = c_j (a_x + 10) + b_j on the clipped mean action, c = (1, 2),
    b = (0, -5); mu = (0.5, 0): Q = (10.5, 16), min 10.5, so the Q term is -10.5 / 10.5 = -1,
    and the BC term -0.3 log pi(a = (1, 0)) = 0.3 (0.125 + log 2pi). Its gradient in mu_x is
    -1 / 10.5 (the normaliser is a constant) - 0.3 (1 - 0.5); at mu = (2, 0) the clip stops
    the Q term's gradient and leaves -0.3 (1 - 2)."""
    config = gciql.Config(**HAND, layer_norm=False, alpha=0.3)
    params = gciql.init(config, goal_dataset(), jax.random.PRNGKey(0)).params
    critic_input_action_x = 4  # the critic sees (s, g, a)
    params = params.replace(
        critic=one_unit(params.critic, [1.0, 2.0], [0.0, -5.0], pick=critic_input_action_x)
    )
    batch = hand_batch(actions=[[1.0, 0.0]] * 2)

    def loss_and_grad(mu):
        actor = one_unit(params.actor, 0.0, mu)
        loss_fn = lambda a: gciql.actor_loss(a, params, batch, config)[0]  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(actor)
        return loss, grads["params"]["Dense_1"]["bias"][0]

    loss, grad = loss_and_grad([0.5, 0.0])
    np.testing.assert_allclose(loss, -1 + 0.3 * (0.125 + LOG_2PI), rtol=1e-5)
    np.testing.assert_allclose(grad, -1 / 10.5 - 0.3 * 0.5, rtol=1e-4)
    _, clipped_grad = loss_and_grad([2.0, 0.0])
    np.testing.assert_allclose(clipped_grad, 0.3, rtol=1e-5)


def test_gciql_discrete_critic_takes_one_hot_actions():
    """Three actions; the critic input is (s, g, one_hot(a)) and heads read the one-hot
    entry of action 1: Q = (1(a = 1) + 10) - 10, V = 0, alpha 1, uniform logits. Actions 0
    and 1 get weights 1 and e: L = (1 + e) log 3 / 2."""
    config = gciql.Config(**HAND, layer_norm=False, discrete=True, actor_loss="awr", alpha=1.0)
    params = gciql.init(config, goal_dataset(discrete=True), jax.random.PRNGKey(0)).params
    params = params.replace(
        critic=one_unit(params.critic, [1.0, 1.0], [-10.0, -10.0], pick=4 + 1),
        value=one_unit(params.value, 0.0, 0.0),
    )
    actor = one_unit(params.actor, 0.0, [0.0, 0.0, 0.0])
    loss, info = gciql.actor_loss(actor, params, hand_batch(actions=jnp.array([0, 1])), config)
    np.testing.assert_allclose(loss, (1 + np.e) * np.log(3) / 2, rtol=1e-5)
    np.testing.assert_allclose(info["actor_advantage"], 0.5, rtol=1e-5)


# --- The batch, act, sweeps, training ---


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_sample_batch_goals_on_a_goal_dataset(agent):
    """Default actor goals are later rows of the same trajectory (the final row's is itself);
    goal observations are dataset rows; next_observations and actions follow the row."""
    dataset = goal_dataset()
    config = agent.Config(**TINY)
    batch = jax.jit(lambda k: agent.sample_batch(config, dataset, k))(jax.random.PRNGKey(0))
    keys = {"observations", "actions", "next_observations", "value_goals", "actor_goals",
            "rewards", "masks"}  # fmt: skip
    assert set(batch) == keys
    row = np.asarray(batch["observations"][:, 0]).astype(int)
    final = np.array([3, 3, 3, 3, 4, 9, 9, 9, 9, 9])[row]
    actor_goal = np.asarray(batch["actor_goals"][:, 0]).astype(int)
    assert ((actor_goal > row) | (row == final)).all() and (actor_goal <= final).all()
    np.testing.assert_array_equal(actor_goal[row == final], final[row == final])
    np.testing.assert_array_equal(batch["actions"], np.asarray(dataset.actions)[row])
    np.testing.assert_array_equal(batch["next_observations"][:, 0], row + 1)
    assert batch["value_goals"].shape == batch["observations"].shape == (32, 2)


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_act_on_single_and_batched_inputs(agent):
    """(d,) and (B, d) inputs; deterministic = the clipped mean; samples in [-1, 1]; discrete
    actions are integers below the number of actions and deterministic = argmax. Discreteness
    comes from the params, not the config: a default config acts the same."""
    extra = {"actor_loss": "awr"} if agent is gciql else {}
    for discrete in (False, True):
        config = agent.Config(**TINY, discrete=discrete, **extra)
        state = agent.init(config, goal_dataset(discrete=discrete), jax.random.PRNGKey(0))
        actor = one_unit_free(state.params.actor, [3.0, -0.2, 0.1][: state.params.action_dim])
        params = state.params.replace(actor=actor)
        obs, goal = jnp.zeros((5, 2)), jnp.ones((5, 2))
        key = jax.random.PRNGKey(1)
        single = agent.act(config, params, obs[0], goal[0], key, deterministic=True)
        batched = agent.act(config, params, obs, goal, key, deterministic=True)
        sampled = agent.act(config, params, obs, goal, key)
        default = agent.act(agent.Config(**TINY), params, obs, goal, key, deterministic=True)
        np.testing.assert_array_equal(default, batched)
        assert state.params.discrete == discrete
        if discrete:
            assert single.shape == () and batched.shape == (5,)
            np.testing.assert_array_equal(batched, 0)  # the argmax of (3, -0.2, 0.1)
            assert sampled.dtype.kind == "i" and (sampled >= 0).all() and (sampled < 3).all()
        else:
            assert single.shape == (2,) and batched.shape == (5, 2)
            np.testing.assert_allclose(batched, [[1.0, -0.2]] * 5, rtol=1e-6)  # mean, clipped
            assert (jnp.abs(sampled) <= 1).all() and not jnp.allclose(sampled, batched)


def test_gcivl_update_agrees_under_jit_and_vmap():
    """A sweep over traced fields, goal probabilities included, equals single runs of
    sample_batch + update_on_batch."""
    dataset = goal_dataset()
    configs = [
        gcivl.Config(**TINY, alpha=10.0, value_p_curgoal=0.2, value_p_randomgoal=0.3),
        gcivl.Config(**TINY, alpha=3.0, value_p_curgoal=0.0, value_p_randomgoal=0.5, lr=1e-3),
    ]
    state = gcivl.init(configs[0], dataset, jax.random.PRNGKey(3))
    key = jax.random.PRNGKey(4)

    def step(config, state):
        return gcivl.update_on_batch(config, state, gcivl.sample_batch(config, dataset, key))

    singles = [jax.jit(step)(c, state) for c in configs]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(step, in_axes=(0, None)))(stacked, state)
    assert not np.allclose(singles[0][1]["value_loss"], singles[1][1]["value_loss"])
    for i, single in enumerate(singles):
        member = jax.tree.map(lambda x, i=i: x[i], swept)
        for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


TRAIN_CASES = [  # continuous GCBC trains in test_reaches_goals_in_an_open_square
    (gcbc, {"discrete": True}),
    (gcivl, {}),
    (gcivl, {"discrete": True}),
    (gciql, {}),
    (gciql, {"discrete": True, "actor_loss": "awr"}),
]


TRAIN_IDS = ["gcbc-discrete", "gcivl", "gcivl-discrete", "gciql", "gciql-discrete-awr"]


@pytest.mark.parametrize("agent, extra", TRAIN_CASES, ids=TRAIN_IDS)
def test_train_is_finite_and_deterministic(agent, extra):
    dataset = goal_dataset(lengths=(20, 7, 13), discrete=extra.get("discrete", False))
    config = agent.Config(**TINY, **extra, total_updates=200)
    run = jax.jit(lambda key: agent.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(0))
    assert "grad_norm" in metrics and int(state.step) == 200
    for name, values in metrics.items():
        assert values.shape == (200,) and np.isfinite(values).all(), name
    again, _ = run(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


# --- Named errors ---


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_init_errors_are_named(agent):
    dataset = goal_dataset()
    key = jax.random.PRNGKey(0)
    total = 0.5 + 0.6 + agent.Config().value_p_randomgoal
    message = f"value_p_curgoal + value_p_trajgoal + value_p_randomgoal = {total:.6g}; they must"
    with pytest.raises(ValueError, match=re.escape(message)):
        agent.init(agent.Config(**TINY, value_p_curgoal=0.5, value_p_trajgoal=0.6), dataset, key)
    message = "actor_p_curgoal + actor_p_trajgoal + actor_p_randomgoal = 1.2; they must sum to 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        agent.init(agent.Config(**TINY, actor_p_randomgoal=0.2), dataset, key)
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        open_end = dataset.replace(timeouts=dataset.timeouts.at[-1].set(0))
        agent.init(agent.Config(**TINY), open_end, key)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        agent.init(agent.Config(**TINY), dataset.replace(actions=3 * dataset.actions), key)
    extra = {"actor_loss": "awr"} if agent is gciql else {}
    with pytest.raises(ValueError, match="discrete=True takes integer actions"):
        agent.init(agent.Config(**TINY, discrete=True, **extra), dataset, key)
    negative = goal_dataset(discrete=True)
    negative = negative.replace(actions=negative.actions.at[0].set(-1))
    with pytest.raises(ValueError, match="discrete=True takes integer actions >= 0"):
        agent.init(agent.Config(**TINY, discrete=True, **extra), negative, key)
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(lambda d: agent.init(agent.Config(**TINY), d, key))(dataset)


def test_gciql_ddpgbc_with_discrete_actions_is_a_named_error():
    config = gciql.Config(**TINY, discrete=True)
    with pytest.raises(ValueError, match="actor_loss='ddpgbc'.*continuous"):
        gciql.init(config, goal_dataset(discrete=True), jax.random.PRNGKey(0))


# --- Learning ---


@pytest.mark.slow
@pytest.mark.parametrize("agent", [gcbc, gcivl], ids=["gcbc", "gcivl"])
def test_reaches_goals_in_an_open_square(agent):
    """After 1000 updates the greedy policy reaches (within 0.05) most of 200 random goals
    from random starts in 60 steps; the untrained one almost none."""
    dataset = straight_line_dataset(jax.random.PRNGKey(0))
    config = agent.Config(batch_size=256, hidden_sizes=(64, 64), total_updates=1000)
    state, _ = jax.jit(lambda k: agent.train(config, dataset, k))(jax.random.PRNGKey(1))

    @jax.jit
    def success_rate(params, rng):
        start_key, goal_key = jax.random.split(rng)
        x, goal = jax.random.uniform(start_key, (200, 2)), jax.random.uniform(goal_key, (200, 2))

        def step(carry, _):
            x, done = carry
            x = jnp.clip(x + 0.05 * agent.act(config, params, x, goal, None, True), 0, 1)
            return (x, done | (jnp.linalg.norm(x - goal, axis=-1) < 0.05)), None

        return jax.lax.scan(step, (x, jnp.zeros(200, bool)), None, 60)[0][1].mean()

    untrained = agent.init(config, dataset, jax.random.PRNGKey(1)).params
    assert float(success_rate(untrained, jax.random.PRNGKey(2))) < 0.1
    assert float(success_rate(state.params, jax.random.PRNGKey(2))) > 0.8
