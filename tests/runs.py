"""Shared by the tests: a tiny runner spec, a silent printer, checkpoint contents, the offline
agents' tiny synthetic dataset and the Pendulum dataset their learning checks train on, and the
goal-conditioned agents' tiny dataset, hand-set one-unit networks and open-square dataset."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rljax.data import Dataset, write_d4rl
from rljax.generate import d4rl as gen
from rljax.runner.policy import restore
from rljax.runner.spec import RunSpec

# 8 updates of 4 envs x 16 steps, in chunks of 2.
TINY = {"num_envs": 4, "num_steps": 16, "num_minibatches": 2, "update_epochs": 2}
TINY["total_timesteps"] = 8 * 64


def tiny_spec(**changes) -> RunSpec:
    spec = RunSpec(algo="ppo", env={"name": "CartPole-v1"}, agent=dict(TINY), chunk_updates=2)
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def quiet(*_) -> None:
    pass


def checkpoint_leaves(run_dir: Path) -> list[np.ndarray]:
    """Every array of the run's latest checkpoint, in tree order."""
    _, state, _ = restore(run_dir)
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def pendulum_medium_replay(directory: Path) -> tuple[Path, dict]:
    """(path, metadata) of a Pendulum-v1 medium-replay dataset written in ``directory``, as
    ``rljax data generate`` makes it but with the behaviour SAC stopped at 48k steps (about
    -175): ~23k transitions from random-level play up to the medium snapshot, ~10 s. The
    offline learning checks compare each agent with BC on it."""
    recipe = gen.RECIPES["Pendulum-v1"]
    recipe = dataclasses.replace(recipe, agent={**recipe.agent, "total_timesteps": 48_000})
    written = gen.generate_all(
        "Pendulum-v1", directory, ["medium-replay"], recipe=recipe, print_fn=quiet
    )
    return written["medium-replay"]


def synthetic_dataset(n=64, obs_dim=3, action_dim=2, seed=0, action_scale=1.0) -> Dataset:
    """Random transitions in episodes of 8 steps; episode 3 terminates, the rest time out."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[7::8] = 1
    terminals[23], timeouts[23] = 1, 0
    return Dataset.from_arrays(
        observations=rng.normal(2.0, 3.0, (n, obs_dim)),
        actions=action_scale * rng.uniform(-1, 1, (n, action_dim)),
        rewards=rng.normal(size=n),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(2.0, 3.0, (n, obs_dim)),
    )


def goal_dataset(lengths=(4, 1, 5), discrete=False, seed=0) -> Dataset:
    """The goal-conditioned agents' tiny dataset: trajectories laid end to end, each ending in a
    timeout; observation = (row, 0), so a goal's row can be read off it; actions in [-1, 1]^2
    or in {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    obs = np.stack([np.arange(n), np.zeros(n)], -1).astype(np.float32)
    timeouts = np.zeros(n, np.float32)
    timeouts[np.cumsum(lengths) - 1] = 1
    actions = rng.integers(0, 3, n).astype(np.int32) if discrete else rng.uniform(-1, 1, (n, 2))
    return Dataset.from_arrays(
        observations=obs, actions=actions, rewards=np.zeros(n), terminals=np.zeros(n),
        timeouts=timeouts, next_observations=obs + np.array([1.0, 0.0], np.float32),
    )  # fmt: skip


def one_unit(params, scale, bias, pick=None):
    """A network built with hidden_sizes=(1,) and no LayerNorm, made to compute
    scale * (x[pick] + 10) + bias, or the constant ``bias`` when pick is None: the hidden unit
    is GELU(x[pick] + 10), which is exactly x[pick] + 10 in float32 for x[pick] > -2. Twins
    take one scale and bias per head; an actor's bias is its mean or logits."""
    params = jax.tree.map(jnp.zeros_like, params)
    layers = params["params"]
    layers = layers.get("VmapValue_0", layers)
    first, last = layers["Dense_0"], layers["Dense_1"]
    if pick is not None:
        first["kernel"] = first["kernel"].at[..., pick, :].set(1.0)
    first["bias"] = first["bias"] + 10.0
    lead = last["bias"].shape[:-1]  # (2,) for twins
    last["kernel"] = last["kernel"] + jnp.reshape(jnp.asarray(scale, jnp.float32), (*lead, 1, 1))
    last["bias"] = last["bias"] + jnp.reshape(jnp.asarray(bias, jnp.float32), (*lead, -1))
    return params


def one_unit_free(actor_params, bias):
    """Any actor made to output ``bias`` everywhere: zero weights, last layer's bias."""
    params = jax.tree.map(jnp.zeros_like, actor_params)
    layers = params["params"]
    last = max(layers, key=lambda k: int(k.split("_")[1]))
    layers[last]["bias"] = jnp.asarray(bias, jnp.float32)
    return params


def straight_line_dataset(rng, episodes=300, horizon=40, speed=0.05) -> Dataset:
    """OGBench-style navigation in the open square [0, 1]^2, as in the goal-conditioned agents'
    __main__: x' = clip(x + speed a), a noisy (sigma 0.5) unit step toward one random target
    per trajectory, each ending in a timeout. The goal-conditioned learning checks train on it."""

    def navigate(key):
        start_key, target_key, key = jax.random.split(key, 3)
        x0, target = jax.random.uniform(start_key, (2,)), jax.random.uniform(target_key, (2,))

        def step(x, k):
            direction = (target - x) / (jnp.linalg.norm(target - x) + 1e-6)
            a = jnp.clip(direction + 0.5 * jax.random.normal(k, (2,)), -1, 1)
            x_next = jnp.clip(x + speed * a, 0, 1)
            return x_next, (x, a, x_next)

        return jax.lax.scan(step, x0, jax.random.split(key, horizon))[1]

    obs, actions, next_obs = jax.vmap(navigate)(jax.random.split(rng, episodes))
    n = episodes * horizon
    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1
    return Dataset.from_arrays(
        observations=obs.reshape(n, 2), actions=actions.reshape(n, 2), rewards=np.zeros(n),
        terminals=np.zeros(n), timeouts=timeouts.reshape(n),
        next_observations=next_obs.reshape(n, 2),
    )  # fmt: skip


def random_pendulum_dataset(path: Path, env: dict, horizon: int) -> Path:
    """Random [-1, 1] actions on Pendulum-v1 in ``horizon``-step episodes, with references,
    written to ``path``: the runner's two-phase tests train on it."""
    rng = np.random.default_rng(0)
    n = 5 * horizon
    timeouts = np.zeros(n, np.float32)
    timeouts[horizon - 1 :: horizon] = 1
    arrays = {
        "observations": rng.normal(size=(n, 3)), "actions": rng.uniform(-1, 1, (n, 1)),
        "rewards": -rng.uniform(0, 10, n), "terminals": np.zeros(n, np.float32),
        "timeouts": timeouts, "next_observations": rng.normal(size=(n, 3)),
    }  # fmt: skip
    write_d4rl(path, arrays, {"env": env, "ref_min_score": -200.0, "ref_max_score": -10.0})
    return path


def assert_resumes_bit_for_bit(train, spec, straight: Path, resumed: Path, crash_at: str):
    """A run of ``spec`` interrupted when its progress line shows ``crash_at``, then resumed,
    ends with the checkpoint and metrics of ``straight``, the same run uninterrupted."""

    def crash(line):
        if line.startswith("[") and crash_at in line:
            raise KeyboardInterrupt

    try:
        train(spec, resumed, checkpoint_seconds=0, print_fn=crash)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError(f"the run never reached {crash_at}")
    train(spec, resumed, resume=True, checkpoint_seconds=0, print_fn=quiet)
    for a, b in zip(checkpoint_leaves(straight), checkpoint_leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (straight / "metrics.csv").read_text() == (resumed / "metrics.csv").read_text()
