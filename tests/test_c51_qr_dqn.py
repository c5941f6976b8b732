"""C51 and QR-DQN: their losses against rlax, the replay buffer, the target network and
learning_starts, act, learning on CartPole, the CLI and a bit-exact resume."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax
import yaml
from runs import checkpoint_leaves, quiet

from rljax import cli, envs
from rljax.agents import c51, qr_dqn
from rljax.runner import config as config_lib
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
AGENTS = [c51, qr_dqn]
# 8 updates of 2 envs x 8 steps, 4 gradient steps each from the second update on.
TINY = dict(num_envs=2, num_steps=8, updates_per_iteration=4, batch_size=8, buffer_size=64)
TINY.update(total_timesteps=8 * 16, learning_starts=32, hidden_sizes=(16,))
TINY_BY_AGENT = {c51: dict(TINY, num_atoms=11, v_max=10.0), qr_dqn: dict(TINY, num_quantiles=8)}


def random_batch(num_actions=3, size=32, seed=0):
    """Actions, rewards (some beyond a [0, 10] support) and discounts, a quarter terminal."""
    rng = np.random.default_rng(seed)
    a_tm1 = rng.integers(0, num_actions, size).astype(np.int32)
    r_t = rng.uniform(-3, 13, size).astype(np.float32)
    discount_t = (0.9 * (rng.random(size) > 0.25)).astype(np.float32)
    return a_tm1, r_t, discount_t


def agree(fn, args, in_axes, expected):
    """fn vmapped, jitted and vmapped, and per example (no jit) equals expected."""
    batched = jax.vmap(fn, in_axes=in_axes)
    for got in (batched(*args), jax.jit(batched)(*args)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    for i in range(4):
        example = [x if axis is None else x[i] for x, axis in zip(args, in_axes, strict=True)]
        np.testing.assert_allclose(fn(*example), expected[i], rtol=1e-5, atol=1e-6)


# --- Losses ---


def test_c51_loss_matches_rlax_categorical_q_learning():
    """categorical_q_loss equals rlax.categorical_q_learning (target network greedy action,
    projection, cross-entropy), terminal transitions and rewards beyond the support included."""
    a_tm1, r_t, discount_t = random_batch()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    logits_tm1, logits_t = (jax.random.normal(k, (32, 3, 11)) * 2 for k in keys)
    z = jnp.linspace(0.0, 10.0, 11)
    args = (logits_tm1, a_tm1, r_t, discount_t, logits_t, z)
    expected = jax.vmap(rlax.categorical_q_learning, in_axes=(None, 0, 0, 0, 0, None, 0))(
        z, logits_tm1, a_tm1, r_t, discount_t, z, logits_t
    )
    agree(c51.categorical_q_loss, args, (0, 0, 0, 0, 0, None), expected)


def test_c51_terminal_loss_by_hand():
    """Discount 0: the target is the reward alone, 1.25 split 3:1 between atoms 1 and 2."""
    z = jnp.arange(4.0)
    logits_tm1 = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    loss = c51.categorical_q_loss(logits_tm1, 1, 1.25, 0.0, jnp.zeros((2, 4)), z)
    np.testing.assert_allclose(loss, -(0.75 * np.log(0.3) + 0.25 * np.log(0.2)), rtol=1e-6)


@pytest.mark.parametrize("kappa", [1.0, 0.0])
def test_qr_dqn_loss_matches_rlax_quantile_q_learning(kappa):
    """quantile_q_loss (action-major (A, N)) equals rlax.quantile_q_learning (quantile-major
    (N, A)) with the target network as selector, terminal transitions included."""
    a_tm1, r_t, discount_t = random_batch()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    dist_tm1, dist_t = (jax.random.normal(k, (32, 3, 8)) * 3 for k in keys)
    tau = (jnp.arange(8) + 0.5) / 8
    args = (dist_tm1, a_tm1, r_t, discount_t, dist_t, kappa)
    major = jnp.swapaxes(dist_t, 1, 2)
    expected = jax.vmap(rlax.quantile_q_learning, in_axes=(0, None, 0, 0, 0, 0, 0, None))(
        jnp.swapaxes(dist_tm1, 1, 2), tau, a_tm1, r_t, discount_t, major, major, kappa
    )
    agree(qr_dqn.quantile_q_loss, args, (0, 0, 0, 0, 0, None), expected)


def test_qr_dqn_terminal_loss_by_hand():
    """Discount 0, kappa 1: two quantiles (tau 1/4, 3/4) at 0 and 2 against the reward 1:
    u = [1, -1], L = 1/2 each, weights 1/4 and 1/4."""
    dist_tm1 = jnp.array([[5.0, 6.0], [0.0, 2.0]])
    loss = qr_dqn.quantile_q_loss(dist_tm1, 1, 1.0, 0.0, jnp.full((2, 2), 100.0), 1.0)
    np.testing.assert_allclose(loss, 0.25 * 0.5 + 0.25 * 0.5, rtol=1e-6)


# --- Replay buffer ---


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_buffer_wraps_around_and_samples_only_filled_slots(agent):
    example = {"x": jnp.zeros(()), "y": jnp.zeros(2, jnp.int32)}
    buffer = agent.buffer_init(5, example)

    def batch(values):
        values = jnp.array(values)
        return {"x": values.astype(jnp.float32), "y": jnp.stack([values, -values], -1)}

    buffer = jax.jit(agent.buffer_add)(buffer, batch([0, 1, 2]))
    assert (int(buffer.size), int(buffer.position)) == (3, 3)
    sample = agent.buffer_sample(buffer, jax.random.PRNGKey(0), 300)
    assert set(np.asarray(sample["x"]).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(sample["y"][:, 0], sample["x"])  # rows stay together

    buffer = agent.buffer_add(buffer, batch([3, 4, 5, 6]))  # 5 and 6 overwrite 0 and 1
    assert (int(buffer.size), int(buffer.position)) == (5, 2)
    np.testing.assert_array_equal(buffer.data["x"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.data["y"][:, 1], [-5, -6, -2, -3, -4])
    sample = agent.buffer_sample(buffer, jax.random.PRNGKey(1), 300)
    assert set(np.asarray(sample["x"]).tolist()) == {2, 3, 4, 5, 6}


# --- The contract ---


def tiny(agent, **changes):
    return agent.Config(**{**TINY_BY_AGENT[agent], **changes})


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_learning_starts_and_the_target_network(agent):
    """Update 1 fills 16 of the 32 transitions learning_starts asks for: nothing is learned.
    Update 2 takes 4 gradient steps; with target_update_interval 4 and tau 1 the target is then
    a copy of the online network; with tau 0.5 the halfway point; with interval 5, untouched."""
    env, env_params = envs.make("CartPole-v1")

    @jax.jit
    def two_updates(config, key):
        state = agent.init(config, env, env_params, key)
        states = [state]
        for _ in range(2):
            states.append(agent.update(config, env, env_params, states[-1])[0])
        return states

    def equal(x, y):
        return all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
        )

    key = jax.random.PRNGKey(0)
    start, first, second = two_updates(tiny(agent, target_update_interval=4), key)
    assert int(first.buffer.size) == 16 and int(first.gradient_step) == 0
    assert equal(first.params, start.params) and equal(first.target_params, start.params)
    assert int(second.buffer.size) == 32 and int(second.gradient_step) == 4
    assert not equal(second.params, start.params) and equal(second.target_params, second.params)

    *_, polyak = two_updates(tiny(agent, target_update_interval=4, tau=0.5), key)
    halfway = jax.tree.map(lambda p, t: 0.5 * p + 0.5 * t, polyak.params.net, start.params.net)
    jax.tree.map(np.testing.assert_allclose, polyak.target_params, halfway)

    *_, unsynced = two_updates(tiny(agent, target_update_interval=5), key)
    assert equal(unsynced.target_params, start.params)


@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_act_is_greedy_in_the_mean_or_epsilon_greedy(agent):
    """deterministic: the argmax of the mean of each action's distribution; otherwise
    epsilon-greedy with end_e: greedy at 0, uniform over actions at 1."""
    env, env_params = envs.make("Breakout-MinAtar", flatten_obs=True)  # 3 actions
    config = tiny(agent)
    params = agent.init(config, env, env_params, jax.random.PRNGKey(0)).params
    obs = jax.random.uniform(jax.random.PRNGKey(1), (256, 400))
    out = agent._network(config, 3).apply(params.net, obs)  # (256, 3, atoms or quantiles)
    mean = (jax.nn.softmax(out) * c51._support(config)).sum(-1) if agent is c51 else out.mean(-1)
    greedy = np.argmax(mean, -1)
    assert len(np.unique(greedy)) > 1
    key = jax.random.PRNGKey(2)
    np.testing.assert_array_equal(agent.act(config, params, obs, key, deterministic=True), greedy)
    np.testing.assert_array_equal(agent.act(config.replace(end_e=0.0), params, obs, key), greedy)
    uniform = np.asarray(agent.act(config.replace(end_e=1.0), params, obs, key))
    assert np.bincount(uniform, minlength=3).min() > 50 and (uniform != greedy).mean() > 0.5


def test_bad_configs_are_named_errors():
    env, env_params = envs.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"buffer_size=10 must hold .* = 16 transitions"):
        c51.init(tiny(c51, buffer_size=10), env, env_params, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"v_min=5.0 must be less than v_max=5.0"):
        config_lib.make_config(c51.Config, {"v_min": "5", "v_max": "5"})
    env, env_params = envs.make("Pendulum-v1")
    with pytest.raises(ValueError, match="QR-DQN needs discrete actions, got Box"):
        qr_dqn.init(tiny(qr_dqn), env, env_params, jax.random.PRNGKey(0))


# --- Learning ---


def final_returns(agent, preset, num_seeds=2, last_fraction=0.1, **changes):
    """Per seed, the mean return of the episodes finished in the last tenth of the run."""
    preset = yaml.safe_load((REPO / "configs" / preset).read_text())
    env, env_params = envs.make(**preset["env"])
    config = config_lib.make_config(agent.Config, {**preset["agent"], **changes})
    configs = config_lib.stack([config] * num_seeds)
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)

    def run(configs, keys):
        states = jax.lax.map(lambda ck: agent.init(ck[0], env, env_params, ck[1]), (configs, keys))

        def one(c, state):
            return jax.lax.scan(
                lambda s, _: agent.update(c, env, env_params, s), state, None, config.num_updates
            )[1]

        return jax.vmap(one)(configs, states)

    returns = np.asarray(jax.jit(run)(configs, keys)["episode_return"])
    return np.nanmean(returns[:, -max(1, int(last_fraction * returns.shape[1])) :], axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("agent", AGENTS, ids=lambda a: a.__name__.rsplit(".", 1)[-1])
def test_learns_cartpole(agent):
    """The CartPole preset cut to 5e4 steps lifts the return from about 20 (random) to > 100
    on each of two seeds (they reach 170 to 490), with epsilon-greedy episodes still exploring."""
    name = agent.__name__.rsplit(".", 1)[-1]
    returns = final_returns(agent, f"{name}/cartpole.yaml", total_timesteps=50_000)
    assert (returns > 100).all(), returns


# --- Runner and CLI ---


@pytest.mark.parametrize("algo", ["c51", "qr_dqn"])
def test_cli_train_writes_a_run_directory(algo, tmp_path, capsys):
    """rljax train ALGO with a tiny config: every result file, checkpoints, two seeds."""
    fields = {**TINY_BY_AGENT[c51 if algo == "c51" else qr_dqn], "hidden_sizes": "[16]"}
    sets = [a for k, v in fields.items() if k != "total_timesteps" for a in ("--set", f"{k}={v}")]
    out = tmp_path / "run"
    args = ["train", algo, "--env", "CartPole-v1", *sets, "--total-steps", "128"]
    assert cli.main([*args, "--seeds", "2", "--chunk-updates", "4", "--out", str(out)]) == 0
    assert "100.0%" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.csv", "curve.png", "summary.json"):
        assert (out / name).exists(), name
    assert Checkpoints(out / "checkpoints").latest_step() == 8
    summary = json.loads((out / "summary.json").read_text())
    assert [row["seed"] for row in summary["final_returns"]] == [0, 1]
    assert summary["resolved"]["hidden_sizes"] == [16]


class Interrupt(Exception):
    pass


def test_c51_resume_with_a_partly_filled_buffer_is_bit_exact(tmp_path):
    """4 of 8 updates (the buffer 64 of 128 slots full, learning since update 2), a crash,
    resume:
    the same checkpoint (buffer included) and metrics as 8 straight."""
    agent = dict(TINY_BY_AGENT[c51], buffer_size=128, hidden_sizes=[16])  # as YAML has it
    spec = RunSpec(algo="c51", env={"name": "CartPole-v1"}, agent=agent, chunk_updates=2)
    train(spec, tmp_path / "straight", checkpoint_seconds=0, print_fn=quiet)
    printed = []

    def crash_after_two_chunks(line):
        printed.append(line)
        if len(printed) == 3:  # the header, then two chunks (checkpointed)
            raise Interrupt

    with pytest.raises(Interrupt):
        train(spec, tmp_path / "resumed", checkpoint_seconds=0, print_fn=crash_after_two_chunks)
    assert Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step() == 4
    train(spec, tmp_path / "resumed", resume=True, checkpoint_seconds=0, print_fn=quiet)
    straight, resumed = (checkpoint_leaves(tmp_path / run) for run in ("straight", "resumed"))
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    metrics = (tmp_path / "straight" / "metrics.csv").read_text()
    assert metrics == (tmp_path / "resumed" / "metrics.csv").read_text()
