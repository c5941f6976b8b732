"""SAC and DSAC-T: the replay buffer, the squashed Gaussian, each DSAC-T refinement by hand
(losses and their gradients), delayed updates, checkpoints with a partly filled buffer,
named errors, and learning Pendulum."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import checkpoint_leaves, quiet

from rljax import cli, envs
from rljax.agents import dsac_t, sac
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

AGENTS = [sac, dsac_t]
# Small enough for a 2-core CPU; learning rates raised to match the smaller networks.
SMALL = dict(num_envs=4, utd_ratio=1.0, hidden_sizes=(64, 64), batch_size=128)
SMALL |= dict(learning_starts=1000, actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3)


# --- Replay buffer (the same functions in every agent file) ---


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_buffer_wraps_around_and_samples_only_filled_slots(agent):
    buffer = agent.buffer_init(5, {"x": jnp.zeros(2), "t": jnp.zeros((), jnp.int32)})
    items = lambda start, n: {  # noqa: E731
        "x": jnp.arange(start, start + n, dtype=jnp.float32)[:, None].repeat(2, 1),
        "t": jnp.arange(start, start + n),
    }
    buffer = agent.buffer_add(buffer, items(0, 3))
    assert (int(buffer.position), int(buffer.size)) == (3, 3)
    drawn = agent.buffer_sample(buffer, jax.random.PRNGKey(0), 1000)["t"]
    assert set(np.asarray(drawn).tolist()) == {0, 1, 2}  # never the empty slots 3 and 4

    buffer = agent.buffer_add(buffer, items(3, 4))  # 3, 4 fill the end; 5, 6 overwrite 0, 1
    assert (int(buffer.position), int(buffer.size)) == (2, 5)
    np.testing.assert_array_equal(buffer.data["t"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buffer.data["x"][:, 1], [5, 6, 2, 3, 4])
    drawn = np.asarray(agent.buffer_sample(buffer, jax.random.PRNGKey(1), 5000)["t"])
    counts = np.bincount(drawn, minlength=7)[2:]
    assert counts.min() > 850 and counts.max() < 1150  # uniform: 1000 each


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_squashed_gaussian_density_matches_distrax(agent):
    """The action lies in the box and its log density equals distrax's tanh-then-affine
    transformed Gaussian (up to the 1e-6 that guards the log)."""
    mean = jnp.array([[0.3, -1.0], [2.0, 0.1]])
    log_std = jnp.array([[-0.5, 0.2], [0.0, -1.0]])
    low, high = jnp.array([-2.0, 0.0]), jnp.array([2.0, 1.0])
    action, log_prob = agent.sample_action(mean, log_std, low, high, jax.random.PRNGKey(3))
    assert ((action > low) & (action < high)).all()
    squash = distrax.Chain(
        [distrax.ScalarAffine(shift=(low + high) / 2, scale=(high - low) / 2), distrax.Tanh()]
    )
    bijector = distrax.Block(squash, ndims=1)  # elementwise, summed over the action dims
    reference = distrax.Transformed(
        distrax.MultivariateNormalDiag(mean, jnp.exp(log_std)), bijector
    )
    np.testing.assert_allclose(log_prob, reference.log_prob(action), rtol=1e-4, atol=1e-3)


# --- SAC's critic target ---


def test_sac_critic_target_by_hand():
    """The target uses the smaller target critic, the temperature, the reward scale, and no
    bootstrap after termination; the loss is 1/2 the mean square error summed over critics."""
    config = sac.Config(hidden_sizes=(8,), gamma=0.5, reward_scale=2.0)
    env, env_params = envs.make("Pendulum-v1")
    state = sac.init(config, env, env_params, jax.random.PRNGKey(0))
    _, critic = sac._networks(config, 1)
    obs = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])
    batch = {
        "obs": obs,
        "action": jnp.array([[0.5], [-1.0]]),
        "reward": jnp.array([1.0, -1.0]),
        "next_obs": obs[::-1],
        "terminated": jnp.array([0.0, 1.0]),
    }
    next_action, next_log_prob, alpha = jnp.array([[0.2], [1.5]]), jnp.array([-0.3, 0.7]), 0.1
    target_critic = jax.tree.map(lambda x: x + 0.1, state.params.critic)
    loss, _ = sac.critic_loss(
        state.params.critic, batch, next_action, next_log_prob, target_critic, alpha, config
    )
    q_next = np.asarray(critic.apply(target_critic, batch["next_obs"], next_action)).min(0)
    target = np.array([2.0 * 1.0 + 0.5 * (q_next[0] - 0.1 * -0.3), 2.0 * -1.0])
    q = np.asarray(critic.apply(state.params.critic, obs, batch["action"]))
    np.testing.assert_allclose(loss, 0.5 * ((q - target) ** 2).mean(1).sum(), rtol=1e-5)


# --- DSAC-T's refinements ---


def test_dsac_t_targets_use_the_critic_with_the_smaller_mean():
    """Refinement 2 (twin value distributions) and 1 (expected target next to the sample):
    sample 0's smaller mean is critic 1's, sample 1's is critic 0's; noise clips at 3."""
    q_next = jnp.array([[4.0, 1.0], [2.0, 3.0]])  # (critic, sample)
    sigma_next = jnp.array([[1.0, 0.5], [2.0, 9.0]])
    noise = jnp.array([[0.0, -5.0], [0.5, 0.0]])  # sample 1 draws -5 -> clipped to -3
    reward, discount = jnp.array([1.0, 0.0]), jnp.array([0.9, 0.0])
    log_prob, alpha = jnp.array([-1.0, 2.0]), 0.5
    y_q, y_z = dsac_t.critic_targets(reward, discount, q_next, sigma_next, noise, log_prob, alpha)
    # sample 0: critic 1 (mean 2 < 4): y_q = 1 + 0.9 (2 + 0.5) = 3.25;
    #           its sample 2 + 0.5 * 2 = 3 -> y_z = 1 + 0.9 (3 + 0.5) = 4.15
    # sample 1: terminal (discount 0) -> both targets are the reward 0
    np.testing.assert_allclose(y_q, [3.25, 0.0], rtol=1e-6)
    np.testing.assert_allclose(y_z, [4.15, 0.0], rtol=1e-6)
    _, y_z = dsac_t.critic_targets(reward, jnp.ones(2), q_next, sigma_next, noise, log_prob, 0.0)
    np.testing.assert_allclose(y_z[1], 0.0 + 1.0 + (-3.0) * 0.5, rtol=1e-6)  # critic 0, clipped


def test_dsac_t_paper_gradient_by_hand():
    """Refinements 1 and 3, paper form: d/dQ = w (-(y_q - Q) / (s^2 + e)) / B and
    d/ds = w (-((Q - y_z')^2 - s^2) / (s^3 + e)) / B with w = b^2 + e and y_z' the sample
    clipped to Q +- 3 b. y_z moves only the spread's gradient, y_q only the mean's."""
    q = jnp.array([[1.0, 2.0], [0.0, -1.0]])
    sigma = jnp.array([[1.0, 0.5], [2.0, 1.0]])
    y_q = jnp.array([2.0, 0.0])
    y_z = jnp.array([10.0, 1.5])
    ema = jnp.array([1.0, 0.2])  # bounds 3 and 0.6
    grad_q, grad_sigma = jax.grad(dsac_t.critic_loss, argnums=(0, 1))(q, sigma, y_q, y_z, ema)
    e, batch = 0.1, 2
    clipped = np.array([[1.0 + 3.0, 2.0 - 0.5], [0.0 + 0.6, -1.0 + 0.6]])  # Q + clip(y_z - Q)
    w = np.asarray(ema)[:, None] ** 2 + e
    q_, s_ = np.asarray(q), np.asarray(sigma)
    expected_q = w * (-(np.asarray(y_q) - q_) / (s_**2 + e)) / batch
    expected_sigma = w * (-((q_ - clipped) ** 2 - s_**2) / (s_**3 + e)) / batch
    np.testing.assert_allclose(grad_q, expected_q, rtol=1e-5)
    np.testing.assert_allclose(grad_sigma, expected_sigma, rtol=1e-5)
    # Refinement 1: the sampled target does not reach the mean's gradient, nor y_q the spread's.
    moved = jax.grad(dsac_t.critic_loss, argnums=(0, 1))(q, sigma, y_q + 7.0, y_z - 3.0, ema)
    assert not np.allclose(moved[0], grad_q) and not np.allclose(moved[1], grad_sigma)
    only_z = jax.grad(dsac_t.critic_loss, argnums=(0, 1))(q, sigma, y_q, y_z - 3.0, ema)
    np.testing.assert_allclose(only_z[0], grad_q, rtol=1e-6)
    only_q = jax.grad(dsac_t.critic_loss, argnums=(0, 1))(q, sigma, y_q + 7.0, y_z, ema)
    np.testing.assert_allclose(only_q[1], grad_sigma, rtol=1e-6)
    # Nothing reaches the targets or the moving average (they are constants of the loss).
    grads = jax.grad(dsac_t.critic_loss, argnums=(2, 3, 4))(q, sigma, y_q, y_z, ema)
    for g in grads:
        np.testing.assert_array_equal(g, 0.0)


def test_dsac_t_v2_gradient_by_hand():
    """The standalone repository's form: per-sample weight clip(b^2 / (s^2 + e), 0.1, 10) on
    Huber_50(Q, y_q) plus s (s^2 - Huber_50(Q, y_z')) / (s + e)."""
    q = jnp.array([[1.0, 2.0], [0.0, -100.0]])
    sigma = jnp.array([[1.0, 0.01], [2.0, 1.0]])
    y_q = jnp.array([2.0, 0.0])  # the last pair is 100 apart: Huber's linear part
    y_z = jnp.array([1.5, 1.5])
    ema = jnp.array([2.0, 0.3])
    grad_q, grad_sigma = jax.grad(dsac_t.critic_loss, argnums=(0, 1))(
        q, sigma, y_q, y_z, ema, "dsac_v2"
    )
    e, batch = 0.1, 2
    q_, s_ = np.asarray(q), np.asarray(sigma)
    w = np.clip(np.asarray(ema)[:, None] ** 2 / (s_**2 + e), 0.1, 10.0)
    assert w[0, 1] == 10.0 and w[1, 0] == np.float32(0.1)  # both ends of the clamp bind
    diff = q_ - np.asarray(y_q)
    huber_grad = np.clip(diff, -50, 50)  # d/dQ Huber_50(Q - y)
    np.testing.assert_allclose(grad_q, w * huber_grad / batch, rtol=1e-5)
    clipped = q_ + np.clip(
        np.asarray(y_z) - q_, -3 * np.asarray(ema)[:, None], 3 * np.asarray(ema)[:, None]
    )
    delta = np.abs(q_ - clipped)
    huber = np.where(delta < 50, 0.5 * delta**2, 50 * (delta - 25))
    np.testing.assert_allclose(grad_sigma, w * (s_**2 - huber) / (s_ + e) / batch, rtol=1e-5)


def test_dsac_t_moving_average_and_delays_during_training():
    """b follows b <- (1 - tau_b) b + tau_b mean(sigma) from the first batch mean; the policy,
    the temperature and the targets move on every second gradient step only."""
    env, env_params = envs.make("Pendulum-v1")
    small = {"num_envs": 1, "hidden_sizes": (16,), "learning_starts": 0, "tau_b": 0.3}
    config = dsac_t.Config(**{**SMALL, **small})
    state = dsac_t.init(config, env, env_params, jax.random.PRNGKey(0))
    step = jax.jit(lambda s: dsac_t.update(config, env, env_params, s))
    ema, actors = [], [state.params.actor]
    for _ in range(4):  # one gradient step per update
        before = state
        state, metrics = step(state)
        ema.append(np.asarray(state.sigma_ema))
        actors.append(state.params.actor)
        moved = not np.allclose(
            jax.tree.leaves(state.params.actor)[0], jax.tree.leaves(before.params.actor)[0]
        )
        target_moved = not np.allclose(
            jax.tree.leaves(state.target_critic)[0], jax.tree.leaves(before.target_critic)[0]
        )
        delayed = int(before.gradient_step) % 2 == 0
        assert moved == delayed and target_moved == delayed
        assert (float(state.params.log_alpha) != float(before.params.log_alpha)) == delayed
        batch_mean = float(metrics["sigma_mean"])  # the mean over both critics
        expected = batch_mean if len(ema) == 1 else 0.7 * ema[-2].mean() + 0.3 * batch_mean
        np.testing.assert_allclose(ema[-1].mean(), expected, rtol=1e-5)


# --- Contract, runner and CLI ---


@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_act_stays_in_the_box_and_deterministic_is_the_squashed_mean(agent):
    env, env_params = envs.make("Pendulum-v1")
    config = agent.Config(hidden_sizes=(16,))
    params = agent.init(config, env, env_params, jax.random.PRNGKey(0)).params
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 3)) * 5
    actions = agent.act(config, params, obs, jax.random.PRNGKey(2))
    assert actions.shape == (64, 1) and (jnp.abs(actions) <= 2.0).all()
    actor, _ = agent._networks(config, 1)
    mean, _ = actor.apply(params.actor, obs)
    greedy = agent.act(config, params, obs, jax.random.PRNGKey(2), deterministic=True)
    np.testing.assert_allclose(greedy, 2.0 * jnp.tanh(mean), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["sac", "dsac_t"])
def test_checkpoint_round_trip_with_a_partly_filled_buffer_is_bit_exact(tmp_path, algo):
    """8 updates straight == 4, a crash after the checkpoint, and --resume; the buffer (1000
    slots, 64 transitions at the end) is restored with the rest."""
    agent = {**SMALL, "hidden_sizes": [16], "batch_size": 8, "learning_starts": 16}
    agent |= {"buffer_size": 1000, "total_timesteps": 64}

    def spec():
        return RunSpec(algo=algo, env={"name": "Pendulum-v1"}, agent=dict(agent), chunk_updates=4)

    train(spec(), tmp_path / "straight", checkpoint_seconds=0, print_fn=quiet)
    printed = []

    def crash_after_one_chunk(line):
        printed.append(line)
        if len(printed) == 2:  # the header, then the first chunk (checkpointed)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec(), tmp_path / "resumed", checkpoint_seconds=0, print_fn=crash_after_one_chunk)
    train(spec(), tmp_path / "resumed", resume=True, checkpoint_seconds=0, print_fn=quiet)
    straight, resumed = (
        checkpoint_leaves(tmp_path / "straight"),
        checkpoint_leaves(tmp_path / "resumed"),
    )
    assert any(leaf.shape[:2] == (1, 1000) for leaf in straight)  # the buffer is in there
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert cli.main(["eval", str(tmp_path / "resumed"), "--episodes", "2"]) == 0


@pytest.mark.parametrize("algo", ["sac", "dsac_t"])
def test_trains_mountain_car_continuous_through_the_cli(tmp_path, algo):
    out = tmp_path / "run"
    tiny = ["--set", "hidden_sizes=[16]", "--set", "batch_size=8", "--set", "learning_starts=32"]
    tiny += ["--set", "num_envs=4", "--set", "utd_ratio=1", "--set", "buffer_size=256"]
    argv = ["train", algo, "--env", "MountainCarContinuous-v0", *tiny, "--total-steps", "256"]
    assert cli.main([*argv, "--seeds", "2", "--out", str(out)]) == 0
    assert (out / "summary.json").exists() and (out / "curve.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["dsac_t", "--set", "tau_b=0"], "tau_b=0.0 is out of range"),
        (["dsac_t", "--set", "critic_loss=huber"], "choose one of ['paper', 'dsac_v2']"),
        (["sac", "--set", "utd_ratio=0.3"], "must be a whole number of gradient steps"),
        (["sac", "--set", "buffer_size=100"], "buffer_size=100 must hold"),
        (["sac", "--env", "CartPole-v1"], "needs a continuous action box"),
    ],
)
def test_bad_config_values_get_named_errors(tmp_path, capsys, args, message):
    algo, *rest = args
    env = [] if "--env" in rest else ["--env", "Pendulum-v1"]
    status = cli.main(["train", algo, *env, *rest, "--out", str(tmp_path / "run")])
    assert status == 2 and message in capsys.readouterr().err


# --- Learning ---


def _final_returns(agent, config, seeds):
    env, env_params = envs.make("Pendulum-v1")

    def run(key):
        return agent.train(config, env, env_params, key)[1]["episode_return"]

    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    returns = np.asarray(jax.jit(lambda k: jax.lax.map(run, k))(keys))
    return np.nanmean(returns[:, -returns.shape[1] // 10 :], axis=1)  # the last 10% of updates


@pytest.mark.slow
@pytest.mark.parametrize("agent", AGENTS, ids=lambda m: m.__name__)
def test_learns_pendulum(agent):
    """Random play scores about -1200; both agents pass -250 on average over 2 seeds in 12k
    steps (measured: SAC -139 and -182, DSAC-T -253 and -183)."""
    returns = _final_returns(agent, agent.Config(**SMALL, total_timesteps=12_000), seeds=2)
    assert returns.mean() > -250, returns
