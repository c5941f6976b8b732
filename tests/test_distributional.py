"""Every inlined copy of the categorical projection and of the quantile Huber loss, against rlax
(the single reference) on random inputs and against hand computations on the edge cases.

Agent files inline these primitives; an agent that adds a copy adds its (module, function name)
to the lists below, so the copies can never drift apart.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import rlax

# project(z_t, p_t, z) -> (K,): the distribution sum_j p_t[j] delta(z_t[j]) on the evenly
# spaced support z (K,), one distribution (vmap for a batch).
PROJECTIONS = [
    ("rljax.agents.c51", "categorical_projection"),
    ("rljax.agents.stock_dqn", "categorical_projection"),
]
# loss(dist_src (N,), tau_src (N,), dist_target (N',), kappa) -> scalar: the paper's
# sum_i mean_j |tau_i - 1{u_ij < 0}| L_kappa(u_ij) / kappa, u_ij = target_j - src_i.
QUANTILE_LOSSES = [("rljax.agents.qr_dqn", "quantile_huber_loss")]


def resolve(module_and_name):
    module, name = module_and_name
    return getattr(importlib.import_module(module), name)


def ids(pairs):
    return [f"{module.rsplit('.', 1)[-1]}.{name}" for module, name in pairs]


def agree_under_transforms(fn, batch, expected, **tolerance):
    """fn on each example of the batch (no jit, then jit) and vmapped over it equals expected.

    batch: argument arrays with a leading example axis; trailing scalars are shared."""
    arrays = [x for x in batch if np.ndim(x) > 0]
    shared = [x for x in batch if np.ndim(x) == 0]
    jitted = jax.jit(fn)
    for i in range(len(expected)):
        example = [x[i] for x in arrays]
        np.testing.assert_allclose(fn(*example, *shared), expected[i], **tolerance)
        np.testing.assert_allclose(jitted(*example, *shared), expected[i], **tolerance)
    in_axes = (0,) * len(arrays) + (None,) * len(shared)
    vmapped = jax.vmap(fn, in_axes=in_axes)(*arrays, *shared)
    np.testing.assert_allclose(vmapped, expected, **tolerance)


# --- Categorical projection (Bellemare et al. 2017) ---


def random_projection_cases(num_cases=64, num_atoms=11, seed=0):
    """(z_t, p_t) batches on the support [-5, 5]: random rewards and discounts, some targets far
    outside the support, a quarter with integer rewards and discount 1 (every atom exactly on
    a support point, b an integer), and a quarter terminal (discount 0)."""
    rng = np.random.default_rng(seed)
    z = np.linspace(-5.0, 5.0, num_atoms).astype(np.float32)
    r, discount = rng.uniform(-12, 12, num_cases), rng.uniform(0, 1, num_cases)
    r[::4], discount[::4] = rng.integers(-7, 8, len(r[::4])), 1.0
    discount[1::4] = 0.0
    logits = rng.normal(size=(num_cases, num_atoms)) * 2
    p_t = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    z_t = r[:, None] + discount[:, None] * z
    return z_t.astype(np.float32), p_t.astype(np.float32), z


@pytest.mark.parametrize("pair", PROJECTIONS, ids=ids(PROJECTIONS))
def test_projection_matches_rlax(pair):
    """Equal to rlax.categorical_l2_project on random inputs and on atoms exactly on support
    points, under no-jit, jit and vmap; total mass is kept."""
    project = resolve(pair)
    z_t, p_t, z = random_projection_cases()
    expected = jax.vmap(rlax.categorical_l2_project, in_axes=(0, 0, None))(z_t, p_t, z)
    agree_under_transforms(lambda z_t, p_t: project(z_t, p_t, z), (z_t, p_t), expected, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(project, (0, 0, None))(z_t, p_t, z).sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize("pair", PROJECTIONS, ids=ids(PROJECTIONS))
def test_projection_hand_computed_edge_cases(pair):
    project = resolve(pair)
    z = jnp.arange(5.0)  # support 0, 1, 2, 3, 4
    uniform = jnp.full(5, 0.2)
    # r = 1, discount 1: atoms land exactly on 1, 2, 3, 4 and 5 (clipped to 4); floor = ceil,
    # the bug that drops mass in the paper's indexing form.
    np.testing.assert_allclose(project(1.0 + z, uniform, z), [0, 0.2, 0.2, 0.2, 0.4], atol=1e-7)
    # r = 0, discount 0.5: atoms at 0, 0.5, 1, 1.5, 2 split between neighbours.
    p = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0])
    np.testing.assert_allclose(project(0.5 * z, p, z), [0.2, 0.6, 0.2, 0, 0], atol=1e-7)
    # Targets below and above the support: all mass on its end.
    np.testing.assert_allclose(project(z - 10.0, p, z), [1, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(project(2 * z + 7.0, p, z), [0, 0, 0, 0, 1], atol=1e-7)
    # Terminal (discount 0): every atom at the reward 2.25, split 3:1 between 2 and 3 ...
    np.testing.assert_allclose(project(0 * z + 2.25, p, z), [0, 0, 0.75, 0.25, 0], atol=1e-7)
    # ... or, beyond the support, the clipped reward.
    np.testing.assert_allclose(project(0 * z - 3.0, p, z), [1, 0, 0, 0, 0], atol=1e-7)


# --- Quantile Huber loss (Dabney et al. 2018) ---


def random_quantile_cases(num_src, num_target, num_cases=16, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(num_cases, num_src)).astype(np.float32) * 2
    target = rng.normal(size=(num_cases, num_target)).astype(np.float32) * 2
    tau = np.tile((np.arange(num_src) + 0.5) / num_src, (num_cases, 1)).astype(np.float32)
    return src, tau, target


@pytest.mark.parametrize("pair", QUANTILE_LOSSES, ids=ids(QUANTILE_LOSSES))
@pytest.mark.parametrize("num_src, num_target", [(8, 8), (5, 7)])  # N != N': broadcasting bugs
def test_quantile_loss_matches_rlax(pair, num_src, num_target):
    """Equal to rlax.quantile_regression_loss at kappa = 1 and kappa = 0 (plain |u|), and to it
    divided by kappa at kappa = 2 (rlax leaves out the paper's 1 / kappa); no-jit, jit, vmap.
    The gradients with respect to the source quantiles agree too."""
    loss = resolve(pair)
    batch = random_quantile_cases(num_src, num_target)
    reference = jax.vmap(rlax.quantile_regression_loss, in_axes=(0, 0, 0, None))
    for kappa in (1.0, 0.0, 2.0):
        expected = reference(*batch, kappa) / max(kappa, 1.0)
        agree_under_transforms(loss, (*batch, np.float32(kappa)), expected, rtol=1e-5)
    grad = jax.vmap(jax.grad(loss), in_axes=(0, 0, 0, None))(*batch, 1.0)
    expected_grad = jax.vmap(jax.grad(rlax.quantile_regression_loss), (0, 0, 0, None))(*batch, 1.0)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pair", QUANTILE_LOSSES, ids=ids(QUANTILE_LOSSES))
def test_quantile_loss_hand_computed(pair):
    """Two quantiles (tau 0.25, 0.75) at 0 and 1 against targets 0.5 and 3:
    u = [[0.5, 3], [-0.5, 2]], weights [[0.25, 0.25], [0.25, 0.75]]."""
    loss = resolve(pair)
    src, tau, target = jnp.array([0.0, 1.0]), jnp.array([0.25, 0.75]), jnp.array([0.5, 3.0])
    # kappa = 1: L = [[0.125, 2.5], [0.125, 1.5]]; sum_i mean_j of weight * L.
    kappa_1 = (0.25 * 0.125 + 0.25 * 2.5) / 2 + (0.25 * 0.125 + 0.75 * 1.5) / 2
    # kappa = 2: L / 2 = [[0.0625, 2], [0.0625, 1]] (3 is in the linear part: 2 (3 - 1) / 2).
    kappa_2 = (0.25 * 0.0625 + 0.25 * 2.0) / 2 + (0.25 * 0.0625 + 0.75 * 1.0) / 2
    # kappa = 0: |u|.
    kappa_0 = (0.25 * 0.5 + 0.25 * 3.0) / 2 + (0.25 * 0.5 + 0.75 * 2.0) / 2
    assert (kappa_1, kappa_2, kappa_0) == (0.90625, 0.640625, 1.25)
    for kappa, expected in ((1.0, kappa_1), (2.0, kappa_2), (0.0, kappa_0)):
        np.testing.assert_allclose(loss(src, tau, target, kappa), expected, rtol=1e-6)
    # At kappa = 0 the gradient is -mean_j |tau_i - 1{u_ij < 0}| sign(u_ij): a quantile below a
    # target is pushed up with weight tau, one above a target down with weight 1 - tau.
    grad = jax.grad(loss)(src, tau, target, 0.0)
    np.testing.assert_allclose(grad, [-0.25, (0.25 - 0.75) / 2], rtol=1e-6)
