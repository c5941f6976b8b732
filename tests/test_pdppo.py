"""PDPPO: the combined advantage and the loss by hand, the contract, errors, learning; the
authors' protocol: Monte-Carlo returns by hand, full-batch epochs, one optimizer per network.
(Its GAE and Monte-Carlo returns are inlined copies, checked in tests/test_inlined_copies.py.)"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import cli, envs
from rljax.agents import pdppo, ppo

REPO = Path(__file__).resolve().parents[1]
ENV = "rljax/LotSizing-5x2"
# 4 updates of 4 envs x one whole 100-step episode.
TINY = dict(num_envs=4, num_steps=100, num_minibatches=2, update_epochs=2, total_timesteps=1600)


# --- The paper's change, by hand ---

# One env, three steps; gamma 0.5, lambda 1 (Monte-Carlo returns, as the authors' code).
PRE_ADVANTAGES, VALUES = np.array([-1.0, 1.0, -3.0]), np.array([1.0, 1.0, 2.0])
PRE_TARGETS = PRE_ADVANTAGES + VALUES  # (0, 2, -1)
POST_REWARDS, POST_VALUES = np.array([-1.0, 0.0, -2.0]), np.array([0.5, -1.0, 0.0])


def combine(advantage, done, estimator="gae"):
    config = pdppo.Config(
        advantage=advantage, advantage_estimator=estimator, gamma=0.5, gae_lambda=1.0
    )
    columns = (PRE_ADVANTAGES, PRE_TARGETS, VALUES, POST_REWARDS, POST_VALUES, np.array(done))
    args = [jnp.asarray(x)[:, None] for x in columns]
    return [np.asarray(x) for x in jax.jit(pdppo.combine_advantages)(*args, config)]


def test_combined_advantages_by_hand():
    """The post-decision returns G^x = (-1.5, -1, -2) (r^x + 0.5 G^x_next, ending with the
    rollout) give A^x = G^x - V^x = (-2, 0, -2). "max" follows max(A^x, A) = (-1, 1, -2) and fits
    [V, V^x] to [G, G^x]; "min" follows G - min(V, V^x) = (-0.5, 3, -1) and fits min(V, V^x) to
    G; "pre" is PPO. An episode end after step 0 cuts the post-decision trace: A^x_0 = r^x_0 -
    V^x_0 = -1.5."""
    advantages, old_values, targets, post_wins = combine("max", [False, False, False])
    np.testing.assert_allclose(advantages[:, 0], [-1.0, 1.0, -2.0])
    np.testing.assert_allclose(old_values[:, 0], [[1.0, 0.5], [1.0, -1.0], [2.0, 0.0]])
    np.testing.assert_allclose(targets[:, 0], [[0.0, -1.5], [2.0, -1.0], [-1.0, -2.0]])
    np.testing.assert_allclose(post_wins, 1 / 3)

    advantages, old_values, targets, _ = combine("min", [False, False, False])
    np.testing.assert_allclose(advantages[:, 0], [-0.5, 3.0, -1.0])
    np.testing.assert_allclose(old_values[:, 0, 0], [0.5, -1.0, 0.0])
    np.testing.assert_allclose(targets[:, 0, 0], PRE_TARGETS)

    advantages, old_values, targets, _ = combine("pre", [False, False, False])
    np.testing.assert_allclose(advantages[:, 0], PRE_ADVANTAGES)
    np.testing.assert_allclose(old_values[:, 0, 0], VALUES)
    np.testing.assert_allclose(targets[:, 0, 0], PRE_TARGETS)

    advantages, _, targets, _ = combine("max", [True, False, False])
    np.testing.assert_allclose(targets[:, 0, 1], [-1.0, -1.0, -2.0])
    np.testing.assert_allclose(advantages[:, 0], [-1.0, 1.0, -2.0])  # max(-1.5, -1) = -1
    # After step 1: A^x = (-1 - 0.5 (-1) - 0.5 + 0.5 A^x_1, 0 + 1, -2) = (-1.5, 1, -2).
    _, _, targets, _ = combine("max", [False, True, False])
    np.testing.assert_allclose(targets[:, 0, 1], [-1.0, 0.0, -2.0])


def test_combined_advantages_with_monte_carlo_returns():
    """The post-decision trace as Monte-Carlo returns is GAE's with lambda 1 and no bootstrap at
    the episode's and the rollout's ends: the hand case above, whichever critics combine."""
    for advantage in ("max", "min", "pre"):
        for done in ([False, False, False], [True, False, False], [False, True, False]):
            for got, want in zip(
                combine(advantage, done, "monte_carlo"), combine(advantage, done), strict=True
            ):
                np.testing.assert_allclose(got, want, rtol=1e-6)


# --- Monte-Carlo returns (the authors' estimator; its copy in ppo.py is this text) ---


def test_monte_carlo_returns_by_hand():
    """Five steps, gamma 0.5, rewards (1, 2, 3, 4, 5), V = (0.5, 1, 1.5, 2, 2.5), V(s') = (10,
    20, 30, 40, 50). Env 0: a termination at step 1 (no bootstrap: G_1 = 2, G_0 = 1 + 0.5 * 2),
    a truncation at step 3 (bootstraps: G_3 = 4 + 0.5 * 40 = 24, G_2 = 3 + 0.5 * 24 = 15), and
    the rollout cut after step 4 (no bootstrap, as the authors: G_4 = 5). Env 1: step 3 both
    terminated and truncated: no bootstrap (G_3 = 4, G_2 = 5). A = G - V; the same under jit and
    vmap over envs."""
    column = np.array([1.0, 2, 3, 4, 5], np.float32)
    rewards, values = np.stack([column, column], 1), np.stack([column / 2, column / 2], 1)
    next_values = 10 * rewards
    terminated, truncated = np.zeros((5, 2), bool), np.zeros((5, 2), bool)
    terminated[1] = truncated[3] = True
    terminated[3, 1] = True
    expected = np.array([[2.0, 2, 15, 24, 5], [2.0, 2, 5, 4, 5]]).T
    args = (rewards, values, next_values, terminated, truncated, 0.5)
    per_env = jax.vmap(pdppo.monte_carlo, in_axes=(1, 1, 1, 1, 1, None), out_axes=1)
    for fn in (pdppo.monte_carlo, jax.jit(pdppo.monte_carlo), per_env):
        advantages, targets = fn(*args)
        np.testing.assert_allclose(targets, expected, rtol=1e-6)
        np.testing.assert_allclose(advantages, expected - values, rtol=1e-6)


def test_monte_carlo_is_gae_with_lambda_one_on_whole_episodes():
    """When every episode ends inside the rollout (its last step terminates), the Monte-Carlo
    returns are GAE's lambda-1 targets: random rollouts of 4 envs with terminations and
    truncations."""
    rng = np.random.default_rng(0)
    shape = (30, 4)
    rewards, values, next_values = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    terminated, truncated = rng.random(shape) < 0.1, rng.random(shape) < 0.1
    terminated[-1] = True
    # Within an episode the next state's value is the next step's, as in a rollout.
    within = ~(terminated | truncated)
    next_values[within] = np.roll(values, -1, axis=0)[within]
    args = (rewards, values, next_values, terminated, truncated, 0.9)
    for got, want in zip(pdppo.monte_carlo(*args), pdppo.gae(*args, 1.0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loss_by_hand():
    """Three samples, two critics (V, V^x). Policy: ratio 1.5 with A > 0 (clipped at 1.2), 0.5
    with A < 0 (clipped at 0.8), 1.0. Value: each critic's clipped loss, summed:
    V:   old (1, 0, 0), new (1.5, 0.1, 0), targets (2, 1, 0): max errors (0.64, 0.81, 0)
    V^x: old (0, 0, 1), new (-0.5, 0, 1), targets (-1, 0.5, 1): max errors (0.64, 0.25, 0)
    value loss 0.5 mean(1.28, 1.06, 0) = 0.39. With one critic it is ppo.ppo_loss."""
    config = pdppo.Config(clip_eps=0.2, vf_coef=0.5, ent_coef=0.01)
    ratio = np.array([1.5, 0.5, 1.0])
    old_log_prob = np.array([-1.0, -2.0, -0.5])
    log_prob = old_log_prob + np.log(ratio)
    raw_advantages = np.array([2.0, -3.0, 1.0])
    old_value = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    value = np.array([[1.5, -0.5], [0.1, 0.0], [0.0, 1.0]])
    targets = np.array([[2.0, -1.0], [1.0, 0.5], [0.0, 1.0]])
    entropy = np.array([1.0, 0.5, 0.3])

    a = (raw_advantages - raw_advantages.mean()) / (raw_advantages.std() + 1e-8)
    policy_loss = -np.mean([1.2 * a[0], 0.8 * a[1], a[2]])
    value_loss = 0.39
    inputs = [log_prob, old_log_prob, raw_advantages, value, old_value, targets, entropy]
    inputs = [jnp.asarray(x, jnp.float32) for x in inputs]
    loss, parts = jax.jit(pdppo.pdppo_loss)(*inputs, config)
    np.testing.assert_allclose(parts["policy_loss"], policy_loss, rtol=1e-5)
    np.testing.assert_allclose(parts["value_loss"], value_loss, rtol=1e-5)
    np.testing.assert_allclose(loss, policy_loss + 0.5 * value_loss - 0.01 * 0.6, rtol=1e-5)

    one_critic = [*inputs[:3], *(x[:, :1] for x in inputs[3:6]), inputs[6]]
    pdppo_parts = pdppo.pdppo_loss(*one_critic, config)[1]
    ppo_parts = ppo.ppo_loss(*inputs[:3], *(x[:, 0] for x in inputs[3:6]), inputs[6], config)[1]
    for name, want in ppo_parts.items():
        np.testing.assert_allclose(pdppo_parts[name], want, rtol=1e-6, err_msg=name)


# --- The contract ---


@pytest.fixture(scope="module")
def env():
    return envs.make(ENV)


def init(config, env, env_params):
    """pdppo.init, jitted (eagerly it takes seconds); errors still raise while tracing."""
    return jax.jit(lambda key: pdppo.init(config, env, env_params, key))(jax.random.PRNGKey(0))


def test_train_is_deterministic_and_finite(env):
    """Two runs with one key agree bit for bit; every metric but episode_* is finite; one whole
    episode per env finishes per update. (The CLI test runs advantage="min".)"""
    env, env_params = env
    train = jax.jit(lambda config, key: pdppo.train(config, env, env_params, key))
    config, key = pdppo.Config(**TINY), jax.random.PRNGKey(0)
    first, second = train(config, key), train(config, key)
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(x, y)
    metrics = first[1]
    assert {"grad_norm", "value_loss", "post_advantage_wins"} <= set(metrics)
    for name, value in metrics.items():
        assert np.isfinite(value).all(), name
    np.testing.assert_array_equal(metrics["episodes"], 4)
    _, other = train(config, jax.random.PRNGKey(1))
    assert not np.array_equal(other["loss"], metrics["loss"])


def test_act(env):
    """act gives one action per machine: deterministic is the argmax of each machine's logits,
    otherwise a sample of the same distribution."""
    env, env_params = env
    config = pdppo.Config(**TINY)
    params = init(config, env, env_params).params

    @jax.jit
    def perturb(params):  # the initial actor head is near zero: make the actions differ
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        noisy = [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
        return jax.tree.unflatten(treedef, noisy)

    params = perturb(params)
    obs = jax.random.uniform(jax.random.PRNGKey(2), (64, *env.observation_space(env_params).shape))
    pi, _ = pdppo._network(config, env.action_space(env_params)).apply(params.net, obs)
    key = jax.random.PRNGKey(3)
    act = jax.jit(pdppo.act, static_argnames="deterministic")
    action = act(config, params, obs, key, deterministic=True)
    assert action.shape == (64, 2)
    np.testing.assert_array_equal(action, np.argmax(pi.distribution.logits, -1))
    assert len(np.unique(np.asarray(action))) > 2
    np.testing.assert_array_equal(act(config, params, obs, key), pi.sample(seed=key))


# --- The authors' protocol: full-batch epochs, one optimizer per network ---


def one_update(env, env_params):
    """(config) -> init then one update: the initial and the updated state and the metrics;
    jitted with the config an argument, so configs that differ in their rates share a program."""

    def run(config, key):
        state = pdppo.init(config, env, env_params, key)
        return (state, *pdppo.update(config, env, env_params, state))

    jitted = jax.jit(run)
    return lambda config: jitted(config, jax.random.PRNGKey(0))


def test_one_minibatch_epochs_are_full_batch_epochs(env, monkeypatch):
    """num_minibatches=1 gives the authors' full-batch epochs: each epoch one gradient step on
    the whole rollout. An update equals the one whose epochs take the rollout unpermuted (to
    float rounding: the loss sums in another order), and 60 epochs are 60 Adam steps."""
    env, env_params = env
    config = pdppo.Config(
        **TINY | dict(num_minibatches=1, update_epochs=60), advantage_estimator="monte_carlo"
    )
    _, state, metrics = one_update(env, env_params)(config)
    (adam,) = [
        x
        for x in jax.tree.leaves(
            state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
        )
        if isinstance(x, optax.ScaleByAdamState)
    ]
    assert int(adam.count) == 60
    monkeypatch.setattr(jax.random, "permutation", lambda key, n: jnp.arange(n))
    _, in_order, in_order_metrics = one_update(env, env_params)(config)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(in_order), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics["loss"], in_order_metrics["loss"], rtol=1e-4, atol=1e-6)


def largest_moves(before, after):
    """Per network ("actor", "critic", "post_critic"), the largest change of a weight."""
    owners = pdppo._owners(before.params.net)
    moves = jax.tree.map(
        lambda x, y: float(jnp.abs(x - y).max()), before.params.net, after.params.net
    )
    largest = {}
    for owner, move in zip(jax.tree.leaves(owners), jax.tree.leaves(moves), strict=True):
        largest[owner] = max(largest.get(owner, 0.0), move)
    return largest


def test_separate_optimizers_step_each_network_at_its_rate(env):
    """One update of one full-batch epoch from a fresh Adam, whose first step moves a weight by
    lr |g| / (|g| + 1e-5): the largest move in each network is its learning rate, the actor's
    lr, the critics' critic_lr. A zero rate freezes its networks and no other. One optimizer
    moves all three at lr and ignores critic_lr, bit for bit."""
    env, env_params = env
    base = pdppo.Config(**TINY | dict(num_minibatches=1, update_epochs=1), anneal_lr=False)
    separate = base.replace(separate_optimizers=True)

    run = one_update(env, env_params)

    moves = largest_moves(*run(separate.replace(lr=1e-3, critic_lr=1e-2))[:2])
    np.testing.assert_allclose(
        [moves["actor"], moves["critic"], moves["post_critic"]], [1e-3, 1e-2, 1e-2], rtol=1e-2
    )
    moves = largest_moves(*run(separate.replace(critic_lr=0.0))[:2])
    assert moves["actor"] > 0 and moves["critic"] == moves["post_critic"] == 0
    moves = largest_moves(*run(separate.replace(lr=0.0))[:2])
    assert moves["actor"] == 0 and moves["critic"] > 0 and moves["post_critic"] > 0

    single = run(base.replace(lr=1e-3, critic_lr=1e-2))
    moves = largest_moves(*single[:2])
    np.testing.assert_allclose(list(moves.values()), [1e-3] * 3, rtol=1e-2)
    other = run(base.replace(lr=1e-3, critic_lr=5e-2))
    for x, y in zip(jax.tree.leaves(single), jax.tree.leaves(other), strict=True):
        np.testing.assert_array_equal(x, y)


class DropPostDecision(envs.lot_sizing.LotSizing):
    """Lot sizing without the post-decision info."""

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = super().step_env(key, state, action, params)
        return obs, state, reward, terminated, {}


def test_init_errors(env):
    env, env_params = env
    with pytest.raises(ValueError, match=r"num_steps=50 must be a multiple of .*=100"):
        init(pdppo.Config(num_steps=50), env, env_params)
    init(pdppo.Config(num_steps=50, advantage="pre"), env, env_params)
    with pytest.raises(ValueError, match=r"num_steps=50 must be a multiple of .*=100"):
        init(pdppo.Config(num_steps=50, advantage="pre", advantage_estimator="monte_carlo"), env,
             env_params)  # fmt: skip
    with pytest.raises(ValueError, match=r"advantage_estimator='td' is not allowed"):
        init(pdppo.Config(advantage_estimator="td"), env, env_params)
    cartpole, cartpole_params = envs.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"MultiDiscrete action space"):
        init(pdppo.Config(), cartpole, cartpole_params)
    base = envs.lot_sizing.make_instance("5x2")[0]
    dropped = DropPostDecision(base.production, base.setup_costs, base.setup_loss)
    with pytest.raises(ValueError, match=r"info\['post_decision_obs'\]"):
        init(pdppo.Config(), dropped, env_params)


def test_cli_train_and_eval(tmp_path, capsys, monkeypatch):
    """The runner trains the preset with the min-critic advantage (2 seeds, vmapped) on the
    small instance with deterministic demand, no member diverges, and it evaluates."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    tiny = [f"--set={k}={v}" for k, v in TINY.items() if k != "total_timesteps"]
    status = cli.main(
        ["train", "pdppo", "--config", "configs/pdppo/lot_sizing_15x5.yaml", "--env", ENV,
         *tiny, "--set", "advantage=min", "--set", "env.deterministic_demand=true",
         "--total-steps", "800", "--seeds", "2",
         "--out", str(out)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolved"]["advantage"] == "min" and summary["run"]["seeds"] == 2
    assert summary["failed"] == {} and len(summary["final_returns"]) == 2
    assert cli.main(["eval", str(out), "--episodes", "4", "--deterministic", "--members"]) == 0
    assert "member 1 (config 0, seed 1): return" in capsys.readouterr().out


# --- Learning ---


def mean_costs(config, env, env_params, num_seeds):
    """Per seed, the mean episode cost over the last 5 updates."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)

    def run(key):
        return pdppo.train(config, env, env_params, key)[1]["episode_return"]

    returns = jax.jit(lambda keys: jax.lax.map(run, keys))(keys)
    return -np.asarray(returns)[:, -5:].mean(1)


def random_policy_cost(env, env_params, episodes=64):
    space = env.action_space(env_params)

    def episode(key):
        reset_key, key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def one_step(state, key):
            action_key, step_key = jax.random.split(key)
            _, state, reward, *_ = env.step(step_key, state, space.sample(action_key), env_params)
            return state, reward

        return jax.lax.scan(one_step, state, jax.random.split(key, 100))[1].sum()

    return -float(
        jax.jit(jax.vmap(episode))(jax.random.split(jax.random.PRNGKey(1), episodes)).mean()
    )


@pytest.mark.slow
def test_pdppo_beats_a_random_policy(env):
    """On the 5-item, 2-machine instance with binomial demand, 64k steps (40 updates of 16
    episodes) bring PDPPO's episode cost well below the uniformly random policy's (about 650)."""
    env, env_params = env
    random_cost = random_policy_cost(env, env_params)
    assert 600 < random_cost < 700, random_cost
    config = pdppo.Config(total_timesteps=40 * 1600)
    costs = mean_costs(config, env, env_params, num_seeds=2)
    assert (costs < 0.8 * random_cost).all(), (costs, random_cost)
