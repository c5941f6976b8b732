"""PRDC: TD3 with a dataset constraint, the action of the nearest dataset pair, in the actor loss.

Ran, Li, Zhang, Yu, "Policy Regularization with Dataset Constraint for Offline Reinforcement
Learning", ICML 2023 (LAMDA-RL/PRDC ``prdc.py``, ``main.py``). The critic is TD3's, as in TD3+BC;
the actor is pulled towards the action of the dataset pair nearest to (beta s, pi(s)) instead of
the action recorded at s:

    a' = clip(pibar(s') + clip(N(0, sigma^2), -c, c), -1, 1)
    y = r + gamma (1 - terminal) min_i Qbar_i(s', a')
    L_Q  = sum_i mean((Q_i(s, a) - y)^2)
    (s*, a*) = argmin over every dataset pair (s^, a^) of ||(beta s, pi(s)) - (beta s^, a^)||_2
               (the query detached; s, s^ normalized)                 (the k-th nearest, k = 1)
    lambda = alpha / mean|Q_1(s, pi(s))|                      (no gradient through lambda)
    L_pi = -lambda mean Q_1(s, pi(s)) + mean((pi(s) - a*)^2)   (every ``policy_freq`` steps)
    Qbar <- (1 - tau) Qbar + tau Q,  pibar <- (1 - tau) pibar + tau pi   (on actor steps only)

The authors query a ``scipy.spatial.KDTree`` on the host. Here the search runs inside jit:
``nearest_neighbours`` is exact brute force over blocks of ``search_block_size`` dataset rows (a
``lax.scan`` keeping a running best), and the keys (beta s^, a^) are built block by block from
the raw dataset with each member's statistics, so the dataset stays one shared copy under vmap.
Distances are ``||k||^2 - 2 q.k`` from one matmul per block at full float32 precision (no TF32
on GPUs): it can order two keys differently from float64 only when their distances differ by
less than the float32 rounding of ||k||^2 and q.k. Ties go to the lower row (a KD-tree leaves
them unspecified). ``k`` selects the
k-th nearest pair, as the authors' ``KDTree.query(key, k=[k])`` does (not a mean over k).

Cost per actor step for N dataset rows, batch B, key width D = obs_dim + action_dim: 2 N B D
FLOPs in the matmuls (hopper: N = 1M, B = 256, D = 14: 7.2 GFLOP), about 3 N B more in the
norms and min reductions, N D to build the keys; memory per block of 2048 rows (the default):
B x 2048 distances (2 MiB) and 2048 keys (112 KiB), then B x 256 gathered keys (3.5 MiB).
Measured on a shared 2-core x86 CPU (jax 0.10.2; hopper shapes, 1M rows, B = 256, block 2048):
0.17 s of CPU time per search (0.35-0.55 s wall under load), 20x the ~8 ms of a 256x256
network update, so a full update runs at 11 steps per CPU-second against IQL's 122 (at 10k rows
the two are level, 122 each). k > 1 merges a running ``lax.top_k``, 4.5x slower on CPU. The
search runs on actor steps only: a ``lax.cond`` on whether any member is at its actor step
(``_any_member``), so a vmapped sweep skips it on the other steps too (a plain batched cond
would run it every step: measured 1.9x slower with 2 members at 1M rows).

Choices where the paper and its code leave room: beta = 2 (the paper's and README's MuJoCo
value; the code's argparse default is 1), alpha = 2.5 (hopper, walker2d; 40 for halfcheetah),
rewards ``reward_scale r + reward_shift`` (the code's ``--scale``/``--shift``: 10000, -1 for
AntMaze). Observations are normalized by the dataset's statistics, ``(s - mu) / (sigma +
1e-3)``, in the batch and in the keys alike; the statistics live in ``Params`` so ``act``
applies them too. Networks are TD3+BC's (flax's default initialization rather than PyTorch's).
The search set is every row of the dataset, where D4RL's ``qlearning_dataset`` drops the last
step of each timed-out episode. Actions are assumed in [-1, 1] (the D4RL convention), the range
of the tanh actor. Timeouts are not terminals: the target bootstraps through them.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Ran et al., "Policy Regularization with Dataset Constraint for Offline Reinforcement '
    'Learning", ICML 2023'
)


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    policy_freq: int = _field(
        2, static=True, bounds="[1, inf)", doc="gradient steps per actor and target update"
    )
    k: int = _field(
        1, static=True, bounds="[1, inf)", doc="the k-th nearest dataset pair constrains the actor"
    )
    search_block_size: int = _field(
        2048, static=True, bounds="[1, inf)", doc="dataset rows per block of the neighbour search"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(
        0.005, bounds="(0, 1]", doc="Polyak rate tau of the target actor and critics"
    )
    alpha: float = _field(
        2.5, bounds="[0, inf)", doc="alpha of the Q-term weight lambda = alpha / mean|Q|"
    )
    beta: float = _field(
        2.0, bounds="[0, inf)", doc="weight beta of the state in the search key (beta s, a)"
    )
    policy_noise: float = _field(
        0.2, bounds="[0, inf)", doc="std sigma of the noise on the target action"
    )
    noise_clip: float = _field(
        0.5, bounds="[0, inf)", doc="clip c of the noise on the target action"
    )
    reward_scale: float = _field(1.0, doc="rewards are reward_scale * r + reward_shift")
    reward_shift: float = _field(0.0, doc="added to the scaled rewards (-1 for AntMaze)")

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


ACTOR_METRICS = ("actor_loss", "dc_loss", "lambda", "neighbour_distance", "actor_grad_norm")


@struct.dataclass
class TrainState:
    params: Params
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    actor_metrics: dict  # ACTOR_METRICS of the last actor step, reported again until the next
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size)(x))
    return x


class Actor(nn.Module):
    """Deterministic policy onto [-1, 1]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.tanh(nn.Dense(self.action_dim)(x))


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


# --- The nearest-neighbour search ---


SUB_BLOCK = 256  # rows of a sub-block: the k = 1 search's second stage reads B x SUB_BLOCK keys


def nearest_neighbours(queries, keys, block_size: int, k: int = 1, transform=None):
    """The k nearest keys of each query by Euclidean distance: exact, in blocks, inside jit.

    ``queries`` (B, D). ``keys`` an (N, D) array, or a tuple of (N, D_i) arrays whose rows
    ``transform(*rows)`` maps, some rows at a time, to (rows, D) points; so keys derived from a
    shared dataset (normalized with one member's statistics, say) are never built whole.
    Returns the row indices (B, k) and squared distances (B, k), nearest first; ties go to the
    lower row.

    A ``lax.scan`` over ceil(N / block_size) blocks of rows keeps a running best; the last block
    is moved back to end at row N, and the rows it shares with the block before count as +inf.
    Distances are ||k||^2 - 2 q.k (+ ||q||^2 at the end), one matmul per block at full float32
    precision. For k = 1 the scan keeps, per query, the smallest distance and the sub-block of
    gcd(block, 256) rows that holds it, with plain min reductions (an argmin over every row runs
    ~20x slower on XLA's CPU backend); then the distances to that sub-block are computed again
    from B x sub-block gathered keys and the argmin taken there. For k > 1 each block is merged
    into a running ``lax.top_k``.
    """
    parts = keys if isinstance(keys, tuple) else (keys,)
    if transform is None:
        transform = lambda *rows: jnp.concatenate(rows, -1)  # noqa: E731
    n = parts[0].shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} nearest keys asked of {n} key(s): choose 1 <= k <= {n}")
    size = min(block_size, n)
    sub = math.gcd(size, SUB_BLOCK)
    batch = queries.shape[0]
    highest = jax.lax.Precision.HIGHEST

    def block(i):
        """Block i's keys, rows and norms: +inf on rows that the block before has seen."""
        start = i * size
        first = jnp.minimum(start, n - size)  # the last block ends at row n
        points = transform(*(jax.lax.dynamic_slice_in_dim(p, first, size) for p in parts))
        rows = first + jnp.arange(size)
        norms = jnp.where(rows >= start, jnp.sum(jnp.square(points), -1), jnp.inf)
        return points, rows, norms

    def scan_min(best, i):
        best_d, best_first = best
        points, rows, norms = block(i)
        d = norms - 2.0 * jnp.einsum("bd,sd->bs", queries, points, precision=highest)
        sub_min = d.reshape(batch, size // sub, sub).min(-1)
        d_min = sub_min.min(-1)
        j = jnp.where(sub_min == d_min[:, None], jnp.arange(size // sub), size).min(-1)
        better = d_min < best_d  # strictly: a tie keeps the earlier block
        return (
            jnp.where(better, d_min, best_d),
            jnp.where(better, rows[j * sub], best_first),
        ), None

    def scan_top_k(best, i):
        best_d, best_i = best
        points, rows, norms = block(i)
        d = norms - 2.0 * jnp.einsum("bd,sd->bs", queries, points, precision=highest)
        # top_k keeps the lower index among equal values, and the running best comes first.
        all_d = jnp.concatenate([best_d, d], -1)
        all_i = jnp.concatenate([best_i, jnp.broadcast_to(rows, d.shape)], -1)
        neg_d, pos = jax.lax.top_k(-all_d, k)
        return (-neg_d, jnp.take_along_axis(all_i, pos, -1)), None

    blocks = jnp.arange(-(-n // size))
    if k == 1:
        init = (jnp.full(batch, jnp.inf, queries.dtype), jnp.zeros(batch, jnp.int32))
        (_, best_first), _ = jax.lax.scan(scan_min, init, blocks)
        # Rows of the winning sub-block seen in an earlier block need no mask: one of them could
        # win only as a tie (else its block would have won), and it is the lower row.
        rows = best_first[:, None] + jnp.arange(sub)  # (B, sub)
        points = transform(*(jnp.take(p, rows.reshape(-1), axis=0) for p in parts))
        points = points.reshape(batch, sub, -1)
        cross = jnp.einsum("bd,bsd->bs", queries, points, precision=highest)
        d = jnp.sum(jnp.square(points), -1) - 2.0 * cross
        j = jnp.argmin(d, -1)[:, None]  # the first of equal minima
        best_i, best_d = jnp.take_along_axis(rows, j, -1), jnp.take_along_axis(d, j, -1)
    else:
        init = (jnp.full((batch, k), jnp.inf, queries.dtype), jnp.zeros((batch, k), jnp.int32))
        (best_d, best_i), _ = jax.lax.scan(scan_top_k, init, blocks)
    sq_distance = jnp.maximum(best_d + jnp.sum(jnp.square(queries), -1, keepdims=True), 0.0)
    return best_i, sq_distance


def dataset_constraint(actor_params, params: Params, batch, config: Config):
    """a*, the action of the k-th nearest dataset pair (beta s^, a^) to (beta s, pi(s)), and
    the squared distance to it. ``batch["observations"]`` normalized; ``search_observations``
    and ``search_actions`` are the raw dataset, normalized here block by block. pi(s) is
    detached, and a* is a lookup: no gradient reaches the actor through a*."""
    actor, _ = _networks(config, params.action_dim)
    pi = jax.lax.stop_gradient(actor.apply(actor_params, batch["observations"]))
    query = jnp.concatenate([config.beta * batch["observations"], pi], -1)

    def to_keys(observations, actions):
        return jnp.concatenate([config.beta * _normalize(params, observations), actions], -1)

    search = (batch["search_observations"], batch["search_actions"])
    rows, sq_distance = nearest_neighbours(
        query, search, config.search_block_size, config.k, to_keys
    )
    return batch["search_actions"][rows[:, -1]], sq_distance[:, -1]


# --- Data ---


BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, and the whole dataset's observations and actions
    (the same arrays, not copies) for the constraint's search, as ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    batch = {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}
    return batch | {
        "search_observations": dataset.observations,
        "search_actions": dataset.actions,
    }


# --- Losses ---


def critic_loss(critic_params, batch, next_action, target_critic, config: Config):
    """Both critics regress on r + gamma (1 - terminal) min_i Qbar_i(s', a'); batch normalized."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    q_next = critic.apply(target_critic, batch["next_observations"], next_action).min(0)
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * q_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, q.mean()


def actor_loss(actor_params, critic_params, batch, neighbour_actions, config: Config):
    """-lambda mean Q_1(s, pi(s)) + mean (pi(s) - a*)^2, lambda = alpha / mean|Q_1| held fixed;
    the mean of the constraint runs over the batch and the action dimensions (F.mse_loss)."""
    actor, critic = _networks(config, batch["actions"].shape[-1])
    pi = actor.apply(actor_params, batch["observations"])
    q = critic.apply(critic_params, batch["observations"], pi)[0]
    lmbda = jax.lax.stop_gradient(config.alpha / jnp.abs(q).mean())
    dc = jnp.square(pi - jax.lax.stop_gradient(neighbour_actions)).mean()
    return -lmbda * q.mean() + dc, {"dc_loss": dc, "lambda": lmbda}


# --- The contract ---


def _observation_stats(observations, normalize: bool):
    if not normalize:
        return jnp.zeros(observations.shape[1:]), jnp.ones(observations.shape[1:])
    return observations.mean(0), observations.std(0) + 1e-3


def _check_dataset(config: Config, dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"PRDC takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    rows = dataset.actions.shape[0]
    if rows < config.k:
        raise ValueError(
            f"k={config.k} asks for the {config.k}-th nearest dataset pair but the dataset has "
            f"{rows} row(s): choose k <= {rows}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        return  # a dataset passed through jit as an argument: close over it to get this check
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the tanh actor acts in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


@jax.custom_batching.custom_vmap
def _any_member(flag):
    """``flag``; under vmap, whether any member's flag is set, unbatched. A ``lax.cond`` on a
    batched predicate becomes a select that runs both branches every step; on this one it
    still skips the delayed branch when no member is at its delayed step."""
    return flag


@_any_member.def_vmap
def _any_member_vmap(axis_size, in_batched, flag):
    (batched,) = in_batched
    return _any_member(flag.any(0) if batched else flag), False  # again, for an outer vmap


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers and normalization statistics for ``dataset`` (an rljax Dataset)."""
    _check_dataset(config, dataset)
    actor_key, critic_key, rng = jax.random.split(rng, 3)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic = _networks(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    obs_mean, obs_std = _observation_stats(dataset.observations, config.normalize_obs)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_actor=params.actor,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        actor_metrics={name: jnp.zeros(()) for name in ACTOR_METRICS},
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One critic step; the nearest-neighbour search, the actor and both targets move on every
    ``policy_freq``-th step. ``batch`` as ``sample_batch`` makes it (raw observations)."""
    params = state.params
    actor, _ = _networks(config, params.action_dim)
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": config.reward_scale * batch["rewards"] + config.reward_shift,
    }
    rng, noise_key = jax.random.split(state.rng)

    # Target policy smoothing.
    noise = config.policy_noise * jax.random.normal(noise_key, batch["actions"].shape)
    noise = jnp.clip(noise, -config.noise_clip, config.noise_clip)
    next_pi = actor.apply(state.target_actor, batch["next_observations"])
    next_action = jnp.clip(next_pi + noise, -1.0, 1.0)
    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, next_action, state.target_critic, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))

    # Delayed actor and targets (TD3 counts steps from 1: the actor moves on steps 2, 4, ...).
    kept = {
        "actor": params.actor,
        "actor_opt": state.actor_opt,
        "target_actor": state.target_actor,
        "target_critic": state.target_critic,
        "actor_metrics": state.actor_metrics,
    }
    actor_step = (state.step + 1) % config.policy_freq == 0

    def move(kept):
        neighbour_actions, sq_distance = dataset_constraint(params.actor, params, batch, config)
        (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params.critic, batch, neighbour_actions, config
        )
        updates, actor_opt = optax.adam(config.actor_lr).update(actor_grads, state.actor_opt)
        new_actor = optax.apply_updates(params.actor, updates)
        moved = {
            "actor": new_actor,
            "actor_opt": actor_opt,
            "target_actor": optax.incremental_update(new_actor, state.target_actor, config.tau),
            "target_critic": optax.incremental_update(
                params.critic, state.target_critic, config.tau
            ),
            "actor_metrics": {
                "actor_loss": loss_pi,
                "dc_loss": aux["dc_loss"],
                "lambda": aux["lambda"],
                "neighbour_distance": jnp.sqrt(sq_distance).mean(),
                "actor_grad_norm": optax.tree.norm(actor_grads),
            },
        }
        # Under vmap another member's actor step may bring a member here: it keeps its own.
        return jax.tree.map(lambda m, k: jnp.where(actor_step, m, k), moved, kept)

    new = jax.lax.cond(_any_member(actor_step), move, lambda kept: kept, kept)
    state = state.replace(
        params=params.replace(actor=new["actor"]),
        target_actor=new["target_actor"],
        target_critic=new["target_critic"],
        actor_opt=new["actor_opt"],
        critic_opt=critic_opt,
        actor_metrics=new["actor_metrics"],
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q,
        "q_mean": q_mean,
        "grad_norm": optax.tree.norm(critic_grads),
        **new["actor_metrics"],
    }
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) gradient steps on uniform batches.

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it, which the search reads too.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """The actor's action on raw observations; deterministic either way, as PRDC evaluates."""
    actor, _ = _networks(config, params.action_dim)
    return actor.apply(params.actor, _normalize(params, obs))


if __name__ == "__main__":
    import time

    import gymnax

    # A small offline dataset: a noisy swing-up controller on Pendulum, torque scaled to [-1, 1].
    env, env_params = gymnax.make("Pendulum-v1")
    episodes, horizon = 50, 200

    def scripted(obs, rng):
        angle, velocity = jnp.arctan2(obs[1], obs[0]), obs[2]
        balance = jnp.clip(-(10 * angle + 2 * velocity) / 2, -1, 1)
        swing = jnp.sign(velocity + 1e-3)  # pump energy along the motion
        action = jnp.where(obs[0] > 0.8, balance, swing)
        return jnp.clip(action + 0.5 * jax.random.normal(rng, ()), -1, 1)[None]

    def rollout(rng, policy):
        reset_key, rng = jax.random.split(rng)
        obs, env_state = env.reset(reset_key, env_params)

        def step(carry, rng):
            obs, env_state = carry
            policy_key, step_key = jax.random.split(rng)
            action = policy(obs, policy_key)
            next_obs, env_state, reward, *_ = env.step(step_key, env_state, 2 * action, env_params)
            return (next_obs, env_state), (obs, action, reward, next_obs)

        return jax.lax.scan(step, (obs, env_state), jax.random.split(rng, horizon))[1]

    keys = jax.random.split(jax.random.PRNGKey(0), episodes)
    obs, actions, rewards, next_obs = jax.vmap(lambda k: rollout(k, scripted))(keys)
    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1  # Pendulum never terminates: every episode ends in a time limit

    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    flat = lambda x: x.reshape(episodes * horizon, *x.shape[2:])  # noqa: E731
    dataset = Transitions(
        flat(obs), flat(actions), flat(rewards), jnp.zeros(episodes * horizon),
        flat(jnp.asarray(timeouts)), flat(next_obs),
    )  # fmt: skip
    config = Config(total_updates=20_000, hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3)
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"PRDC on {episodes} noisy swing-up episodes of Pendulum-v1 ({episodes * horizon} pairs "
          f"searched): {config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(1, config.total_updates - 1, 5).astype(int):
        names = ("critic_loss", "dc_loss", "neighbour_distance", "q_mean")
        losses = {k: float(metrics[k][i]) for k in names}
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
