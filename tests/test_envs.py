"""make(): names, errors, the terminated/truncated step API; the wrappers' statistics."""

import subprocess
import sys

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.classic_control.pendulum import Pendulum

from rljax import envs
from rljax.envs.wrappers import (
    ENV_AXIS,
    ClipAction,
    LogWrapper,
    NormalizeObservationState,
    RunningMoments,
    ScaleRewardState,
    find_state,
)

PRIOR_COUNT = 1e-4  # RunningMoments starts from mean 0, var 1 with this count


def expected_moments(x):
    """Mean and variance of the samples x (along axis 0) pooled with RunningMoments' prior."""
    x = np.asarray(x, np.float64)
    m, v, n = x.mean(0), x.var(0), x.shape[0]
    total = n + PRIOR_COUNT
    var = (PRIOR_COUNT * 1.0 + n * v + m**2 * PRIOR_COUNT * n / total) / total
    return n * m / total, var


def rollout(env, env_params, key, num_steps, num_envs=None, axis_name=ENV_AXIS, action_fn=None):
    """Random-action rollout under jit; returns (first obs, per-step outputs incl. state)."""
    space = env.action_space(env_params)
    action_fn = action_fn or (lambda k: space.sample(k))

    def one_env(key):
        reset_key, key = jax.random.split(key)
        obs, state = env.reset(reset_key, env_params)

        def step(state, key):
            action_key, step_key = jax.random.split(key)
            action = action_fn(action_key)
            obs, state, reward, terminated, truncated, info = env.step(
                step_key, state, action, env_params
            )
            return state, (obs, state, reward, terminated, truncated, info, action)

        _, outputs = jax.lax.scan(step, state, jax.random.split(key, num_steps))
        return obs, outputs

    if num_envs is not None:
        one_env = jax.vmap(one_env, axis_name=axis_name)
        key = jax.random.split(key, num_envs)
    return jax.tree.map(np.asarray, jax.jit(one_env)(key))


# --- make() ---

STEP_API_CASES = [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {}),
    ("Acrobot-v1", {}),
    ("Breakout-MinAtar", {"flatten_obs": True}),
]


@pytest.mark.parametrize("name,options", STEP_API_CASES)
def test_step_api_and_final_observation_at_a_time_limit(name, options):
    """Steps return (obs, state, r, terminated, truncated, info); at the time limit the episode
    is truncated, auto-reset, and info["final_observation"] is the observation before reset."""
    env, env_params = envs.make(name, **options)
    raw_env, _ = gymnax.make(name)
    key, reset_key, action_key, step_key = jax.random.split(jax.random.PRNGKey(0), 4)
    obs, state = env.reset(reset_key, env_params)
    assert obs.shape == env.observation_space(env_params).shape and obs.ndim == 1
    action = env.action_space(env_params).sample(action_key)

    # An ordinary step: not done, final_observation is the observation.
    out = env.step(step_key, state, action, env_params)
    assert len(out) == 6
    next_obs, _, reward, terminated, truncated, info = out
    assert reward.shape == () and terminated.dtype == truncated.dtype == jnp.bool_
    assert not terminated and not truncated
    np.testing.assert_array_equal(info["final_observation"], next_obs)

    # The last step before the time limit.
    last = env_params.max_steps_in_episode - 1
    state = state.replace(env_state=state.env_state.replace(time=last))
    obs, new_state, _, terminated, truncated, info = env.step(step_key, state, action, env_params)
    assert bool(truncated) and not bool(terminated)
    assert new_state.env_state.time == 0  # auto-reset
    # Gymnax's step splits the key into (step, reset) keys; redo both halves on the raw env.
    env_key, reset_key = jax.random.split(step_key)
    final_obs, *_ = raw_env.step_env(env_key, state.env_state, action, env_params)
    reset_obs, _ = raw_env.reset_env(reset_key, env_params)
    np.testing.assert_allclose(info["final_observation"], final_obs.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(obs, reset_obs.reshape(-1), atol=1e-6)
    assert not np.allclose(info["final_observation"], obs)


def test_cartpole_falling_pole_terminates():
    """A pole past 12 degrees ends the episode as terminated (not truncated), and
    final_observation holds the fallen pole while obs is a fresh start."""
    env, env_params = envs.make("CartPole-v1")
    _, state = env.reset(jax.random.PRNGKey(0), env_params)
    state = state.replace(env_state=state.env_state.replace(theta=0.2, theta_dot=2.0))
    obs, _, reward, terminated, truncated, info = env.step(
        jax.random.PRNGKey(1), state, 1, env_params
    )
    assert bool(terminated) and not bool(truncated)
    assert reward == 1.0
    np.testing.assert_allclose(info["final_observation"][2], 0.2 + 0.02 * 2.0, rtol=1e-6)
    assert abs(obs[2]) <= 0.05  # the reset state
    assert info["returned_episode"] and info["returned_episode_lengths"] == 1


def test_params_override_sets_the_time_limit():
    """max_steps_in_episode=50 makes Pendulum truncate at steps 50, 100, ... and never
    terminate; the episode lengths logged are 50."""
    env, env_params = envs.make("Pendulum-v1", max_steps_in_episode=50)
    assert env_params.max_steps_in_episode == 50
    _, (_, _, _, terminated, truncated, info, _) = rollout(
        env, env_params, jax.random.PRNGKey(0), 120
    )
    assert not terminated.any()
    np.testing.assert_array_equal(np.flatnonzero(truncated), [49, 99])
    np.testing.assert_array_equal(info["returned_episode_lengths"][[49, 99]], [50, 50])


def test_every_listed_gymnax_env_makes_and_traces():
    """Every gymnax name that names() lists can be made, and its reset and step trace with
    observations of the advertised shape (jax.eval_shape: no compilation)."""
    key = jax.random.PRNGKey(0)
    for name in envs.names()["gymnax"]:
        env, env_params = envs.make(name)
        obs, state = jax.eval_shape(env.reset, key, env_params)
        action = env.action_space(env_params).sample(key)
        out = jax.eval_shape(env.step, key, state, action, env_params)
        assert len(out) == 6, name
        assert obs.shape == out[0].shape == out[5]["final_observation"].shape, name
        assert out[3].dtype == out[4].dtype == jnp.bool_, name


def test_unknown_and_unsupported_names():
    """An unknown name lists the known ones; an unsupported gymnax env says why."""
    with pytest.raises(envs.UnknownEnvironment) as error:
        envs.make("CartPole-v2")
    message = str(error.value)
    assert "'CartPole-v2'" in message
    assert "CartPole-v1" in message and "brax/hopper" in message and "Breakout-MinAtar" in message
    assert "MetaMaze-misc" not in envs.names()["gymnax"]
    with pytest.raises(envs.UnknownEnvironment, match="MetaMaze-misc.*not supported: its step"):
        envs.make("MetaMaze-misc")
    with pytest.raises(envs.UnknownEnvironment, match="brax/nope"):
        envs.make("brax/nope")


def test_unknown_name_suggests_the_same_env_under_its_name_here():
    """Gymnasium's names and near misses point at the env of the same name here, and only there."""
    for asked, meant in [
        ("HalfCheetah-v4", "brax/halfcheetah"),
        ("InvertedPendulum-v5", "brax/inverted_pendulum"),
        ("CartPole-v0", "CartPole-v1"),
        ("PointMaze_Medium-v3", "rljax/PointMaze-medium"),
    ]:
        with pytest.raises(envs.UnknownEnvironment, match=f"Did you mean {meant}\\?"):
            envs.make(asked)
    with pytest.raises(envs.UnknownEnvironment) as error:
        envs.make("LunarLander-v3")
    assert "Did you mean" not in str(error.value)


def test_gymnax_prefix_and_bad_options():
    """'gymnax/NAME' is NAME; an unknown parameter is named with the valid ones; backend= is
    refused outside brax."""
    _, params = envs.make("gymnax/Pendulum-v1", max_torque=1.0)
    assert params.max_torque == 1.0
    with pytest.raises(envs.InvalidEnvironmentOption, match="no parameter max_stepz.*max_torque"):
        envs.make("Pendulum-v1", max_stepz=3)
    with pytest.raises(envs.InvalidEnvironmentOption, match="backend"):
        envs.make("CartPole-v1", backend="mjx")


# --- Wrappers ---


@pytest.mark.parametrize("name", ["CartPole-v1", "Pendulum-v1"])
def test_episode_statistics_are_sums_of_raw_rewards(name):
    """LogWrapper's returned episode return/length equal a manual sum of the raw rewards over
    each finished episode, also under reward normalization (which only the agent sees)."""
    options = {"max_steps_in_episode": 30} if name == "Pendulum-v1" else {}
    key = jax.random.PRNGKey(3)
    env, env_params = envs.make(name, **options)
    _, (_, _, rewards, terminated, truncated, info, _) = rollout(env, env_params, key, 300)
    scaled_env, _ = envs.make(name, normalize_reward=True, **options)
    _, (_, _, scaled_rewards, *_, scaled_info, _) = rollout(scaled_env, env_params, key, 300)
    assert not np.allclose(scaled_rewards, rewards)

    done = np.asarray(terminated | truncated)
    np.testing.assert_array_equal(info["returned_episode"], done)
    ends = np.flatnonzero(done)
    assert len(ends) >= 3
    starts = np.concatenate([[0], ends[:-1] + 1])
    for start, end in zip(starts, ends, strict=True):
        np.testing.assert_allclose(
            info["returned_episode_returns"][end], rewards[start : end + 1].sum(), rtol=1e-5
        )
        assert info["returned_episode_lengths"][end] == end - start + 1
    for k in ("returned_episode_returns", "returned_episode_lengths", "returned_episode"):
        np.testing.assert_array_equal(scaled_info[k], info[k])


class SpyPendulum(Pendulum):
    """Pendulum that reports the action it received in info."""

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = super().step_env(key, state, action, params)
        return obs, state, reward, terminated, {**info, "action": action}


def test_clip_action_clips_to_the_action_space():
    """ClipAction hands the inner env actions clipped to [-max_torque, max_torque]; make() adds
    it for Box action spaces only."""
    env = ClipAction(LogWrapper(SpyPendulum()))
    env_params = env.default_params
    _, state = env.reset(jax.random.PRNGKey(0), env_params)
    for action, seen in [(100.0, 2.0), (-7.0, -2.0), (0.5, 0.5)]:
        info = env.step(jax.random.PRNGKey(1), state, jnp.array([action]), env_params)[-1]
        np.testing.assert_allclose(info["action"], [seen])
    assert isinstance(envs.make("Pendulum-v1")[0], ClipAction)
    assert not isinstance(envs.make("CartPole-v1")[0], ClipAction)


def test_normalize_observation_pools_moments_over_the_env_axis():
    """Under vmap with ENV_AXIS all envs share one set of moments, equal to the mean/var of
    every observation seen by any env (with the prior); obs and final_observation are both
    normalized by them."""
    num_envs, num_steps = 4, 50
    key = jax.random.PRNGKey(0)
    options = {"max_steps_in_episode": 20}  # truncations inside the rollout
    raw_env, env_params = envs.make("Pendulum-v1", **options)
    env, _ = envs.make("Pendulum-v1", normalize_obs=True, **options)
    raw_first, (raw_obs, *_, raw_info, _) = rollout(raw_env, env_params, key, num_steps, num_envs)
    first, (obs, state, _, _, truncated, info, _) = rollout(
        env, env_params, key, num_steps, num_envs
    )
    assert truncated.any()
    moments = find_state(state, NormalizeObservationState).moments  # leaves: (envs, steps, ...)

    # Identical across envs, at every step.
    for leaf in jax.tree.leaves(moments):
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    # After step t the moments cover the reset observations and steps 0..t of every env.
    seen = np.concatenate([raw_first[:, None], raw_obs], axis=1)  # (envs, 1 + steps, 3)
    for t in [0, 10, num_steps - 1]:
        mean, var = expected_moments(seen[:, : t + 2].reshape(-1, 3))
        np.testing.assert_allclose(moments.mean[0, t], mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(moments.var[0, t], var, rtol=1e-4)
    np.testing.assert_allclose(moments.count[0, -1], num_envs * (num_steps + 1) + PRIOR_COUNT)

    def normalized(x):
        return (x - moments.mean) / np.sqrt(moments.var + 1e-8)

    np.testing.assert_allclose(obs, normalized(raw_obs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        info["final_observation"], normalized(raw_info["final_observation"]), rtol=1e-4, atol=1e-5
    )
    mean, var = expected_moments(raw_first)  # reset pools the first observations too
    np.testing.assert_allclose(first, (raw_first - mean) / np.sqrt(var + 1e-8), rtol=1e-4)


def test_normalize_observation_without_an_env_axis_keeps_per_env_moments():
    """Unvmapped, or vmapped without ENV_AXIS, each env normalizes by its own stream."""
    env, env_params = envs.make("Pendulum-v1", normalize_obs=True)
    raw_env, _ = envs.make("Pendulum-v1")
    key = jax.random.PRNGKey(1)
    raw_first, (raw_obs, *_) = rollout(raw_env, env_params, key, 30, num_envs=2)
    _, (_, state, *_) = rollout(env, env_params, key, 30, num_envs=2, axis_name=None)
    moments = find_state(state, NormalizeObservationState).moments
    assert not np.allclose(moments.mean[0, -1], moments.mean[1, -1])
    for i in range(2):
        mean, var = expected_moments(np.concatenate([raw_first[i][None], raw_obs[i]]))
        np.testing.assert_allclose(moments.mean[i, -1], mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(moments.var[i, -1], var, rtol=1e-4)

    _, (_, single_state, *_) = rollout(env, env_params, jax.random.split(key, 2)[0], 30)
    single = find_state(single_state, NormalizeObservationState).moments
    np.testing.assert_allclose(single.mean[-1], moments.mean[0, -1], rtol=1e-5)


def test_scale_reward_divides_by_the_std_of_the_discounted_return():
    """Scaled reward = r / sqrt(var + 1e-8), var the running variance (pooled over envs) of the
    discounted return, which restarts after each episode; no mean is subtracted."""
    gamma, num_envs, num_steps = 0.9, 3, 60
    options = {"max_steps_in_episode": 25}
    key = jax.random.PRNGKey(2)
    raw_env, env_params = envs.make("Pendulum-v1", **options)
    env, _ = envs.make("Pendulum-v1", normalize_reward=True, reward_gamma=gamma, **options)
    _, (_, _, raw_rewards, _, truncated, *_) = rollout(
        raw_env, env_params, key, num_steps, num_envs
    )
    _, (_, state, rewards, *_) = rollout(env, env_params, key, num_steps, num_envs)
    assert truncated.any()

    raw_rewards, done = np.asarray(raw_rewards, np.float64), np.asarray(truncated)
    returns = np.zeros_like(raw_rewards)  # (envs, steps)
    carry = np.zeros(num_envs)
    for t in range(num_steps):
        returns[:, t] = gamma * carry + raw_rewards[:, t]
        carry = np.where(done[:, t], 0.0, returns[:, t])
    var = np.array([expected_moments(returns[:, : t + 1].ravel())[1] for t in range(num_steps)])
    np.testing.assert_allclose(rewards, raw_rewards / np.sqrt(var + 1e-8), rtol=1e-4)
    assert (raw_rewards < 0).all() and (rewards < 0).all()  # rescaled, not shifted
    scale_state = find_state(state, ScaleRewardState)
    np.testing.assert_allclose(scale_state.moments.var[0], var, rtol=1e-4)


def test_running_moments_merge_matches_numpy():
    """Merging batches of different sizes, pooled over ENV_AXIS, gives numpy's mean/var of
    all samples (with the prior); unvmapped, a stream of single samples does too."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 5)).astype(np.float32) for n in (1, 7, 32, 4)]
    moments = RunningMoments.create((5,))
    for batch in batches:
        pooled = jax.vmap(lambda x, m=moments: m.update(x), axis_name=ENV_AXIS)(batch)
        np.testing.assert_array_equal(pooled.mean[0], pooled.mean[-1])
        moments = jax.tree.map(lambda x: x[0], pooled)
    mean, var = expected_moments(np.concatenate(batches))
    np.testing.assert_allclose(moments.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(moments.var, var, rtol=1e-5)
    assert moments.count == pytest.approx(44 + PRIOR_COUNT)

    stream = RunningMoments.create((5,))
    for x in np.concatenate(batches):
        stream = stream.update(x)
    np.testing.assert_allclose(stream.mean, mean, rtol=1e-4)
    np.testing.assert_allclose(stream.var, var, rtol=1e-4)


# --- Brax ---


def test_brax_inverted_pendulum_truncates_and_resets():
    """brax/inverted_pendulum through make(): vector obs, bool terminated, truncation at
    max_steps_in_episode with the pre-reset final observation and a freshly drawn reset."""
    env, env_params = envs.make("brax/inverted_pendulum", max_steps_in_episode=3)
    obs_dim = env.observation_space(env_params).shape[0]
    action = jnp.zeros(env.action_space(env_params).shape)
    first, (obs, _, reward, terminated, truncated, info, _) = rollout(
        env, env_params, jax.random.PRNGKey(0), 4, num_envs=2, action_fn=lambda _: action
    )
    assert first.shape == (2, obs_dim) and obs.shape == (2, 4, obs_dim)
    assert terminated.dtype == jnp.bool_ and reward.dtype == jnp.float32
    assert not terminated.any()
    np.testing.assert_array_equal(truncated, [[False, False, True, False]] * 2)
    np.testing.assert_array_equal(info["returned_episode_lengths"][:, 2], [3, 3])
    final = info["final_observation"]
    np.testing.assert_array_equal(final[:, [0, 1, 3]], obs[:, [0, 1, 3]])
    assert not np.allclose(final[:, 2], obs[:, 2])  # obs[:, 2] is a reset observation
    assert not np.allclose(obs[:, 2], first)  # drawn afresh, not the cached first state


def test_gymnax_plotting_imports_load_on_first_use():
    """gymnax's env files import seaborn and pyplot for render functions (0.8 s with pandas and
    scipy); rljax.envs defers them until used, a use gets the real modules, and a module the
    user imported first is left alone."""
    code = """
import sys, types
import rljax.envs
assert not {"pandas", "scipy.stats"} & set(sys.modules), "loaded with rljax.envs"
import gymnax.environments.misc.pong as pong
assert pong.sns.color_palette("deep")[0] and pong.plt.figure
assert "pandas" in sys.modules
assert type(sys.modules["seaborn"]) is type(sys.modules["matplotlib.pyplot"]) is types.ModuleType
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    imported_first = """
import sys, types
import seaborn
import rljax.envs
assert type(sys.modules["seaborn"]) is types.ModuleType  # left as it was, not a stand-in
"""
    subprocess.run([sys.executable, "-c", imported_first], check=True)
