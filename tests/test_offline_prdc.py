"""PRDC: the blocked nearest-neighbour search against NumPy brute force (ties, blocks that do not
divide the rows, keys built block by block), the dataset constraint by hand (beta, k, the
normalized keys, no gradient through a*), the critic and actor losses by hand with their
stop-gradients, the delayed actor and targets, jit/no-jit/vmap agreement (members at different
steps included), determinism, named errors, and learning from a Pendulum dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import pendulum_medium_replay, quiet, synthetic_dataset

from rljax.agents import prdc
from rljax.data import Dataset
from rljax.runner import config as config_lib
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

TINY = dict(batch_size=16, hidden_sizes=(8,), search_block_size=8)


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def brute_force(queries, keys, k):
    """Row indices (stable sort: ties to the lower row) and squared distances, in float64."""
    d = ((np.float64(queries)[:, None] - np.float64(keys)[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, 1)


# --- The search ---


@pytest.mark.parametrize(
    "n, block_size, k",
    [(37, 5, 1), (37, 5, 3), (37, 1, 1), (37, 100, 1), (37, 100, 2), (64, 8, 1), (300, 64, 1),
     (600, 512, 1), (24, 7, 24)],
)  # fmt: skip
def test_nearest_neighbours_match_brute_force(n, block_size, k):
    """Blocks that divide the rows and blocks that do not (the last one moved back), a block
    larger than the data, sub-blocks of gcd(block, 256) rows (600 rows, blocks of 512), and
    k up to every row."""
    rng = np.random.default_rng(n + block_size + k)
    queries = rng.normal(size=(9, 4)).astype(np.float32)
    keys = rng.normal(size=(n, 4)).astype(np.float32)
    search = jax.jit(prdc.nearest_neighbours, static_argnums=(2, 3))
    rows, sq_distance = search(queries, keys, block_size, k)
    want_rows, want_d = brute_force(queries, keys, k)
    assert rows.shape == sq_distance.shape == (9, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(sq_distance, want_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_size", [1, 3, 4, 256])
def test_nearest_neighbours_ties_go_to_the_lower_row(block_size):
    """Equal keys (rows 2 and 6, 7 and 9: the last two in the moved-back last block when blocks
    are 4 rows) and keys at equal distance (rows 0, 1, 3 from the origin, in one block or in
    several): the lower row wins, as in a stable sort; k = 2 lists both."""
    keys = np.zeros((10, 2), np.float32)
    keys[[0, 1, 3]] = [[1, 0], [0, 1], [-1, 0]]
    keys[[2, 6]] = [3, 3]
    keys[[7, 9]] = [-3, 5]
    keys[[4, 5, 8]] = [[9, 9], [8, -9], [-9, -9]]
    queries = np.array([[0, 0], [3, 3], [-3, 5]], np.float32)
    rows, _ = prdc.nearest_neighbours(jnp.asarray(queries), jnp.asarray(keys), block_size)
    np.testing.assert_array_equal(rows[:, 0], [0, 2, 7])
    rows, sq_distance = prdc.nearest_neighbours(
        jnp.asarray(queries), jnp.asarray(keys), block_size, k=2
    )
    np.testing.assert_array_equal(rows, [[0, 1], [2, 6], [7, 9]])
    np.testing.assert_allclose(sq_distance, [[1, 1], [0, 0], [0, 0]], atol=1e-6)


def test_nearest_neighbours_refuse_k_beyond_the_keys():
    with pytest.raises(ValueError, match="k=4 nearest keys asked of 3"):
        prdc.nearest_neighbours(jnp.zeros((2, 2)), jnp.zeros((3, 2)), 2, k=4)


def test_nearest_neighbours_build_keys_block_by_block():
    """Keys given as (observations, actions) with a transform (beta times the normalized
    observation, then the action) find what the keys built in full find, also vmapped over a
    batched transform (two members' beta and statistics) on the one shared copy of the rows."""
    rng = np.random.default_rng(1)
    obs = rng.normal(2.0, 3.0, (50, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    queries = rng.normal(size=(6, 5)).astype(np.float32)

    def search(beta, mean, std):
        def to_keys(o, a):
            return jnp.concatenate([beta * (o - mean) / std, a], -1)

        return prdc.nearest_neighbours(queries, (obs, actions), 7, 1, to_keys)

    members = [(2.0, obs.mean(0), obs.std(0)), (0.5, np.zeros(3), np.ones(3))]
    stacked = [jnp.asarray(np.stack(x)) for x in zip(*members, strict=True)]
    swept = jax.jit(jax.vmap(search))(*stacked)
    for m, (beta, mean, std) in enumerate(members):
        want_rows, want_d = brute_force(queries, np.hstack([beta * (obs - mean) / std, actions]), 1)
        np.testing.assert_array_equal(swept[0][m], want_rows)
        np.testing.assert_allclose(swept[1][m], want_d, rtol=1e-5, atol=1e-5)


# --- The dataset constraint and the losses, by hand ---


def _actor(c):
    """Actor params with pi(s) = tanh(c) for every s (1-d obs and action): hidden relu(1)."""
    return {
        "params": {
            "Dense_0": {"kernel": jnp.zeros((1, 1)), "bias": jnp.ones(1)},
            "Dense_1": {"kernel": jnp.zeros((1, 1)), "bias": jnp.array([c], jnp.float32)},
        }
    }


def _critic(slopes, offsets, obs_dim=1):
    """Twin critics with Q_i(s, a) = slopes[i] * (a + 10) + offsets[i] for 1-d actions: hidden
    unit relu(a + 10) (observation weights 0), output layer slopes[i], offsets[i]."""
    kernel = jnp.zeros((2, obs_dim + 1, 1)).at[:, obs_dim, 0].set(1.0)
    return {
        "params": {
            "VmapCritic_0": {
                "Dense_0": {"kernel": kernel, "bias": jnp.full((2, 1), 10.0)},
                "Dense_1": {
                    "kernel": jnp.asarray(slopes, jnp.float32).reshape(2, 1, 1),
                    "bias": jnp.asarray(offsets, jnp.float32).reshape(2, 1),
                },
            }
        }
    }


def _constraint_case():
    """One query at raw s = 1, pi(s) = -0.4; statistics mean 1, std 2; three dataset pairs
    with raw s = 1, 2, 5 (normalized 0, 0.5, 2) and actions 0.9, -0.5, -0.4."""
    params = prdc.Params(
        actor=_actor(np.arctanh(-0.4)),
        critic=None,
        obs_mean=jnp.array([1.0]),
        obs_std=jnp.array([2.0]),
        action_dim=1,
    )
    batch = {
        "observations": jnp.array([[0.0]]),  # normalized, as update_on_batch passes it
        "actions": jnp.zeros((1, 1)),
        "search_observations": jnp.array([[1.0], [2.0], [5.0]]),  # raw
        "search_actions": jnp.array([[0.9], [-0.5], [-0.4]]),
    }
    return params, batch


@pytest.mark.parametrize(
    "beta, k, action, sq_distance",
    [
        (2.0, 1, -0.5, 4 * 0.25 + 0.01),  # rows: 1.69, 1.01, 16: the second pair
        (4.0, 1, 0.9, 1.69),  # rows: 1.69, 4.01, 64: the first
        (0.0, 1, -0.4, 0.0),  # actions alone: the third
        (2.0, 2, 0.9, 1.69),  # the second nearest
    ],
)
def test_dataset_constraint_by_hand(beta, k, action, sq_distance):
    """a* is the action of the k-th nearest (beta s^, a^) to (beta s, pi(s)), the dataset's
    observations normalized with the member's statistics; squared distances by hand."""
    params, batch = _constraint_case()
    config = prdc.Config(beta=beta, k=k, search_block_size=2, hidden_sizes=(1,))
    got, got_d = prdc.dataset_constraint(params.actor, params, batch, config)
    np.testing.assert_allclose(got, [[action]], rtol=1e-6)
    np.testing.assert_allclose(got_d, [sq_distance], rtol=1e-5, atol=1e-6)


def test_dataset_constraint_carries_no_gradient():
    """The query is detached and a* a lookup: d a* / d actor = 0 (the actor's gradient comes
    from the MSE to a*, held fixed, alone)."""
    params, batch = _constraint_case()
    config = prdc.Config(search_block_size=2, hidden_sizes=(1,))
    grads = jax.grad(lambda actor: prdc.dataset_constraint(actor, params, batch, config)[0].sum())(
        params.actor
    )
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)


def test_actor_loss_and_gradient_by_hand():
    """L_pi = -lambda mean Q_1(s, pi(s)) + mean (pi(s) - a*)^2, lambda = alpha / mean|Q_1|
    held fixed. Q_1 = 2 (pi + 10) + 1 is the same for every sample, so lambda mean Q_1 = alpha:
    were lambda differentiated, the Q-term's gradient would vanish and the check would fail."""
    config = prdc.Config(hidden_sizes=(1,), alpha=2.5)
    batch = {"observations": jnp.array([[0.1], [0.3], [-1.0]]), "actions": jnp.zeros((3, 1))}
    a_star = jnp.array([[0.5], [-1.0], [0.0]])
    critic = _critic([2.0, 0.5], [1.0, -30.0])  # Q_1 is the first, though the second is smaller
    c = 0.4
    loss, aux = prdc.actor_loss(_actor(c), critic, batch, a_star, config)
    pi, a = np.tanh(c), np.array([0.5, -1.0, 0.0])
    q1 = 2 * (pi + 10) + 1
    np.testing.assert_allclose(aux["lambda"], 2.5 / q1, rtol=1e-6)
    np.testing.assert_allclose(aux["dc_loss"], ((pi - a) ** 2).mean(), rtol=1e-6)
    np.testing.assert_allclose(loss, -2.5 + ((pi - a) ** 2).mean(), rtol=1e-6)
    # dL/dc = (1 - pi^2) (-lambda dQ_1/da + mean 2 (pi - a*)), dQ_1/da = 2
    grads = jax.grad(lambda p: prdc.actor_loss(p, critic, batch, a_star, config)[0])(_actor(c))
    want = (1 - pi**2) * (-2.5 / q1 * 2 + (2 * (pi - a)).mean())
    np.testing.assert_allclose(grads["params"]["Dense_1"]["bias"][0], want, rtol=1e-5)
    # and none into a* (were it not held fixed, d/da* = -2 (pi - a*) / 3)
    grad_a = jax.grad(lambda x: prdc.actor_loss(_actor(c), critic, batch, x, config)[0])(a_star)
    np.testing.assert_array_equal(grad_a, 0.0)


def test_the_constraint_is_a_mean_over_batch_and_action_dims():
    """F.mse_loss: the mean over the batch *and* the action dimensions (TD3+BC's convention)."""
    config = prdc.Config(hidden_sizes=(4,))
    actor, critic = prdc._networks(config, 3)
    obs = jnp.array([[0.1, 0.2], [0.3, -0.4]])
    actor_params = actor.init(jax.random.PRNGKey(0), obs[0])
    critic_params = critic.init(jax.random.PRNGKey(1), obs[0], jnp.zeros(3))
    a_star = jnp.array([[0.5, -0.5, 0.1], [0.0, 0.9, -0.9]])
    batch = {"observations": obs, "actions": a_star}
    _, aux = prdc.actor_loss(actor_params, critic_params, batch, a_star, config)
    pi = actor.apply(actor_params, obs)
    np.testing.assert_allclose(aux["dc_loss"], ((pi - a_star) ** 2).mean(), rtol=1e-6)


def test_critic_loss_by_hand_and_no_gradient_into_the_target():
    """L_Q = sum_i mean((Q_i - y)^2), y = r + gamma (1 - d) min_i Qbar_i(s', a')."""
    config = prdc.Config(hidden_sizes=(1,), gamma=0.9)
    critic = _critic([0.0, 0.0], [0.5, 2.0])  # Q_1 = 0.5, Q_2 = 2
    target = _critic([0.0, 0.0], [1.0, 3.0])  # min_i Qbar_i = 1
    batch = {
        "observations": jnp.zeros((2, 1)),
        "actions": jnp.zeros((2, 1)),
        "rewards": jnp.array([1.0, 2.0]),
        "terminals": jnp.array([0.0, 1.0]),
        "next_observations": jnp.zeros((2, 1)),
    }
    next_action = jnp.zeros((2, 1))
    # y = [1 + 0.9 * 1, 2 + 0] = [1.9, 2]
    # L = mean((0.5 - y)^2) + mean((2 - y)^2) = (1.96 + 2.25) / 2 + (0.01 + 0) / 2 = 2.11
    loss, q_mean = prdc.critic_loss(critic, batch, next_action, target, config)
    np.testing.assert_allclose([loss, q_mean], [2.11, 1.25], rtol=1e-6)
    # dL/dQ_i's bias = 2 mean(Q_i - y): [2 * (-1.4 - 1.5) / 2, 2 * (0.1 + 0) / 2] = [-2.9, 0.1]
    grad_critic, grad_target = jax.grad(
        lambda c, t: prdc.critic_loss(c, batch, next_action, t, config)[0], argnums=(0, 1)
    )(critic, target)
    out = grad_critic["params"]["VmapCritic_0"]["Dense_1"]["bias"][:, 0]
    np.testing.assert_allclose(out, [-2.9, 0.1], rtol=1e-5)
    for leaf in jax.tree.leaves(grad_target):
        np.testing.assert_array_equal(leaf, 0.0)


# --- The update ---


def batch_of(dataset: Dataset, n=16) -> dict:
    batch = {k: getattr(dataset, k)[:n] for k in prdc.BATCH_KEYS}
    return batch | {
        "search_observations": dataset.observations,
        "search_actions": dataset.actions,
    }


def first_kernel(params):
    return jax.tree.leaves(params)[1]  # Dense_0's kernel (leaves are sorted: bias, kernel, ...)


def test_actor_and_targets_move_every_second_step():
    """Step 1: the critic only (the actor's metrics still their initial zeros); step 2: the
    actor, then Polyak targets with the critic after this step's update; step 3: the critic
    only, the actor's metrics those of step 2."""
    config = prdc.Config(**TINY, tau=0.1)
    dataset = synthetic_dataset()
    state = prdc.init(config, dataset, jax.random.PRNGKey(2))
    batch = batch_of(dataset)
    update = jax.jit(prdc.update_on_batch)
    first, metrics = update(config, state, batch)
    assert_trees_close(first.params.actor, state.params.actor, rtol=0, atol=0)
    assert_trees_close(first.target_critic, state.target_critic, rtol=0, atol=0)
    assert not np.allclose(first_kernel(first.params.critic), first_kernel(state.params.critic))
    assert all(float(metrics[name]) == 0 for name in prdc.ACTOR_METRICS)
    second, metrics = update(config, first, batch)
    assert not np.allclose(first_kernel(second.params.actor), first_kernel(first.params.actor))
    expected = jax.tree.map(
        lambda q, t: 0.9 * t + 0.1 * q, second.params.critic, first.target_critic
    )
    assert_trees_close(second.target_critic, expected, rtol=1e-5, atol=1e-7)
    expected = jax.tree.map(lambda p, t: 0.9 * t + 0.1 * p, second.params.actor, first.target_actor)
    assert_trees_close(second.target_actor, expected, rtol=1e-5, atol=1e-7)
    assert all(float(metrics[name]) > 0 for name in ("dc_loss", "lambda", "neighbour_distance"))
    third, metrics_3 = update(config, second, batch)
    assert_trees_close(third.params.actor, second.params.actor, rtol=0, atol=0)
    for name in prdc.ACTOR_METRICS:
        assert float(metrics_3[name]) == float(metrics[name]), name


def test_the_update_uses_the_search_on_the_whole_dataset():
    """The actor step's a* comes from every dataset row, not the batch: with the batch's rows
    alone as the search set the neighbours are farther and the actor moves differently."""
    config = prdc.Config(**TINY, policy_freq=1)
    dataset = synthetic_dataset()
    state = prdc.init(config, dataset, jax.random.PRNGKey(3))
    batch = batch_of(dataset, 4)
    update = jax.jit(prdc.update_on_batch)
    full, metrics = update(config, state, batch)
    alone, metrics_alone = update(
        config,
        state,
        batch | {"search_observations": batch["observations"], "search_actions": batch["actions"]},
    )
    assert float(metrics["neighbour_distance"]) < float(metrics_alone["neighbour_distance"])
    assert float(metrics["dc_loss"]) != float(metrics_alone["dc_loss"])
    assert not np.array_equal(first_kernel(full.params.actor), first_kernel(alone.params.actor))


def test_update_agrees_under_jit_no_jit_and_vmap():
    """Two configs stacked (alpha, beta, the learning rates traced), and two members at
    different steps (one at a critic-only step, one at an actor step: the search runs for both,
    and only the second uses it) give each member's single-run numbers."""
    dataset = synthetic_dataset()
    batch = batch_of(dataset)
    configs = [
        prdc.Config(**TINY, alpha=a, beta=b, actor_lr=lr)
        for a, b, lr in ((2.5, 2.0, 3e-4), (1.0, 0.5, 1e-3))
    ]
    state = prdc.init(configs[0], dataset, jax.random.PRNGKey(3))
    update = jax.jit(prdc.update_on_batch)
    state, _ = update(configs[0], state, batch)  # the next step moves the actor too
    singles = [update(c, state, batch) for c in configs]
    with jax.disable_jit():
        eager = prdc.update_on_batch(configs[1], state, batch)
    assert_trees_close(eager, singles[1], rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *configs)
    swept = jax.jit(jax.vmap(prdc.update_on_batch, in_axes=(0, None, None)))(stacked, state, batch)
    for i, single in enumerate(singles):
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], swept), single, rtol=1e-5, atol=1e-6)

    before = prdc.init(configs[0], dataset, jax.random.PRNGKey(4))  # step 0: critic only
    members = jax.tree.map(lambda *x: jnp.stack(x), before, state)
    swept = jax.jit(jax.vmap(prdc.update_on_batch, in_axes=(None, 0, None)))(
        configs[0], members, batch
    )
    for i, member in enumerate((before, state)):
        single = update(configs[0], member, batch)
        assert_trees_close(jax.tree.map(lambda x, i=i: x[i], swept), single, rtol=1e-5, atol=1e-6)


def test_train_is_finite_and_deterministic():
    dataset = synthetic_dataset()
    config = prdc.Config(**TINY, total_updates=300)
    run = jax.jit(lambda key: prdc.train(config, dataset, key))
    state, metrics = run(jax.random.PRNGKey(4))
    again, metrics_again = run(jax.random.PRNGKey(4))
    assert int(state.step) == 300
    assert {"critic_loss", "actor_loss", "dc_loss", "neighbour_distance"} <= set(metrics)
    for name, values in metrics.items():
        assert np.isfinite(values).all(), name
        np.testing.assert_array_equal(values, metrics_again[name], err_msg=name)
    assert_trees_close(state, again, rtol=0, atol=0)


def test_act_normalizes_with_the_dataset_statistics():
    dataset = synthetic_dataset()
    config = prdc.Config(**TINY)
    params = prdc.init(config, dataset, jax.random.PRNGKey(0)).params
    obs = np.asarray(dataset.observations)
    np.testing.assert_allclose(params.obs_mean, obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(params.obs_std, obs.std(0) + 1e-3, rtol=1e-5)
    actor, _ = prdc._networks(config, 2)
    expected = actor.apply(params.actor, (obs - obs.mean(0)) / (obs.std(0) + 1e-3))
    action = prdc.act(config, params, dataset.observations, None, deterministic=True)
    np.testing.assert_allclose(action, expected, rtol=1e-4, atol=1e-6)
    raw = prdc.init(prdc.Config(**TINY, normalize_obs=False), dataset, jax.random.PRNGKey(0))
    np.testing.assert_allclose(raw.params.obs_mean, 0)
    np.testing.assert_allclose(raw.params.obs_std, 1)


# --- Named errors ---


def test_init_names_bad_datasets():
    config = prdc.Config(**TINY)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prdc.init(config, synthetic_dataset(action_scale=2.0), jax.random.PRNGKey(0))
    images = synthetic_dataset().replace(observations=jnp.zeros((64, 4, 4)))
    with pytest.raises(ValueError, match="vector observations"):
        prdc.init(config, images, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"k=65 .* 64 row"):
        prdc.init(prdc.Config(**TINY, k=65), synthetic_dataset(), jax.random.PRNGKey(0))


@pytest.mark.parametrize(
    "field, value",
    [("alpha", "-1"), ("beta", "-0.5"), ("k", "0"), ("search_block_size", "0"), ("tau", "0"),
     ("gamma", "1.5"), ("policy_freq", "0"), ("policy_noise", "-0.1"), ("actor_lr", "0")],
)  # fmt: skip
def test_bad_config_values_are_refused_by_name(field, value):
    with pytest.raises(config_lib.FieldOutOfRange, match=field):
        config_lib.make_config(prdc.Config, {field: value})


# --- Learning ---


@pytest.mark.slow
def test_prdc_beats_bc_on_pendulum_medium_replay(tmp_path):
    """On generated Pendulum medium-replay data (the SAC recipe stopped at 48k steps, as
    tests/test_offline_learning.py: 22.8k transitions from random-level play to medium, whose
    episodes score -59 on average), PRDC with the paper's alpha = 2.5, beta = 2, k = 1 and
    batch 256 beats BC's normalized score by far (the constraint lets the Q-term choose among
    actions taken at nearby states, where BC clones their average).

    Budget: 3 seeds vmapped, 64x64 networks, 5000 updates each for BC and PRDC, 20 evaluation
    episodes; ~80 s of CPU time from a cold compilation cache, data generation included.
    Measured (seeds 0-2, final scores): BC -46.0, -37.0, -54.9 (mean -46.0); PRDC 51.0, 35.4,
    52.7 (mean 46.4), a gap of 92. PRDC's mean climbs late: -110 after 2000 updates (BC then
    -54), -63 after 3000, 13 after 4000; hence 5000. Asserted: PRDC's mean at least BC's + 40,
    which leaves 50 points for seed and platform noise.
    """
    path, metadata = pendulum_medium_replay(tmp_path)

    def scores(algo, **agent):
        spec = RunSpec(
            algo=algo, env=metadata["env"], seeds=3, dataset=str(path), eval_episodes=20,
            agent={"total_updates": 5000, "hidden_sizes": [64, 64], **agent},
            chunk_updates=2500,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc, prdc_scores = scores("bc"), scores("prdc")
    assert prdc_scores.mean() >= bc.mean() + 40, (bc, prdc_scores)
