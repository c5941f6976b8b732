"""HILP: the double expectile loss of the Hilbert values, the skill losses and the intrinsic
reward on hand-computed batches (with linear or constant networks), the Hilbert distance a
metric, which networks each loss trains, the batch, the reward prompt recovering a known linear
reward's z, the goal prompt and planning against a NumPy port of the authors' loop, acting,
deterministic training, named errors, and a learning check in an open square (reaching goals
it was never given, and a region it was only told the reward of)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import straight_line_dataset

from rljax.agents import hilp
from rljax.data import Dataset
from rljax.runner.config import FieldOutOfRange, make_config

LOG_2PI = float(np.log(2 * np.pi))
LINEAR = dict(hidden_sizes=(), layer_norm=False)  # every network is one Dense layer


def index_dataset(lengths=(40, 20), obs_dim=2, seed=0) -> Dataset:
    """Trajectories of the given lengths back to back; row i observes [i, 0, ...], so a goal
    shows its row index in column 0; actions uniform in [-1, 1]^2."""
    n = sum(lengths)
    obs = np.zeros((n, obs_dim), np.float32)
    obs[:, 0] = np.arange(n)
    timeouts = np.zeros(n, np.float32)
    timeouts[np.cumsum(lengths) - 1] = 1
    next_obs = obs.copy()
    next_obs[:, 0] += 1
    return Dataset.from_arrays(
        observations=obs, actions=np.random.default_rng(seed).uniform(-1, 1, (n, 2)),
        rewards=np.zeros(n), terminals=np.zeros(n), timeouts=timeouts, next_observations=next_obs,
    )  # fmt: skip


def init_state(config, dataset, seed=0):
    """init under jit (one compilation instead of one per eager op); the dataset is closed
    over, as the runner does."""
    return jax.jit(lambda key: hilp.init(config, dataset, key))(jax.random.PRNGKey(seed))


def linear(params, kernel=None, bias=None):
    """A one-layer network's params (twins stacked on axis 0) set to the given kernel and bias
    (zero where not given)."""
    params = jax.tree.map(jnp.zeros_like, params)
    inner = params["params"]
    layer = inner.get("VmapHead_0", inner)["Dense_0"]
    if kernel is not None:
        layer["kernel"] = jnp.broadcast_to(jnp.asarray(kernel, jnp.float32), layer["kernel"].shape)
    if bias is not None:
        layer["bias"] = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), layer["bias"].shape)
    return params


def linear_params(config, dataset, phi_kernels):
    """init's params with phi_j(s) = s @ phi_kernels[j] (no bias)."""
    params = init_state(config, dataset).params
    return params.replace(phi=linear(params.phi, kernel=phi_kernels))


# --- The Hilbert representation ---


def test_double_expectile_loss_by_hand():
    """1-d observations and phi_j(x) = k_j x, so V_j(s, g) = -max(k_j |s - g|, 1e-3): targets
    k = (1, 2), online k = (0.5, 3), gamma 0.9, expectile 0.8. Rows (s, s', g, r, m):
    (0, 1, 3, -1, 1), (0, 2, 2, -1, 1) (s' is the goal: Vbar(s', g) clamps to -1e-3) and
    (1, 2, 1, 0, 0) (at the goal).
      Vbar(s', g) = (-2, -4), (-1e-3, -1e-3), (-1, -2);  mean Vbar(s, g) = -4.5, -3, -1e-3
      adv = r + 0.9 m min_j Vbar_j(s', g) - mean Vbar(s, g) = -0.1, 1.9991, 1e-3
        -> weights 0.2, 0.8, 0.8 (with the mean instead of the min, row 1 gets adv 0.8: 0.8)
      q_j = r + 0.9 m Vbar_j(s', g) = (-2.8, -4.6), (-1.0009, -1.0009), (0, 0)
      V_j(s, g) = (-1.5, -9), (-1, -6), (-1e-3, -1e-3)
      errors: head 1 (-1.3, -0.0009, 0.001), head 2 (4.4, 4.9991, 0.001)"""
    dataset = index_dataset(obs_dim=1)
    config = hilp.Config(discount=0.9, expectile=0.8, skill_dim=1, **LINEAR)
    params = init_state(config, dataset).params
    online = linear(params.phi, kernel=[[[0.5]], [[3.0]]])
    target = linear(params.phi, kernel=[[[1.0]], [[2.0]]])
    column = lambda *x: jnp.array(x, jnp.float32)[:, None]  # noqa: E731
    batch = {
        "observations": column(0, 0, 1),
        "next_observations": column(1, 2, 2),
        "value_goals": column(3, 2, 1),
        "rewards": jnp.array([-1.0, -1.0, 0.0]),
        "masks": jnp.array([1.0, 1.0, 0.0]),
    }
    head_1 = (0.2 * 1.3**2 + 0.8 * 0.0009**2 + 0.8 * 0.001**2) / 3
    head_2 = (0.2 * 4.4**2 + 0.8 * 4.9991**2 + 0.8 * 0.001**2) / 3
    loss, info = hilp.value_loss(online, target, batch, config)
    np.testing.assert_allclose(loss, head_1 + head_2, rtol=1e-5)
    np.testing.assert_allclose(info["v_mean"], (-1.5 - 9 - 1 - 6 - 2e-3) / 6, rtol=1e-5)
    np.testing.assert_allclose(info["value_advantage"], (-0.1 + 1.9991 + 1e-3) / 3, rtol=1e-4)
    # The gradient reaches the online phi only (the targets are separate params).
    grad = jax.grad(lambda p: hilp.value_loss(p, target, batch, config)[0])(online)
    assert float(jnp.abs(grad["params"]["VmapHead_0"]["Dense_0"]["kernel"]).sum()) > 0


def test_hilbert_distance_is_a_metric():
    """d(s, g) = -V_j(s, g) = max(||phi_j(s) - phi_j(g)||, 1e-3) on random inputs through a
    random phi with one hidden layer, both heads: at least the clamp, exactly the clamp on
    identical inputs (the 1e-6 clamp of the squared distance: a metric up to 1e-3 at zero,
    where the unclamped norm is 0), symmetric, and the triangle inequality
    d(x, w) <= d(x, y) + d(y, w) (the clamp keeps it: max(a, c) <= max(b, c) + max(e, c)
    whenever a <= b + e)."""
    dataset = index_dataset(obs_dim=3)
    config = hilp.Config(hidden_sizes=(16,), skill_dim=4, planning_num_states=1)
    phi = init_state(config, dataset).params.phi
    x, y, w = jax.random.normal(jax.random.PRNGKey(1), (3, 500, 3)) * 3

    @jax.jit
    def d(a, b):
        return -hilp.hilbert_values(config, phi, a, b)  # (2, 500)

    heads = jax.jit(hilp._networks(config).phi.apply)(phi, jnp.stack([x, y]))
    norm = jnp.linalg.norm(heads[:, 0] - heads[:, 1], axis=-1)
    np.testing.assert_allclose(d(x, y), np.maximum(norm, 1e-3), rtol=1e-5)
    assert (d(x, y) >= 1e-3).all() and float(d(x, y).mean()) > 0.1  # phi is not constant
    np.testing.assert_allclose(d(x, x), 1e-3, rtol=1e-6)
    np.testing.assert_array_equal(d(x, y), d(y, x))
    assert (d(x, w) <= d(x, y) + d(y, w) + 1e-5).all()


# --- The skill policy ---


def test_intrinsic_reward_by_hand():
    """phi_1(s) = s K with K = [[1, 0], [2, -1]], phi_2 something else (not read):
    s = (1, 0), s' = (1, 1): phi_1(s') - phi_1(s) = K[1] = (2, -1);
    z = (0.6, 0.8): r_z = 1.2 - 0.8 = 0.4;  z = (-1, 0): r_z = -2."""
    config = hilp.Config(skill_dim=2, planning_num_states=1, **LINEAR)
    kernels = [[[1.0, 0.0], [2.0, -1.0]], [[5.0, 5.0], [5.0, 5.0]]]
    params = linear_params(config, index_dataset(), kernels)
    batch = {
        "observations": jnp.array([[1.0, 0.0], [1.0, 0.0]]),
        "next_observations": jnp.array([[1.0, 1.0], [1.0, 1.0]]),
        "skills": jnp.array([[0.6, 0.8], [-1.0, 0.0]]),
    }
    np.testing.assert_allclose(
        hilp.skill_rewards(config, params.phi, batch), [0.4, -2.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        hilp.intrinsic_reward(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]), jnp.array([3.0, 1.0])),
        -1.0,
    )


def hand_skill_params(config, dataset):
    """Constant networks: V = -1, Q = (0.5, 2), Qbar = (1, -0.5) (min -0.5), pi's mean (0.5, 0)
    with std 2; phi_1 as in test_intrinsic_reward_by_hand."""
    params = linear_params(config, dataset, [[[1.0, 0.0], [2.0, -1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    params = params.replace(
        skill_value=linear(params.skill_value, bias=[-1.0]),
        skill_critic=linear(params.skill_critic, bias=[[0.5], [2.0]]),
        actor=linear(params.actor, bias=[0.5, 0.0]),
    )
    params.actor["params"]["log_std"] = jnp.full(2, np.log(2.0), jnp.float32)
    return params, linear(params.skill_critic, bias=[[1.0], [-0.5]])


def skill_batch():
    return {
        "observations": jnp.array([[1.0, 0.0], [1.0, 0.0]]),
        "next_observations": jnp.array([[1.0, 1.0], [1.0, 1.0]]),
        "skills": jnp.array([[0.6, 0.8], [-1.0, 0.0]]),
        "actions": jnp.array([[1.0, 0.0], [0.5, 2.0]]),
    }


def test_skill_losses_by_hand():
    """With the constant networks of hand_skill_params, gamma_z 0.9, tau_z 0.9, beta 2:
    L_Q: targets r_z + 0.9 V(s', z) = (0.4, -2) - 0.9 = (-0.5, -2.9) (no mask);
         Q_1 = 0.5: errors (1, 3.4); Q_2 = 2: errors (2.5, 4.9)
    L_V: u = min Qbar - V = -0.5 + 1 = 0.5 >= 0 -> 0.9 * 0.25
    L_pi: A = 0.5 -> weight exp(2 * 0.5) = e; log pi = -0.5 ((a - mu) / 2)^2 - log 2
          - log(2 pi)/2 per dim: (a - mu) / 2 = (0.25, 0) and (0, 1)."""
    config = hilp.Config(
        skill_dim=2, planning_num_states=1, skill_discount=0.9, skill_expectile=0.9,
        skill_temperature=2.0, **LINEAR,
    )  # fmt: skip
    params, target_critic = hand_skill_params(config, index_dataset())
    batch = skill_batch()
    loss, info = hilp.skill_critic_loss(params.skill_critic, params, batch, config)
    np.testing.assert_allclose(loss, (1 + 3.4**2) / 2 + (2.5**2 + 4.9**2) / 2, rtol=1e-5)
    np.testing.assert_allclose(info["skill_reward"], -0.8, rtol=1e-6)
    loss, _ = hilp.skill_value_loss(params.skill_value, target_critic, batch, config)
    np.testing.assert_allclose(loss, 0.9 * 0.25, rtol=1e-6)
    loss, info = hilp.skill_actor_loss(params.actor, params, target_critic, batch, config)
    log_probs = np.array([-0.5 * 0.25**2, -0.5]) - 2 * np.log(2.0) - LOG_2PI
    np.testing.assert_allclose(loss, -np.e * log_probs.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["skill_advantage"], 0.5, rtol=1e-6)
    # AWR's clip: beta 10 gives exp(5) = 148 -> 100.
    loss, _ = hilp.skill_actor_loss(
        params.actor, params, target_critic, batch, config.replace(skill_temperature=10.0)
    )
    np.testing.assert_allclose(loss, -100 * log_probs.mean(), rtol=1e-5)


def test_each_loss_trains_its_own_network():
    """As the authors' stop-gradients: phi only from L_phi (the intrinsic rewards do not train
    it), V only from L_V (fixed in L_Q and L_pi), the critics only from L_Q, the actor only
    from L_pi: the joint gradient of each network equals its own loss's gradient."""
    dataset = index_dataset(obs_dim=2)
    dataset = dataset.replace(
        observations=dataset.observations / 60, next_observations=dataset.next_observations / 60
    )
    config = hilp.Config(skill_dim=3, planning_num_states=1, batch_size=16, **LINEAR)
    state = init_state(config, dataset)
    batch = hilp.sample_batch(config, dataset, jax.random.PRNGKey(1))
    params, weights = state.params, hilp._weights(state.params)
    targets = (state.target_phi, state.target_skill_critic)

    @jax.jit
    def gradients(weights):
        total = jax.grad(lambda w: hilp.total_loss(w, params, *targets, batch, config)[0])(weights)
        own = {
            "phi": jax.grad(lambda p: hilp.value_loss(p, targets[0], batch, config)[0]),
            "skill_value": jax.grad(
                lambda p: hilp.skill_value_loss(p, targets[1], batch, config)[0]
            ),
            "skill_critic": jax.grad(lambda p: hilp.skill_critic_loss(p, params, batch, config)[0]),
            "actor": jax.grad(
                lambda p: hilp.skill_actor_loss(p, params, targets[1], batch, config)[0]
            ),
        }
        return total, {name: grad(weights[name]) for name, grad in own.items()}

    total, own = gradients(weights)
    for name, expected in own.items():
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(expected)) > 0, name
        for a, b in zip(jax.tree.leaves(total[name]), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)


# --- The batch ---


def test_batch_goals_rewards_masks_and_skills():
    """Value goals from the sampler (defaults: never the current row on purpose, 62.5% future
    rows of the trajectory), rewards 0 / -1 and masks on the current row, skills on the unit
    sphere and about uniform (mean near 0, each coordinate's second moment 1 / d)."""
    dataset = index_dataset()
    config = hilp.Config(batch_size=4096, skill_dim=4, planning_num_states=1)
    batch = jax.jit(lambda k: hilp.sample_batch(config, dataset, k))(jax.random.PRNGKey(0))
    i = np.asarray(batch["observations"][:, 0]).astype(int)
    goal = np.asarray(batch["value_goals"][:, 0]).astype(int)
    final = np.where(i < 40, 39, 59)
    success = goal == i
    np.testing.assert_array_equal(batch["rewards"], success - 1.0)
    np.testing.assert_array_equal(batch["masks"], 1.0 - success)
    future = (goal > i) & (goal <= final)
    assert 0.58 < future.mean() < 0.75  # 0.625 (less the rows at a trajectory's end) + random
    skills = np.asarray(batch["skills"])
    np.testing.assert_allclose(np.linalg.norm(skills, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(skills.mean(0)).max() < 0.05
    np.testing.assert_allclose((skills**2).mean(0), 0.25, atol=0.03)


# --- Prompts ---


def test_reward_prompt_recovers_a_linear_rewards_direction():
    """phi_1(s) = s A with a random 4 x 4 A; rewards r = phi_1(s)^T (2.5 z*) + 7 on 300 random
    states: the prompt is z* (unit length) to 1e-4, under jit too. The intercept needs the
    centring: a regression through the origin misses z*. Every reward scale gives the same z."""
    config = hilp.Config(skill_dim=4, planning_num_states=1, **LINEAR)
    dataset = index_dataset(obs_dim=4)
    a = jax.random.normal(jax.random.PRNGKey(0), (4, 4)) + 2 * jnp.eye(4)
    params = linear_params(config, dataset, [a, jnp.zeros((4, 4))])
    obs = jax.random.normal(jax.random.PRNGKey(1), (300, 4))
    z_star = jnp.array([0.5, -0.5, 0.1, 0.7])
    z_star = z_star / jnp.linalg.norm(z_star)
    rewards = (obs @ a) @ (2.5 * z_star) + 7.0
    z = hilp.reward_prompt(config, params, obs, rewards)
    np.testing.assert_allclose(z, z_star, atol=1e-4)
    np.testing.assert_allclose(jax.jit(hilp.reward_prompt, static_argnums=0)(
        config, params, obs, rewards), z_star, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(hilp.reward_prompt(config, params, obs, 0.1 * rewards), z, atol=1e-4)
    through_origin = np.linalg.lstsq(np.asarray(obs @ a), np.asarray(rewards), rcond=None)[0]
    assert np.abs(through_origin / np.linalg.norm(through_origin) - z_star).max() > 0.05


def reference_goal_prompt(phi_s, phi_g, kept, recursions, knns):
    """The authors' planning loop (hilp_gcrl/jaxrl_m/evaluation.py, 'goal_skill_planning'), in
    NumPy, for one observation."""
    for _ in range(recursions):
        dists_s = np.linalg.norm(kept - phi_s, axis=-1)
        dists_g = np.linalg.norm(kept - phi_g, axis=-1)
        way_idxs = np.maximum(dists_s, dists_g).argsort()
        phi_g = kept[way_idxs[:knns]].mean(axis=0)
    return (phi_g - phi_s) / np.linalg.norm(phi_g - phi_s)


@pytest.mark.parametrize("recursions", [0, 1, 3])
def test_goal_prompt_and_planning_follow_the_authors_loop(recursions):
    """phi_1 linear and random (2 -> 3); 64 kept dataset states, 5 neighbours: the prompt for 8
    (obs, goal) pairs, batched, is the NumPy loop's for each; act is the skill policy's
    action for that prompt."""
    dataset = index_dataset(lengths=(64,))
    dataset = dataset.replace(observations=jax.random.normal(jax.random.PRNGKey(2), (64, 2)) * 2)
    config = hilp.Config(
        skill_dim=3, planning_num_recursions=recursions, planning_num_states=64,
        planning_num_knns=5, **LINEAR,
    )  # fmt: skip
    params = init_state(config, dataset, seed=3).params
    kernels = jax.random.normal(jax.random.PRNGKey(4), (2, 2, 3))
    params = params.replace(phi=linear(params.phi, kernel=kernels))
    obs, goal = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 2)) * 2
    z = hilp.goal_prompt(config, params, obs, goal)
    phi = lambda x: np.asarray(hilp.representation(config, params.phi, x))  # noqa: E731
    kept = phi(params.planning_observations)
    for row in range(8):
        expected = reference_goal_prompt(phi(obs[row]), phi(goal[row]), kept, recursions, 5)
        np.testing.assert_allclose(z[row], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
    action = hilp.act(config, params, obs, goal, None, deterministic=True)
    np.testing.assert_array_equal(action, hilp.act_with_skill(config, params, obs, z, None, True))


def test_planning_states_are_dataset_rows():
    dataset = index_dataset()
    params = init_state(hilp.Config(planning_num_states=500, **LINEAR), dataset).params
    rows = np.asarray(params.planning_observations[:, 0]).astype(int)
    assert params.planning_observations.shape == (500, 2)
    np.testing.assert_array_equal(params.planning_observations, dataset.observations[rows])
    assert len(np.unique(rows)) > 50  # uniform over the 60 rows


def test_act_with_skill_broadcasts_samples_and_clips():
    """One skill for a batch of observations is each row's action; the mean when deterministic
    (clipped to [-1, 1]), else the mean plus std times a normal draw."""
    config = hilp.Config(hidden_sizes=(16,), skill_dim=3, planning_num_states=1)
    params = init_state(config, index_dataset()).params
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 2))
    z = hilp.sample_skills(jax.random.PRNGKey(2), (), 3)
    act_with_skill = jax.jit(hilp.act_with_skill, static_argnums=5)
    batch = act_with_skill(config, params, obs, z, None, True)
    assert batch.shape == (5, 2)
    for row in range(5):
        np.testing.assert_allclose(act_with_skill(config, params, obs[row], z, None, True),
                                   batch[row], rtol=1e-6)  # fmt: skip
    params.actor["params"]["Dense_0"]["bias"] = jnp.array([3.0, -0.2])  # a mean beyond the bounds
    np.testing.assert_allclose(act_with_skill(config, params, obs, z, None, True)[:, 0], 1.0)
    sampled = act_with_skill(config, params, obs, z, jax.random.PRNGKey(3), False)
    assert (jnp.abs(sampled) <= 1).all() and np.abs(sampled[:, 1] - batch[:, 1]).max() > 1e-2


# --- Training ---


def test_train_is_deterministic_with_finite_metrics():
    dataset = index_dataset(lengths=(30, 30, 30, 30))
    dataset = dataset.replace(
        observations=dataset.observations / 120, next_observations=dataset.next_observations / 120
    )
    config = hilp.Config(batch_size=16, skill_dim=4, total_updates=100, **LINEAR,
                         planning_num_states=10)  # fmt: skip
    run = jax.jit(lambda key: hilp.train(config, dataset, key))
    (state, metrics), (state2, _) = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state2), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 100
    for name, values in metrics.items():
        assert values.shape == (100,) and np.isfinite(values).all(), name
    # The targets trail the networks: moved, but not all the way.
    target, online = state.target_phi["params"], state.params.phi["params"]
    moved = jax.tree.leaves(jax.tree.map(lambda t, o: float(jnp.abs(t - o).max()), target, online))
    assert max(moved) > 0
    other, _ = run(jax.random.PRNGKey(1))
    leaves = zip(jax.tree.leaves(other.params), jax.tree.leaves(state.params), strict=True)
    assert not all(np.allclose(a, b) for a, b in leaves)


# --- Errors ---


def test_named_errors():
    dataset = index_dataset()
    key = jax.random.PRNGKey(0)
    config = hilp.Config(skill_dim=4, planning_num_states=8, **LINEAR)
    params = init_state(config, dataset).params
    obs = dataset.observations[:3]
    # A skill of the wrong length.
    with pytest.raises(ValueError, match=r"a skill of shape \(5,\).*skill_dim=4"):
        hilp.act_with_skill(config, params, obs, jnp.ones(5), None, True)
    # A representation of another size than the config's.
    wider = init_state(config.replace(skill_dim=6), dataset).params
    message = "the params' representation phi has 6 outputs but config.skill_dim=4"
    for call in (
        lambda: hilp.act(config, wider, obs, obs, None, True),
        lambda: hilp.act_with_skill(config, wider, obs, jnp.ones(4), None, True),
        lambda: hilp.reward_prompt(config, wider, obs, jnp.ones(3)),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    # A reward prompt without samples, or with rewards that do not match them.
    with pytest.raises(ValueError, match="reward_prompt needs dataset samples"):
        hilp.reward_prompt(config, params, jnp.zeros((0, 2)), jnp.zeros(0))
    with pytest.raises(ValueError, match=r"rewards of shape \(2,\) for 3 observations"):
        hilp.reward_prompt(config, params, obs, jnp.ones(2))
    # Planning with fewer kept states than it averages.
    planning = config.replace(planning_num_recursions=2, planning_num_knns=20)
    with pytest.raises(ValueError, match="planning_num_knns=20 exceeds planning_num_states=8"):
        hilp.init(planning, dataset, key)
    with pytest.raises(ValueError, match="averages planning_num_knns=20 states, but the params"):
        hilp.act(planning, params, obs, obs, None, True)
    # The goal mixture, and datasets HILP cannot learn from.
    message = "value_p_curgoal + value_p_trajgoal + value_p_randomgoal = 1.2; they must sum to 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        hilp.init(config.replace(value_p_curgoal=0.2), dataset, key)
    with pytest.raises(ValueError, match="continuous actions of shape"):
        hilp.init(config, dataset.replace(actions=jnp.zeros(60, jnp.int32)), key)
    with pytest.raises(ValueError, match="in \\[-1, 1\\].*reaching 3"):
        hilp.init(config, dataset.replace(actions=dataset.actions.at[0, 0].set(3.0)), key)
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        hilp.init(config, dataset.replace(timeouts=dataset.timeouts.at[-1].set(0)), key)


@pytest.mark.parametrize(
    "field, value",
    [("skill_dim", 0), ("expectile", 1.0), ("skill_expectile", 0.0), ("skill_discount", 1.0),
     ("skill_temperature", -1.0), ("planning_num_recursions", -1), ("planning_num_knns", 0),
     ("planning_num_states", -5), ("tau", 0.0)],
)  # fmt: skip
def test_nonsense_fields_are_refused_by_name(field, value):
    with pytest.raises(FieldOutOfRange, match=f"{field}={value!r} is out of range"):
        make_config(hilp.Config, {field: value})


# --- Learning ---


@pytest.mark.slow
def test_one_training_reaches_unseen_goals_and_follows_a_reward_prompt():
    """HILP's zero-shot claim at CI size: trained once (2000 updates, 64x64, batch 256,
    skill_dim 8; 32 s here on 2 shared CPU cores), the skill policy, never conditioned on a goal,
    reaches most of 200 random goals (within 0.05 in 60 steps) when prompted with them, and
    prompted with the reward r(s) = x (least squares on the dataset's states) drives every start
    to the right edge (mean final x), where the untrained policy and random skills stay near the
    starts' mean 0.52. Measured over seeds 1-4: success 0.93 / 0.97 / 0.99 / 0.93 (untrained
    0.015-0.03), final x 1.0 on all four (random skills 0.38-0.59, untrained 0.49-0.52); the
    thresholds are 0.8 and 0.9. A sparse reward, 1 where x > 2/3, is followed less reliably
    (share of steps there 0.74-0.84 at 2000 updates, 0.43-0.86 at 3000, against 0.37 at the
    starts), so it is not asserted here (experiments/hilp_zero_shot.py measures it in a maze)."""
    speed = 0.05
    dataset = straight_line_dataset(jax.random.PRNGKey(0), episodes=400, speed=speed)
    config = hilp.Config(batch_size=256, hidden_sizes=(64, 64), total_updates=2000, skill_dim=8,
                         planning_num_states=1)  # fmt: skip
    trained = jax.jit(lambda k: hilp.train(config, dataset, k)[0].params)(jax.random.PRNGKey(1))
    untrained = init_state(config, dataset, seed=1).params
    starts, goals = jax.random.uniform(jax.random.PRNGKey(2), (2, 200, 2))
    random_skills = hilp.sample_skills(jax.random.PRNGKey(3), (200,), 8)

    @jax.jit
    def scores(params, reward_sign):
        def rollout(policy):
            def step(carry, _):
                x, reached = carry
                x = jnp.clip(x + speed * policy(x), 0, 1)
                return (x, reached | (jnp.linalg.norm(x - goals, axis=-1) < speed)), None

            return jax.lax.scan(step, (starts, jnp.zeros(200, bool)), None, 60)[0]

        _, reached = rollout(lambda x: hilp.act(config, params, x, goals, None, True))
        rewards = reward_sign * dataset.observations[:, 0]
        z = hilp.reward_prompt(config, params, dataset.observations, rewards)
        prompted, _ = rollout(lambda x: hilp.act_with_skill(config, params, x, z, None, True))
        wandering, _ = rollout(
            lambda x: hilp.act_with_skill(config, params, x, random_skills, None, True)
        )
        return reached.mean(), prompted[:, 0].mean(), wandering[:, 0].mean()

    success, final_x, random_x = (float(v) for v in scores(trained, 1.0))
    assert success > 0.8, success
    assert final_x > 0.9 and random_x < 0.65, (final_x, random_x)
    assert float(scores(trained, -1.0)[1]) < 0.1  # the reward's sign is the direction's
    untrained_success, untrained_x, _ = (float(v) for v in scores(untrained, 1.0))
    assert untrained_success < 0.1 and untrained_x < 0.65, (untrained_success, untrained_x)
