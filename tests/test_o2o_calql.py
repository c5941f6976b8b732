"""Cal-QL: the dataset's return-to-go by hand (terminal, timeout, the data's end, the
infinite-horizon and sparse-reward cases) and against a port of the authors' loop; the online
rows' return-to-go, exact once their episode ends and no bound before; the calibrated
conservative term by hand (only the policy actions' values bounded, no gradient through V_mu
nor through a bounded value; calibrated=False is cql.py's loss); the phase switch; update_online
under jit and vmap; determinism; named errors; and a slow learning check on Pendulum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import agents, envs
from rljax.agents import calql, cql
from rljax.data import Dataset
from rljax.runner.config import FieldOutOfRange, make_config

LOG2 = np.log(2.0)
TINY = dict(batch_size=8, hidden_sizes=(8,), cql_n_actions=2, total_updates=2)


def reference_return_to_go(rewards, ends, terminals, gamma, scale, bias, sparse=False,
                           reward_neg=0.0, infinite_horizon=False):  # fmt: skip
    """The authors' calc_return_to_go, applied per episode (episodes end at ``ends``)."""
    out, start = np.zeros(len(rewards)), 0
    for end in np.flatnonzero(ends):
        raw = np.asarray(rewards[start : end + 1], np.float64)
        r = raw * scale + bias
        if sparse and np.all(raw == reward_neg):
            out[start : end + 1] = (reward_neg * scale + bias) / (1 - gamma)
        else:
            following = r[-1] / (1 - gamma) if infinite_horizon else 0.0
            for i in reversed(range(len(r))):
                following = r[i] + gamma * following * (1 - terminals[start + i])
                out[start + i] = following
        start = end + 1
    return out


def rtg(config, rewards, terminals, timeouts):
    f = lambda *x: calql.return_to_go(config, *(jnp.asarray(v, jnp.float32) for v in x))  # noqa: E731
    return np.asarray(jax.jit(f)(rewards, terminals, timeouts))


def test_return_to_go_by_hand():
    """gamma 1/2, r~ = 2 r - 1. Episode A (raw 1, 0, 2) ends in a terminal: r~ (1, -1, 3),
    V (1.25, 0.5, 3). B (0, 3) times out: r~ (-1, 5), V (1.5, 5); with infinite_horizon the last
    reward repeats, 5 + 0.5 * 5 / 0.5 = 10 and -1 + 5 = 4. C (1, 1) ends with the data, as a
    timeout: (1.5, 1), infinite (2, 2). A terminal never bootstraps."""
    rewards = [1, 0, 2, 0, 3, 1, 1]
    terminals = [0, 0, 1, 0, 0, 0, 0]
    timeouts = [0, 0, 0, 0, 1, 0, 0]
    config = calql.Config(gamma=0.5, reward_scale=2.0, reward_bias=-1.0)
    np.testing.assert_allclose(
        rtg(config, rewards, terminals, timeouts), [1.25, 0.5, 3, 1.5, 5, 1.5, 1], rtol=1e-6
    )
    infinite = config.replace(infinite_horizon=True)
    np.testing.assert_allclose(
        rtg(infinite, rewards, terminals, timeouts), [1.25, 0.5, 3, 4, 10, 2, 2], rtol=1e-6
    )


def test_return_to_go_sparse_by_hand():
    """sparse_reward, reward_neg 0, r~ = 2 r - 1, gamma 1/2: an episode with a success (raw 0, 0,
    1, timing out) keeps its discounted sum (-1.25, -0.5, 1); one of failures only (0, 0) gets
    r~_neg / (1 - gamma) = -2 on every row, not its sum (-1.5, -1)."""
    config = calql.Config(gamma=0.5, reward_scale=2.0, reward_bias=-1.0, sparse_reward=True)
    got = rtg(config, [0, 0, 1, 0, 0], [0] * 5, [0, 0, 1, 0, 0])
    np.testing.assert_allclose(got, [-1.25, -0.5, 1, -2, -2], rtol=1e-6)
    dense = config.replace(sparse_reward=False)
    np.testing.assert_allclose(
        rtg(dense, [0, 0, 1, 0, 0], [0] * 5, [0, 0, 1, 0, 0])[3:], [-1.5, -1]
    )


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("infinite_horizon", [False, True])
def test_return_to_go_matches_the_authors_loop(sparse, infinite_horizon):
    """400 rows of episodes ending at random terminals and timeouts, sparse 0/1 rewards so
    that some episodes have no success, against the port of calc_return_to_go."""
    rng = np.random.default_rng(0)
    n = 400
    rewards = (rng.random(n) < 0.05).astype(np.float32)
    terminals = (rng.random(n) < 0.02).astype(np.float32)
    timeouts = ((rng.random(n) < 0.04) & (terminals == 0)).astype(np.float32)
    ends = (terminals + timeouts > 0) | (np.arange(n) == n - 1)
    config = calql.Config(gamma=0.9, reward_scale=10.0, reward_bias=-5.0, sparse_reward=sparse,
                          infinite_horizon=infinite_horizon)  # fmt: skip
    expected = reference_return_to_go(
        rewards, ends, terminals, 0.9, 10.0, -5.0, sparse, 0.0, infinite_horizon
    )
    if sparse:  # the case is exercised: some episode is all failures
        assert np.isclose(expected, -50.0).any()
    np.testing.assert_allclose(rtg(config, rewards, terminals, timeouts), expected, rtol=1e-4)


def run_online_rows(config, capacity, steps):
    """replay_add and track_returns as update_online chains them, over ``steps`` of
    (rewards, terminals, ended) per env; returns the replay's mc_returns after each step."""
    num_envs = len(steps[0][0])
    replay = calql.replay_init(capacity, SimpleData)
    replay = replay.replace(data={**replay.data, "mc_returns": jnp.full((capacity,), -jnp.inf)})
    episodes = calql.open_episodes_init(capacity, num_envs)

    @jax.jit
    def step(replay, episodes, rewards, terminals, ended):
        rows = {k: jnp.zeros((num_envs, 1)) for k in ("observations", "next_observations")}
        rows |= {"actions": jnp.zeros((num_envs, 1)), "rewards": rewards, "terminals": terminals}
        rows |= {"mc_returns": jnp.full((num_envs,), -jnp.inf)}
        slots = (replay.position + jnp.arange(num_envs)) % capacity
        replay = calql.replay_add(replay, rows)
        return calql.track_returns(config, replay, episodes, slots, rows, ended)

    history = []
    for rewards, terminals, ended in steps:
        args = (np.float32(rewards), np.float32(terminals), np.array(ended, bool))
        replay, episodes = step(replay, episodes, *args)
        history.append(np.asarray(replay.data["mc_returns"]))
    return history


class SimpleData:  # the shapes replay_init reads
    observations = next_observations = actions = np.zeros((1, 1), np.float32)
    rewards = terminals = np.zeros((1,), np.float32)


def test_online_return_to_go_by_hand():
    """Two envs, gamma 1/2, r~ = r, slots (env 0, env 1) per step. Env 0: rewards 1, 2, 4
    ending (a timeout) at step 3: V = (1 + 1 + 1, 2 + 2, 4) = (3, 4, 4). Env 1: rewards 8, 16,
    terminating at step 2: (16, 16); then 2 in a new episode, still open at the end. Until its
    episode ends a row's V is -inf (no bound)."""
    config = calql.Config(gamma=0.5)
    steps = [([1, 8], [0, 0], [0, 0]), ([2, 16], [0, 1], [0, 1]), ([4, 2], [0, 0], [1, 0])]
    history = run_online_rows(config, 8, steps)
    inf = -np.inf
    np.testing.assert_array_equal(history[0][:2], [inf, inf])
    np.testing.assert_array_equal(history[1][:4], [inf, 16, inf, 16])
    np.testing.assert_array_equal(history[2][:6], [3, 16, 4, 16, 4, inf])
    np.testing.assert_array_equal(history[2][6:], [inf, inf])  # never written


def test_online_return_to_go_matches_the_loop():
    """Three envs, 60 steps of random rewards, terminations and truncations, infinite_horizon
    and sparse rewards on, a capacity holding all rows: every closed row's V equals the authors'
    formula on its env's episode, and the rows of the episodes still running are -inf."""
    rng = np.random.default_rng(1)
    num_envs, num_steps = 3, 60
    rewards = (rng.random((num_steps, num_envs)) < 0.1).astype(np.float32)
    terminals = (rng.random((num_steps, num_envs)) < 0.05).astype(np.float32)
    ended = (terminals > 0) | (rng.random((num_steps, num_envs)) < 0.08)
    config = calql.Config(gamma=0.8, reward_scale=2.0, reward_bias=-1.0, sparse_reward=True,
                          infinite_horizon=True)  # fmt: skip
    steps = list(zip(rewards, terminals, ended, strict=True))
    history = run_online_rows(config, num_steps * num_envs, steps)
    got = history[-1].reshape(num_steps, num_envs)
    for e in range(num_envs):
        last = np.flatnonzero(ended[:, e]).max()
        expected = reference_return_to_go(
            rewards[: last + 1, e], ended[: last + 1, e], terminals[: last + 1, e],
            0.8, 2.0, -1.0, True, 0.0, True,
        )  # fmt: skip
        np.testing.assert_allclose(got[: last + 1, e], expected, rtol=1e-5)
        assert np.all(got[last + 1 :, e] == -np.inf)


def loss_inputs(seed=0, batch=4, n=3, action_dim=2):
    config = calql.Config(hidden_sizes=(16,), cql_n_actions=n, cql_alpha=2.0, cql_temperature=1.5)
    _, critic = calql._networks(config, action_dim)
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    params = critic.init(keys[0], jnp.zeros(3), jnp.zeros(action_dim))
    params = jax.tree.map(lambda x: 30 * x, params)  # Q values of order 1-10
    data = {
        "observations": jax.random.normal(keys[1], (batch, 3)),
        "actions": jax.random.uniform(keys[2], (batch, action_dim), minval=-1, maxval=1),
    }
    actions = lambda k: jax.random.uniform(k, (batch, n, action_dim), minval=-1, maxval=1)  # noqa: E731
    cql_actions = (
        actions(keys[3]),
        (actions(keys[4]), jax.random.normal(keys[5], (batch, n))),
        (actions(keys[6]), jax.random.normal(keys[7], (batch, n))),
    )
    target = jnp.linspace(-1.0, 1.0, batch)
    return config, critic, params, data, target, cql_actions


def test_calibrated_conservative_term_by_hand():
    """The loss against NumPy on the critic's own Q values, with V_mu between them: the policy
    actions' values (from pi(.|s') and pi(.|s)) below V_mu are raised to it before their log
    densities are subtracted; the uniform actions' and Q(s, a) are not; bound_rate counts the
    raised values."""
    config, critic, params, data, target, cql_actions = loss_inputs()
    (random, (next_pi, log_next), (pi, log_pi)) = cql_actions
    obs = data["observations"]
    q = np.asarray(critic.apply(params, obs, data["actions"]), np.float64)  # (2, B)
    q_rand, q_next, q_pi = (
        np.asarray(critic.apply(params, obs[:, None], a), np.float64) for a in (random, next_pi, pi)
    )
    lower = np.median(np.concatenate([q_next, q_pi], -1), axis=(0, 2))  # per row, mid-range
    batch = data | {"mc_returns": jnp.asarray(lower, jnp.float32)}
    loss, (gap, q_mean, bound_rate) = calql.calql_critic_loss(
        params, batch, target, cql_actions, 1.0, config
    )
    t, lb = config.cql_temperature, lower[None, :, None]
    values = np.concatenate(
        [q_rand + 2 * LOG2, np.maximum(q_next, lb) - np.asarray(log_next),
         np.maximum(q_pi, lb) - np.asarray(log_pi)], -1,
    )  # fmt: skip
    soft_max = t * np.log(np.exp(values / t).sum(-1))
    expected_gap = (soft_max - q).mean(-1)
    bellman = ((q - np.asarray(target)) ** 2).mean(-1)
    np.testing.assert_allclose(gap, expected_gap, rtol=1e-4)
    np.testing.assert_allclose(loss, (bellman + 2.0 * expected_gap).sum(), rtol=1e-4)
    below = (np.concatenate([q_next, q_pi], -1) < lower[None, :, None]).mean()
    assert 0.2 < below < 0.8
    np.testing.assert_allclose(bound_rate, below, rtol=1e-6)
    np.testing.assert_allclose(q_mean, q.mean(), rtol=1e-5)


def test_the_bound_is_cql_without_it():
    """With V_mu = -inf (an online row whose episode runs) or calibrated=False (any V_mu) the
    loss is cql.py's critic_loss, to the bit."""
    config, _, params, data, target, cql_actions = loss_inputs(seed=1)
    expected, (gap, _) = cql.critic_loss(params, data, target, cql_actions, 1.0, config)
    for cfg, lower in ((config, -np.inf), (config.replace(calibrated=False), 1e6)):
        batch = data | {"mc_returns": jnp.full((4,), lower, jnp.float32)}
        got, (got_gap, _, _) = calql.calql_critic_loss(params, batch, target, cql_actions, 1.0, cfg)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got_gap, gap)


def test_no_gradient_through_the_bound():
    """No gradient reaches V_mu; a policy action whose Q values (both critics) fall below V_mu
    enters as a constant, so no gradient reaches it, while the others, the uniform actions and
    the critic's params keep theirs; without the bound every policy action has one."""
    config, critic, params, data, target, cql_actions = loss_inputs(seed=2)
    random, (next_pi, log_next), (pi, log_pi) = cql_actions
    q_next, q_pi = (critic.apply(params, data["observations"][:, None], a) for a in (next_pi, pi))
    lower = jnp.median(jnp.concatenate([q_next, q_pi], -1), axis=(0, 2))

    def loss(lower, random, next_pi, pi, params):
        batch = data | {"mc_returns": lower}
        actions = (random, (next_pi, log_next), (pi, log_pi))
        return calql.calql_critic_loss(params, batch, target, actions, 1.0, config)[0]

    grads = jax.grad(loss, argnums=range(5))(lower, random, next_pi, pi, params)
    assert float(jnp.abs(grads[0]).max()) == 0.0
    unbounded = jax.grad(loss, argnums=(2, 3))(
        jnp.full((4,), -jnp.inf), random, next_pi, pi, params
    )
    for q, grad, free_grad in ((q_next, grads[2], unbounded[0]), (q_pi, grads[3], unbounded[1])):
        bounded = np.asarray((q < lower[None, :, None]).all(0))  # (B, n)
        free = np.asarray((q >= lower[None, :, None]).all(0))
        assert bounded.any() and free.any()
        size = np.abs(np.asarray(grad)).sum(-1)
        assert np.all(size[bounded] == 0) and np.all(size[free] > 0)
        # the same actions unbounded: the bound is what cut their gradient
        assert np.abs(np.asarray(free_grad)).sum(-1)[bounded].max() > 0
    assert float(jnp.abs(grads[1]).max()) > 0 and optax_norm(grads[4]) > 0


def optax_norm(tree):
    return float(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)) ** 0.5)


def dataset(n=48, seed=0, action_scale=1.0) -> Dataset:
    """Pendulum's shapes (obs 3, action 1), episodes of 8 steps timing out, one terminating."""
    rng = np.random.default_rng(seed)
    terminals, timeouts = np.zeros(n, np.float32), np.zeros(n, np.float32)
    timeouts[7::8] = 1
    terminals[15], timeouts[15] = 1, 0
    return Dataset.from_arrays(
        observations=rng.normal(size=(n, 3)),
        actions=action_scale * rng.uniform(-1, 1, (n, 1)),
        rewards=rng.normal(size=n),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(size=(n, 3)),
    )


def pendulum(max_steps=5):
    return envs.make("Pendulum-v1", unit_actions=True, max_steps_in_episode=max_steps)


def offline_state(config, data, seed=0):
    return jax.jit(lambda k: calql.train(config, data, k))(jax.random.PRNGKey(seed))[0]


def test_init_keeps_the_datasets_return_to_go():
    data = dataset()
    config = calql.Config(**TINY, gamma=0.9, reward_scale=0.5)
    state = calql.init(config, data, jax.random.PRNGKey(0))
    ends = (data.terminals + data.timeouts > 0) | (np.arange(48) == 47)
    expected = reference_return_to_go(
        np.asarray(data.rewards), ends, np.asarray(data.terminals), 0.9, 0.5, 0.0
    )
    np.testing.assert_allclose(state.mc_returns, expected, rtol=1e-5, atol=1e-6)


def test_begin_online_carries_the_offline_state():
    """Params, targets, optimizers, V_mu and the step counter carried over unchanged; an empty
    replay of min(replay_size, online_steps) rows with V_mu -inf; num_envs reset envs."""
    data = dataset()
    config = calql.Config(**TINY, online_steps=6, num_envs=2, replay_size=100)
    state = offline_state(config, data)
    env, env_params = pendulum()
    online = calql.begin_online(config, data, env, env_params, state)
    for name in ("params", "target_critic", "critic_opt", "actor_opt", "mc_returns"):
        jax.tree.map(np.testing.assert_array_equal, getattr(online, name), getattr(state, name))
    assert type(online.params) is type(state.params)
    assert int(online.update_step) == 2 and int(online.replay.size) == 0
    assert online.replay.data["rewards"].shape == (6,) and online.obs.shape == (2, 3)
    assert np.all(np.asarray(online.replay.data["mc_returns"]) == -np.inf)
    assert not np.any(online.episodes.open)


def test_update_online_fills_the_replay_and_closes_episodes():
    """Pendulum with episodes of 5 steps, one env, 7 online iterations: 7 rows, each with its
    gradient step; the first episode's 5 rows get the return-to-go of their (scaled) rewards,
    the next two stay -inf; the offline-trained params moved."""
    data = dataset()
    config = calql.Config(**TINY, online_steps=7, gamma=0.9, reward_scale=0.1)
    state = offline_state(config, data)
    env, env_params = pendulum(5)
    online, metrics = jax.jit(lambda s: calql.fine_tune(config, data, env, env_params, s))(state)
    assert int(online.replay.size) == 7 and int(online.update_step) == 2 + 7
    rewards = np.asarray(online.replay.data["rewards"])
    expected = reference_return_to_go(rewards[:5], np.eye(5)[4], np.zeros(5), 0.9, 0.1, 0.0)
    got = np.asarray(online.replay.data["mc_returns"])
    np.testing.assert_allclose(got[:5], expected, rtol=1e-5)
    assert np.all(got[5:] == -np.inf)
    assert np.isnan(metrics["episode_train_return"][3]) and metrics["episode_train_length"][4] == 5
    np.testing.assert_allclose(metrics["episode_train_return"][4], rewards[:5].sum(), rtol=1e-5)
    for key, value in metrics.items():
        assert key.startswith("episode_train_") or np.isfinite(value).all(), key
    assert "episode_return" not in metrics
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), online.params.actor, state.params.actor)
    assert max(jax.tree.leaves(moved)) > 0


def test_update_online_jit_vmap_and_determinism():
    """Two configs differing in traced fields (offline_fraction, cql_alpha, reward_scale),
    stacked and vmapped over begin_online and 3 update_online, agree with each run alone; and a
    run repeated is bit-identical."""
    data = dataset()
    env, env_params = pendulum()
    base = calql.Config(**TINY, online_steps=6, num_envs=2)
    configs = [
        base.replace(offline_fraction=0.25, cql_alpha=1.0),
        base.replace(offline_fraction=0.75, reward_scale=2.0),
    ]

    def run(config, key):
        state = calql.train(config, data, key)[0]
        return calql.fine_tune(config, data, env, env_params, state)

    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    together = jax.jit(jax.vmap(run))(stacked, keys)
    alone = [jax.jit(run)(c, k) for c, k in zip(configs, keys, strict=True)]
    for member, single in enumerate(alone):
        mine = jax.tree.map(lambda x: x[member], together)  # noqa: B023
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    again = jax.jit(run)(configs[0], keys[0])
    jax.tree.map(np.testing.assert_array_equal, again, alone[0])


def test_named_errors():
    with pytest.raises(FieldOutOfRange, match="offline_fraction"):
        make_config(calql.Config, {"offline_fraction": 1.5})
    with pytest.raises(FieldOutOfRange, match="offline_fraction"):
        make_config(calql.Config, {"offline_fraction": -0.1})
    with pytest.raises(ValueError, match="online_steps=3 must be a multiple of num_envs=2"):
        calql.check(calql.Config(online_steps=3, num_envs=2))
    with pytest.raises(ValueError, match="replay_size"):
        calql.check(calql.Config(replay_size=1, num_envs=2, online_steps=2))
    with pytest.raises(ValueError, match="\\[-1, 1\\]"):
        calql.init(calql.Config(**TINY), dataset(action_scale=3.0), jax.random.PRNGKey(0))


@pytest.mark.slow
def test_learns_offline_then_online_on_pendulum(tmp_path):
    """Pendulum-v1 medium-replay (~23k rows, tests/runs.py), 64x64 nets, batch 128, actor and
    alpha lr 3e-4, alpha_cql 1: 5000 offline updates, then 5000 online env steps (one env, utd
    1, half of each batch from the dataset), greedy return over 20 episodes. Measured, seed 0:
    -1415 after the offline phase, -342 after the online one (seed 1: -1269, -666); this
    budget leaves the offline policy no better than random, and the online phase gains more
    than 600. Asserts a gain of 400 and a final return above -700. About 200 s on a loaded
    2-core machine."""
    from runs import pendulum_medium_replay

    from rljax.data import files
    from rljax.runner.evaluation import agent_policy, evaluate_policy

    path, _ = pendulum_medium_replay(tmp_path)
    data, _ = files.load(str(path))
    env, env_params = envs.make("Pendulum-v1", unit_actions=True)
    config = calql.Config(
        total_updates=5000, hidden_sizes=(64, 64), batch_size=128, actor_lr=3e-4, alpha_lr=3e-4,
        cql_alpha=1.0, online_steps=5000,
    )  # fmt: skip
    declared = agents.declaration("calql")

    def score(params):
        policy = agent_policy(declared, config, params, deterministic=True)
        return float(evaluate_policy(policy, env, env_params, 20, jax.random.PRNGKey(100)).mean())

    state = offline_state(config, data)
    offline = score(state.params)
    state, _ = jax.jit(lambda s: calql.fine_tune(config, data, env, env_params, s))(state)
    online = score(state.params)
    assert online >= offline + 400 and online > -700, (offline, online)
