"""Recurrent PPO: the hidden-state reset rule, the bootstrap through time limits, the loss's
re-run of whole sequences, act with and without memory, named config errors, sweeps, and
learning on a partially observed env where feed-forward PPO cannot."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from runs import quiet

from rljax import envs
from rljax.agents import ppo, ppo_rnn
from rljax.runner import config as config_lib
from rljax.runner import evaluation
from rljax.runner.errors import RunError
from rljax.runner.loop import train
from rljax.runner.policy import evaluate_run, export_policy, load_policy
from rljax.runner.spec import RunSpec

REPO = Path(__file__).resolve().parents[1]

# XLA's backend optimizations change how fast a program runs, not what it computes; without
# them these programs compile 2-3x faster (as in tests/test_conformance.py).
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def fast_jit(function, *args):
    """``function`` compiled for arguments like ``args``, without the backend optimizations."""
    lowered = jax.jit(function).lower(*args)
    try:
        return lowered.compile(FAST_COMPILE)
    except Exception as error:  # a jaxlib that no longer knows an option
        if "compile option" not in str(error):
            raise
        return lowered.compile()


def compiled(function, *args):
    return fast_jit(function, *args)(*args)


# Tanh, not relu: no dead units, so any change of the hidden state shows in what it feeds.
SMALL = dict(cell_size=16, embed_size=16, hidden_sizes=(16,), activation="tanh")


def cartpole(max_steps=20):
    """CartPole cut at ``max_steps``: a random policy's episodes end by termination and by
    truncation within one short rollout."""
    return envs.make("CartPole-v1", max_steps_in_episode=max_steps)


@pytest.fixture(scope="module", params=ppo_rnn.CELLS)
def rollout(request):
    """(config, env, env_params, state at init, the rollout's transitions) for each cell."""
    config = ppo_rnn.Config(
        num_envs=8, num_steps=40, num_minibatches=2, cell=request.param, **SMALL
    )
    env, env_params = cartpole()
    state = ppo_rnn.init(config, env, env_params, jax.random.PRNGKey(0))
    _, traj = compiled(lambda s: ppo_rnn.rollout(config, env, env_params, s), state)
    return config, env, env_params, state, traj


def max_abs(tree) -> np.ndarray:
    """max |x| over the last axis of every leaf (the hidden units), over the leaves."""
    return np.max([np.abs(np.asarray(x)).max(-1) for x in jax.tree.leaves(tree)], axis=0)


# --- The reset rule ---


def test_reset_rule_in_the_rollout(rollout):
    """first_t = done_{t-1} (first_0 at init), and the cell reads o_t from zeros exactly where
    first_t: there its state after o_t is cell(0, o_t), everywhere else it is not (by > 1e-3 in
    some hidden unit at every step; measured min 6.5e-3 (GRU) and 7.5e-3 (LSTM), against 0
    where equal). Resetting one step early (at done_t, losing the memory at an episode's last
    step) or one step late (carrying the old episode into the next episode's first observation)
    breaks one side; the late one, made by zeroing the state after the cell instead of before,
    fails here (checked by hand)."""
    config, env, env_params, state, traj = rollout
    terminated, truncated = np.asarray(traj.terminated), np.asarray(traj.truncated)
    done, first = terminated | truncated, np.asarray(traj.first)
    assert terminated.sum() >= 3 and truncated.sum() >= 3, (terminated.sum(), truncated.sum())
    assert first[0].all()
    np.testing.assert_array_equal(first[1:], done[:-1])

    network = ppo_rnn._network(config, env.action_space(env_params))
    steps, num_envs = first.shape
    # cell(0, o_t): zeros fed in as the state, with no reset flag, so the reference does not
    # go through the reset it checks.
    zeros = ppo_rnn.initial_hidden(config, (steps * num_envs,))
    obs = traj.obs.reshape(1, steps * num_envs, -1)
    no_reset = jnp.zeros((1, steps * num_envs), bool)
    fresh, _, _ = network.apply(state.params.net, zeros, obs, no_reset)
    fresh = jax.tree.map(lambda h: h.reshape(steps, num_envs, -1), fresh)
    gap = max_abs(jax.tree.map(lambda a, b: a - b, traj.hidden, fresh))
    assert gap[first].max() < 1e-5, gap[first].max()
    assert gap[~first].min() > 1e-3, gap[~first].min()
    # The last step of each episode (done, not first) still reads with the episode's memory.
    assert (done & ~first).sum() >= 3 and gap[done & ~first].min() > 1e-3


def test_loss_reruns_the_sequences_with_the_rollouts_resets():
    """With a vanishing learning rate every minibatch's re-run of its env sequences from their
    hidden state at the rollout's start reproduces the rollout's log-probabilities: approx_kl
    < 1e-8 (measured 0) and no clipping. The same re-run with the flags shifted one step early
    (done_t) or late (done_{t-2}) is off by approx_kl > 1e-3 (measured 0.065 and 0.052, GRU, on
    these perturbed weights)."""
    config = ppo_rnn.Config(
        num_envs=8, num_steps=40, num_minibatches=4, update_epochs=2, lr=1e-12, **SMALL
    )
    env, env_params = cartpole()
    state = ppo_rnn.init(config, env, env_params, jax.random.PRNGKey(1))
    # Perturb the weights (the actor head starts near 0), so the policy depends on the memory.
    leaves, treedef = jax.tree.flatten(state.params.net)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    leaves = [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    state = state.replace(params=state.params.replace(net=jax.tree.unflatten(treedef, leaves)))

    network = ppo_rnn._network(config, env.action_space(env_params))

    def metrics_and_shifted_kls(state):
        _, metrics = ppo_rnn.update(config, env, env_params, state)
        _, traj = ppo_rnn.rollout(config, env, env_params, state)
        early = jnp.logical_or(traj.terminated, traj.truncated)
        late = jnp.concatenate([traj.first[:1], traj.first[:-1]])
        kls = []
        for shifted in (early, late):
            _, pi, _ = network.apply(state.params.net, state.hidden, traj.obs, shifted)
            log_ratio = pi.log_prob(traj.action) - traj.log_prob
            kls.append(((jnp.exp(log_ratio) - 1) - log_ratio).mean())
        return metrics, kls

    metrics, kls = compiled(metrics_and_shifted_kls, state)
    assert metrics["approx_kl"] < 1e-8 and metrics["clip_fraction"] == 0, metrics
    assert min(kls) > 1e-3, kls


# --- Bootstrapping ---


def test_bootstrap_values_read_the_final_observation_with_memory(rollout):
    """V(s'_t) is V(s_{t+1}) of the rollout wherever the episode goes on; at a time limit it is
    the value of the final observation read from the episode's state (no reset), not the value
    of the next episode's first observation nor of the final observation read from zeros."""
    config, env, env_params, state, traj = rollout
    network = ppo_rnn._network(config, env.action_space(env_params))
    next_values = np.asarray(ppo_rnn.bootstrap_values(network, state.params.net, traj))
    done = np.asarray(traj.terminated | traj.truncated)
    values = np.asarray(traj.value)
    np.testing.assert_allclose(next_values[:-1][~done[:-1]], values[1:][~done[:-1]], atol=1e-5)

    t, n = np.argwhere(np.asarray(traj.truncated) & ~np.asarray(traj.terminated))[0]
    hidden_t = jax.tree.map(lambda h: h[t, n][None], traj.hidden)
    final = traj.next_obs[t, n][None, None]
    _, _, by_hand = network.apply(state.params.net, hidden_t, final, jnp.zeros((1, 1), bool))
    zeros = ppo_rnn.initial_hidden(config, (1,))
    _, _, from_zeros = network.apply(state.params.net, zeros, final, jnp.zeros((1, 1), bool))
    np.testing.assert_allclose(next_values[t, n], by_hand[0, 0], rtol=1e-5, atol=1e-6)
    assert abs(next_values[t, n] - from_zeros[0, 0]) > 1e-4
    if t + 1 < len(values):
        assert abs(next_values[t, n] - values[t + 1, n]) > 1e-4


# --- act ---


def test_act_step_carries_the_memory(rollout):
    """act_step, stepped along the rollout's observations with its first flags, gives the
    rollout's hidden states; act is act_step from zeros at an episode's first observation, and
    with first set act_step ignores the state it is given. Deterministic actions are the mode."""
    config, env, env_params, state, traj = rollout
    params, key = state.params, jax.random.PRNGKey(3)
    step = jax.jit(lambda h, o, f: ppo_rnn.act_step(config, params, h, o, f, key, True))
    hidden = ppo_rnn.initial_hidden(config, (config.num_envs,))
    for t in range(traj.obs.shape[0]):
        hidden, _ = step(hidden, traj.obs[t], traj.first[t])
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
            hidden,
            jax.tree.map(lambda h, t=t: h[t], traj.hidden),
        )

    obs, first = traj.obs[5], jnp.ones(config.num_envs, bool)
    noise = jax.tree.map(lambda h: h + 1.0, hidden)
    _, from_noise = step(noise, obs, first)
    np.testing.assert_array_equal(ppo_rnn.act(config, params, obs, key, True), from_noise)
    network = ppo_rnn._network(config, env.action_space(env_params))
    _, pi, _ = network.apply(params.net, hidden, obs[None], first[None])
    np.testing.assert_array_equal(from_noise, np.argmax(pi.logits[0], -1))
    _, sampled = ppo_rnn.act_step(config, params, hidden, obs, first, key)
    np.testing.assert_array_equal(sampled, pi.sample(seed=key)[0])


def test_continuous_actions():
    """Pendulum: the actor's mean is the deterministic action, one per env, batched or not."""
    env, env_params = envs.make("Pendulum-v1")
    config = ppo_rnn.Config(num_envs=2, num_steps=8, num_minibatches=2, **SMALL)
    state = ppo_rnn.init(config, env, env_params, jax.random.PRNGKey(0))
    assert not state.params.discrete and state.params.action_dim == 1
    network = ppo_rnn._network(config, env.action_space(env_params))
    _, pi, _ = network.apply(state.params.net, state.hidden, state.obs[None], state.first[None])
    action = ppo_rnn.act(config, state.params, state.obs, jax.random.PRNGKey(1), True)
    np.testing.assert_allclose(action, pi.loc[0], rtol=1e-6)
    assert ppo_rnn.act(config, state.params, state.obs[0], jax.random.PRNGKey(1)).shape == (1,)


# --- Config ---


def test_bad_configs_are_named():
    """An unknown cell type, minibatches that do not divide the env sequences, and image
    observations are refused by name, before anything is built."""
    env, env_params = cartpole()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"cell='rnn' is not a cell type; choose one of"):
        ppo_rnn.init(ppo_rnn.Config(cell="rnn"), env, env_params, key)
    with pytest.raises(ValueError, match=r"num_minibatches=3 must divide num_envs=4"):
        ppo_rnn.init(ppo_rnn.Config(num_minibatches=3), env, env_params, key)
    with pytest.raises(config_lib.FieldOutOfRange, match=r"cell='rnn' is not allowed"):
        config_lib.make_config(ppo_rnn.Config, {"cell": "rnn"})
    env, env_params = envs.make("Breakout-MinAtar")
    with pytest.raises(ValueError, match=r"vector observations, got shape \(10, 10, 4\)"):
        ppo_rnn.init(ppo_rnn.Config(), env, env_params, key)


def train_members(module, configs, env, env_params, keys):
    """``jax.vmap(module.train)`` over stacked configs and keys, each member initialized in
    turn, as the runner does (a vmapped orthogonal init can deadlock a 2-core CPU)."""
    states = jax.lax.map(lambda ck: module.init(ck[0], env, env_params, ck[1]), (configs, keys))

    def run(config, state):
        def one_update(s, _):
            return module.update(config, env, env_params, s)

        return jax.lax.scan(one_update, state, None, config.num_updates)

    return jax.vmap(run)(configs, states)


def test_sweep_member_equals_its_single_run():
    """Two learning rates (traced fields) stacked and vmapped reproduce the two single runs,
    state and metrics."""
    env, env_params = cartpole()
    tiny = dict(num_envs=4, num_steps=16, num_minibatches=2, total_timesteps=3 * 64, **SMALL)
    configs = [ppo_rnn.Config(**tiny, lr=1e-3), ppo_rnn.Config(**tiny, lr=3e-3)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    key = jax.random.PRNGKey(0)

    sweep = compiled(
        lambda c, k: train_members(ppo_rnn, c, env, env_params, k), stacked, jnp.stack([key, key])
    )
    train = fast_jit(lambda c, k: ppo_rnn.train(c, env, env_params, k), configs[0], key)
    for i, config in enumerate(configs):
        single = train(config, key)
        jax.tree.map(
            lambda x, y, i=i: np.testing.assert_allclose(x[i], y, rtol=1e-5, atol=1e-6),
            sweep,
            single,
        )
    assert not np.allclose(sweep[1]["loss"][0], sweep[1]["loss"][1])


# --- Learning ---


def final_returns(module, config, env, env_params, num_seeds, last=5):
    """Per seed, the mean return of the episodes finished in the last ``last`` updates."""
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    configs = jax.tree.map(lambda *x: jnp.stack(x), *[config] * num_seeds)

    def returns(configs, keys):
        return train_members(module, configs, env, env_params, keys)[1]["episode_return"]

    return np.nanmean(np.asarray(compiled(returns, configs, keys))[:, -last:], axis=1)


@pytest.mark.slow
def test_recurrent_ppo_solves_memory_chain_where_ppo_cannot():
    """MemoryChain-bsuite (memory length 5): the context is shown at the start and decides the
    +1 / -1 reward of the last of 6 steps, where nothing shows it. The preset
    configs/ppo_rnn/memory_chain.yaml (2e4 steps) against feed-forward PPO (32-32) with the
    same rollout, budget and lr, 8 seeds each, mean return of the last 5 of 52 updates.

    Measured: recurrent 0.995 mean (per seed 0.975-1.0, GRU; 0.992 with an LSTM); feed-forward
    -0.005 mean (per seed -0.09 to 0.13): it can only guess. With lr 2.5e-4 instead the
    recurrent mean is 0.95 (per seed 0.87-0.97). 30-55 s on 2 CPU cores, most of it compiling."""
    preset = yaml.safe_load((REPO / "configs" / "ppo_rnn" / "memory_chain.yaml").read_text())
    env, env_params = envs.make(**preset["env"])
    config = config_lib.make_config(ppo_rnn.Config, preset["agent"])
    recurrent = final_returns(ppo_rnn, config, env, env_params, num_seeds=8)
    shared = ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps", "lr")
    feed_forward = ppo.Config(**{k: getattr(config, k) for k in shared}, hidden_sizes=(32, 32))
    memoryless = final_returns(ppo, feed_forward, env, env_params, num_seeds=8)
    assert recurrent.mean() > 0.9 and recurrent.min() > 0.75, recurrent
    assert abs(memoryless.mean()) < 0.15 and memoryless.max() < 0.3, memoryless


def test_rollouts_carry_a_policys_memory_and_reset_it_at_each_episode():
    """The runner's rollout hands a MemoryPolicy its memory back and marks each episode's first
    observation: a policy whose memory counts the steps of its episode acts 0, 1, 2, ... again
    after every time limit (Pendulum cut at 5 steps)."""
    env, env_params = envs.make("Pendulum-v1", max_steps_in_episode=5)

    def step(count, obs, first, env_state, key):
        count = jnp.where(first, 0, count + 1)
        return count, count[:, None].astype(jnp.float32)

    policy = evaluation.MemoryPolicy(lambda num_envs: jnp.zeros(num_envs, int), step)
    actions, truncated = evaluation.rollout(
        policy, env, env_params, 2, 12, jax.random.PRNGKey(0), lambda o, a, r, te, tr, i: (a, tr)
    )
    expected = np.tile(np.arange(12) % 5, (2, 1)).T
    np.testing.assert_array_equal(np.asarray(actions)[..., 0], expected)
    np.testing.assert_array_equal(np.asarray(truncated), expected == 4)


@pytest.mark.slow
def test_a_recurrent_run_is_evaluated_and_loaded_with_its_memory(tmp_path):
    """Through the runner, the preset's run on MemoryChain scores as its recurrent policy does:
    the final evaluation, ``rljax eval`` (evaluate_run) and ``load_policy``'s RecurrentPolicy
    stepped by hand all reach about 1; with the memory dropped between steps (``act`` alone) the
    same policy can only guess. export_policy refuses it by name. About 20 s."""
    preset = yaml.safe_load((REPO / "configs" / "ppo_rnn" / "memory_chain.yaml").read_text())
    spec = RunSpec(algo="ppo_rnn", env=preset["env"], agent=preset["agent"], eval_episodes=32)
    summary = train(spec, tmp_path / "run", print_fn=quiet)
    assert summary["final_returns"][0]["final_return"] > 0.9, summary["final_returns"]

    returns, _, _ = evaluate_run(tmp_path / "run", episodes=32, deterministic=True)
    assert float(np.mean(returns)) > 0.9

    policy = load_policy(tmp_path / "run", deterministic=True)
    env, env_params = envs.make(**preset["env"])

    def stepped_by_hand(remember: bool) -> float:
        keys = jax.random.split(jax.random.PRNGKey(1), 32)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(keys, env_params)
        memory, first = policy.initial((32,)), jnp.ones(32, bool)
        total = jnp.zeros(32)
        for t in range(env_params.memory_length + 1):
            memory, action = policy.step(memory, obs, first, jax.random.PRNGKey(t))
            obs, env_state, reward, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(jax.random.PRNGKey(100 + t), 32), env_state, action, env_params
            )
            total, first = total + reward, jnp.full(32, not remember)
        return float(total.mean())

    assert stepped_by_hand(remember=True) > 0.9
    # Without memory the context is a coin flip: 0 expected, 0.18 the std of a 32-episode mean.
    assert abs(stepped_by_hand(remember=False)) < 0.6

    with pytest.raises(RunError, match="recurrent"):
        export_policy(tmp_path / "run", tmp_path / "policy.bin")
