"""Delayed actor updates that cost nothing when skipped: TD3+BC, DSAC-T and A2PR.

Each runs its delayed part (the actor's loss, gradient and Adam step; DSAC-T's temperature step
too; the Polyak updates) inside a ``lax.cond`` on ``_any_member(actor step)``, as PRDC does.
Under vmap (seeds, sweeps) that predicate is whether any member is at its actor step,
unbatched, so the cond stays a cond: a batched predicate would turn it into a select that runs
both branches every step. A member brought into the branch by another keeps its values (a
``jnp.where`` inside the branch), and between actor steps the actor's metrics are the last actor
step's, carried in the state.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runs import synthetic_dataset

from rljax import envs
from rljax.agents import a2pr, dsac_t, td3_bc

OFFLINE = dict(batch_size=8, hidden_sizes=(8,))
AGENTS = {
    "td3_bc": (td3_bc, OFFLINE),
    "a2pr": (a2pr, OFFLINE | dict(vae_hidden_sizes=(8,))),
    # One gradient step per iteration, from the first iteration on.
    "dsac_t": (
        dsac_t,
        dict(num_envs=1, num_steps=1, utd_ratio=1.0, learning_starts=0, buffer_size=16) | OFFLINE,
    ),
}
NAMES = list(AGENTS)


@functools.cache
def source(name: str) -> tuple:
    """What the agent's init, update and train take between config and rng / state."""
    if name == "dsac_t":
        return envs.make("Pendulum-v1")
    return (synthetic_dataset(),)


def setup(name: str, seeds=(0, 1)):
    module, fields = AGENTS[name]
    config = module.Config(**fields)
    states = [module.init(config, *source(name), jax.random.PRNGKey(s)) for s in seeds]
    return module, config, states


def update_fn(name: str):
    module, args = AGENTS[name][0], source(name)
    return lambda config, state: module.update(config, *args, state)


def at_actor_step(name: str, state, actor_step: bool):
    """``state`` with its step counter set so that its next gradient step is (or is not) an
    actor step: TD3+BC and A2PR move the actor when (step + 1) % policy_freq == 0, DSAC-T when
    gradient_step % policy_delay == 0 (2 and 3, past its first step's special case)."""
    if name == "dsac_t":
        return state.replace(gradient_step=jnp.asarray(2 if actor_step else 3, jnp.int32))
    return state.replace(step=jnp.asarray(1 if actor_step else 2, jnp.int32))


def stack(trees):
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def member(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def differs(a, b) -> bool:
    return any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# --- The predicate ---


def test_any_member_is_one_unbatched_predicate_under_vmap():
    """Outside vmap the flag itself; under vmap, a vmap inside another included, whether any
    member's flag is set, unbatched, so a cond on it stays a ``cond`` in the jaxpr."""
    any_member = td3_bc._any_member  # one text in every file: tests/test_inlined_copies.py
    assert bool(any_member(jnp.array(True))) and not bool(any_member(jnp.array(False)))

    def f(flag, x):
        return jax.lax.cond(any_member(flag), lambda x: x + 1.0, lambda x: x, x)

    grid = jax.vmap(jax.vmap(f))
    one = jnp.array([[False, False], [False, True]])
    np.testing.assert_array_equal(grid(one, jnp.zeros((2, 2))), np.ones((2, 2)))
    np.testing.assert_array_equal(grid(jnp.zeros((2, 2), bool), jnp.zeros((2, 2))), 0)
    primitives = [eqn.primitive.name for eqn in jax.make_jaxpr(grid)(one, jnp.zeros((2, 2))).eqns]
    assert "cond" in primitives and "select_n" not in primitives


# --- The actor step is skipped, not selected away ---


def dot_generals(jaxpr, in_cond=False, counts=None) -> collections.Counter:
    """The dot_general equations of ``jaxpr`` and of every jaxpr nested in it (scans, pjit,
    custom rules), counted as "inside" a cond's branch or "outside" every cond."""
    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            counts["inside" if in_cond else "outside"] += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    dot_generals(sub, in_cond or eqn.primitive.name == "cond", counts)
    return counts


def without_matmuls(actor_loss):
    """``actor_loss`` with its outputs' shapes but no matmul: the sum of the actor's weights,
    and zeros for the auxiliary outputs."""

    def stub(actor_params, *args):
        _, aux = jax.eval_shape(actor_loss, actor_params, *args)
        loss = sum(x.sum() for x in jax.tree.leaves(actor_params))
        return loss, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux)

    return stub


@pytest.mark.parametrize("name", NAMES)
def test_the_actor_step_runs_inside_a_cond_under_vmap(name, monkeypatch):
    """A sweep of two members (actor_lr differs), each with its own state, vmapped over
    ``update``: every matmul that the actor's loss and gradient bring is inside a cond's
    branch. Counted as the dot_generals of the jaxpr against those with ``actor_loss``
    replaced by a loss without matmuls: the same number outside every cond, more inside. A
    delayed step computed every step and selected (a plain ``jnp.where``, or a ``lax.cond`` on
    the batched predicate, which vmap turns into a select) adds its matmuls outside: measured
    (jax 0.10.2), outside / inside, TD3+BC 9 / 9, A2PR 34 / 21, DSAC-T 13 / 12 here, and before
    the delayed part moved into the cond 18 / 0, 66 / 0 and 25 / 0, against 9, 34 and 13
    without the actor's matmuls."""
    module, config, states = setup(name)
    configs = stack([config, config.replace(actor_lr=2 * config.actor_lr)])

    def count():  # a new function each time: make_jaxpr caches traces by function
        program = jax.vmap(update_fn(name))
        return dot_generals(jax.make_jaxpr(program)(configs, stack(states)).jaxpr)

    real = count()
    monkeypatch.setattr(module, "actor_loss", without_matmuls(module.actor_loss))
    stub = count()
    assert real["outside"] == stub["outside"], (real, stub)
    assert real["inside"] > stub["inside"], (real, stub)


@pytest.mark.parametrize("name", NAMES)
def test_a_member_off_its_actor_step_keeps_its_values_under_vmap(name):
    """Two seeds vmapped, member 0 at its actor step and member 1 not: the branch runs for both,
    member 1 keeps its actor, actor optimizer, targets and actor metrics bit for bit, member 0
    moves them, and each member is its own single update."""
    module, config, states = setup(name)
    states = [at_actor_step(name, states[0], True), at_actor_step(name, states[1], False)]
    update = update_fn(name)
    singles = [jax.jit(update)(config, state) for state in states]
    swept = jax.jit(jax.vmap(update, in_axes=(None, 0)))(config, stack(states))
    for i, single in enumerate(singles):
        for x, y in zip(jax.tree.leaves(member(swept, i)), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    moved, kept = member(swept[0], 0), member(swept[0], 1)
    for field in ("target_actor", "target_critic", "actor_opt", "actor_metrics"):
        assert_trees_equal(getattr(kept, field), getattr(states[1], field))
        assert differs(getattr(moved, field), getattr(states[0], field)), field
    assert_trees_equal(kept.params.actor, states[1].params.actor)
    assert differs(moved.params.actor, states[0].params.actor)


# --- The actor's metrics between actor steps ---


@pytest.mark.parametrize("name", NAMES)
def test_actor_metrics_between_actor_steps_are_the_last_actor_steps(name):
    """Five gradient steps of ``train``, two seeds vmapped: on a step that is not an actor step
    each actor metric is exactly the last actor step's (zeros before the first); on an actor
    step ``actor_loss`` is new. TD3+BC and A2PR move the actor on steps 2 and 4, DSAC-T on its
    gradient steps 0, 2 and 4 (here one per iteration)."""
    module, config, _ = setup(name)
    args = source(name)

    def run(key):
        return module.train(config, *args, key, 5)[1]

    metrics = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(1), 2))
    actor_steps = [t % 2 == (0 if name == "dsac_t" else 1) for t in range(5)]
    for metric in module.ACTOR_METRICS:
        values = np.asarray(metrics[metric])
        last = np.zeros(2, values.dtype)
        for t, actor_step in enumerate(actor_steps):
            if actor_step:
                if metric == "actor_loss":
                    assert (values[:, t] != last).all(), (metric, t, values)
                last = values[:, t]
            else:
                np.testing.assert_array_equal(values[:, t], last, err_msg=f"{metric} {t}")


def test_td3_bc_reports_the_actor_steps_own_loss():
    """On an actor step the actor metrics are those of actor_loss(pi before the step, the
    critics after this step's critic update, this batch, normalized); on the critic-only step
    after it, the same numbers again."""
    _, config, states = setup("td3_bc")
    state = at_actor_step("td3_bc", states[0], True)
    dataset = source("td3_bc")[0]
    batch = {k: getattr(dataset, k)[:8] for k in td3_bc.BATCH_KEYS}
    step = jax.jit(td3_bc.update_on_batch)
    new, metrics = step(config, state, batch)
    normalized = batch | {
        k: td3_bc._normalize(state.params, batch[k]) for k in ("observations", "next_observations")
    }

    def loss(actor):
        return td3_bc.actor_loss(actor, new.params.critic, normalized, config)

    (expected, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params.actor)
    expected = {"actor_loss": expected, **aux, "actor_grad_norm": optax.tree.norm(grads)}
    assert set(expected) == set(td3_bc.ACTOR_METRICS)
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
    _, again = step(config, new, batch)
    for name in td3_bc.ACTOR_METRICS:
        np.testing.assert_array_equal(again[name], metrics[name])
