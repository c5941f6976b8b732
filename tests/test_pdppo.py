"""PDPPO: the combined advantage and the loss by hand, the contract, errors, learning. (Its GAE
is an inlined copy, checked in tests/test_inlined_copies.py.)"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
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


def combine(advantage, done):
    config = pdppo.Config(advantage=advantage, gamma=0.5, gae_lambda=1.0)
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
