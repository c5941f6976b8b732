"""Uni-O4: behaviour cloning, OPE-gated multi-step on-policy improvement offline, PPO online.

Lei et al., "Uni-O4: Unifying Online and Offline Deep Reinforcement Learning with Multi-Step
On-Policy Optimization", ICLR 2024 (Lei-Kun/Uni-O4: ``main.py``, ``abppo.py``, ``critic.py``,
``BC_ensemble.py``, ``dynamics_eval.py``, ``ppo_finetune/``). Observations are normalized by the
dataset's statistics and rewards multiplied by ``reward_scale`` in both phases.

Offline, ``total_updates`` gradient steps in a fixed schedule: the first ``total_updates -
improvement_updates`` pretrain four things on one batch each step, the rest improve the policies.

    V:        L = mean((V(s) - G)^2),  G = r + gamma G' the return-to-go of the row's episode
    Q (SARSA) L = mean((Q(s, a) - r - gamma c Qbar(s', a'))^2),  a' the dataset's next action
    BC, i = 1..num_policies (one vmapped network, independent inits):
              L_i = -log pi_i(a|s) - alpha_bc (log pi_i(a|s) - sg(max_{j != i} log pi_j(a|s)))
    model     (delta s, r) ~ N(mu(s, a), diag(exp(logvar(s, a)))),  L = mean((mu - y)^2 / var
              + logvar)

(c = 0 where the row ends its episode, by termination or time limit, as the authors'
``not_done``; also where the next row does not start at the row's next observation, so that
shuffled rows count as episodes of one step.) Then each member i improves against its
reference ("old") policy pi_old_i:

    a ~ pi_old_i(.|s),  A = Q(s, a) - V(s),  A <- (A - mean A) / std A,
    A <- omega A where A > 0, (1 - omega) A elsewhere
    L_i = -mean(min(rho A, clip(rho, 1 - eps_k, 1 + eps_k) A) + w_H H[pi_i]),
    rho = pi_i(a|s) / pi_old_i(a|s)

with its own Adam (learning rate decaying linearly to 0 over the improvement, gradients clipped
at norm 0.5). OPE-gated replacement: at the end of pretraining and every ``eval_every``
improvement steps (and after the last), each member is scored by AM-Q: ``ope_batch_size``
dataset states rolled ``rollout_steps`` steps through the model under the member's mean action,
the score the mean of Q(s_t, a_t) over the rollout. A member whose score beats its best so far
takes its current policy as its new reference, and that score as its best (``abppo.replace``).
At the end of pretraining every best is -inf, so every reference becomes the BC policy and every
best its score. ``act`` uses the member with the highest latest score (``Params.selected``).

Online (``ppo_finetune/``), PPO on the selected member, with a critic initialised from V:
``num_envs x num_steps`` env steps per update (one rollout; ``steps_per_update`` counts them),
GAE over the rollout (bootstrapping through time limits), advantages normalized over the
rollout, ``update_epochs`` epochs of ``num_minibatches`` minibatches, each updating the actor
(clipped ratio at ``online_clip_eps``, entropy bonus) and then the critic (value clipped at the
same eps, as the authors' ``is_clip_value``) with two Adams (eps 1e-5, gradients clipped at
``max_grad_norm``), both learning rates decaying linearly to 0 over the online phase. Sampled
actions are clipped to [-1, 1] and their log-probabilities taken at the clipped action, as the
authors. No dataset row enters the online phase: ``offline_fraction`` exists for the fine-tuning
contract and must be 0 (``check``).

Where this file and the authors' code differ:

* Q and V: the defaults of ``main.py`` (SARSA Q on the dataset's next action, V regressed on the
  Monte-Carlo return, omega weighting of the advantage). The authors' MuJoCo scripts pass
  ``--is_iql True`` (IQL's expectile V with expectile omega, twin Q, no omega weighting): not
  built here. V, Q, the BC members and the model train together on one batch per step (the
  authors train them one after another, each on its own batches, for 2M / 2M / 0.4M steps and
  the model to convergence); Qbar moves by tau every step (theirs by tau every second step).
* The BC ensemble's diversity term: the authors' "heuristic" term on dataset actions, updated
  member after member in a shuffled order; here all members step at once on one batch. Since
  the max over the others carries no gradient, the term scales each member's BC gradient by
  (1 + alpha_bc): the members differ by their initialisations.
* The model: one Gaussian MLP (swish) over normalized observations, its log-variance
  soft-bounded in [-10, 0.5]; the authors use MOBILE's ensemble of 7 (5 elites, learned bounds,
  weight decay, a hold-out for early stopping) and a termination function per task. Model
  rollouts here never terminate: on envs that terminate, keep ``rollout_steps`` short (the
  authors' README says the same where no termination function exists).
* The score: the paper's and the code's AM-Q (mean Q over the model rollout), not discounted
  model rewards; the model's mean reward is reported as ``ope_model_reward``.
* The clip schedule: eps_k = clip_ratio (1 - min(k, clip_decay_steps) / improvement_updates),
  the authors' effective default (``is_linear_decay``, which their ``type=bool`` flags cannot
  turn off); ``clip_decay="geometric"`` gives eps_k = clip_ratio clip_decay_rate^(min(k,
  clip_decay_steps) + 1), the 0.96 decay their code has behind that flag.
* The online policy: the authors pick, among the 3 members with the best last OPE scores, the
  one with the best score over 3 real evaluation episodes; here the best last OPE score alone.
  Their online network applies a second tanh to the log-std (a different std for the same
  weights); here one network serves both phases. Their value is retrained on scaled rewards
  when the online phase scales them; here one ``reward_scale`` serves both phases.

Under vmap (sweeps and seeds) the phase switch and the OPE gate are conds on whether any member
is in a phase or at a gate (``_any_member``), not selects on each member's own flag, so a
vmapped batch runs an OPE only at its gates and one phase's step at a time (both, each member
keeping its own, only where members are in different phases).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset_then_env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Lei et al., "Uni-O4: Unifying Online and Offline Deep Reinforcement Learning with '
    'Multi-Step On-Policy Optimization", ICLR 2024'
)

# The policy's log-std lies in [LOG_STD_MIN, LOG_STD_MAX] (the authors' soft clamp of a tanh).
LOG_STD_MIN, LOG_STD_MAX = -5.0, 0.0
# The model's log-variance is soft-bounded to [MIN_LOGVAR, MAX_LOGVAR] (MOBILE's initial bounds).
MIN_LOGVAR, MAX_LOGVAR = -10.0, 0.5


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    # Offline: the schedule and the networks.
    batch_size: int = _field(
        512, static=True, bounds="[1, inf)", doc="dataset rows per offline gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[2, inf)", doc="offline gradient steps in all (budget)"
    )
    improvement_updates: int = _field(
        10_000, static=True, bounds="[1, inf)", doc="the last offline steps: policy improvement"
    )
    num_policies: int = _field(
        4, static=True, bounds="[1, inf)", doc="members of the BC ensemble, each improved"
    )
    policy_hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of each policy"
    )
    value_hidden_sizes: tuple = _field(
        (512, 512, 512), static=True, doc="hidden-layer widths of V (the online critic too)"
    )
    q_hidden_sizes: tuple = _field((1024, 1024), static=True, doc="hidden-layer widths of Q")
    dynamics_hidden_sizes: tuple = _field(
        (200, 200, 200, 200), static=True, doc="hidden-layer widths of the dynamics model"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    eval_every: int = _field(
        100, static=True, bounds="[1, inf)", doc="improvement steps between OPE-gated replacements"
    )
    rollout_steps: int = _field(
        1000, static=True, bounds="[1, inf)", doc="model steps of each OPE rollout"
    )
    ope_batch_size: int = _field(
        512, static=True, bounds="[1, inf)", doc="dataset states that OPE rollouts start from"
    )
    clip_decay: str = _field(
        "linear",
        static=True,
        choices=("linear", "geometric"),
        doc="the improvement clip's decay over its first clip_decay_steps steps",
    )
    value_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of V")
    q_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of Q")
    bc_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the BC members")
    dynamics_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the model")
    improvement_lr: float = _field(
        1e-4, bounds="(0, inf)", doc="initial learning rate of the improvement, decayed to 0"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target Q")
    reward_scale: float = _field(
        1.0, bounds="(0, inf)", doc="rewards are multiplied by it, offline and online"
    )
    alpha_bc: float = _field(
        0.1, bounds="[0, inf)", doc="weight alpha_bc of the BC ensemble's diversity term"
    )
    clip_ratio: float = _field(
        0.25, bounds="(0, inf)", doc="initial clip eps of the offline improvement"
    )
    clip_decay_rate: float = _field(
        0.96, bounds="(0, 1]", doc="factor per step of the geometric clip decay"
    )
    clip_decay_steps: int = _field(
        200, bounds="[0, inf)", doc="improvement steps over which the clip decays, then holds"
    )
    omega: float = _field(
        0.7, bounds="[0, 1]", doc="weight of positive advantages (1 - omega: of negative ones)"
    )
    entropy_weight: float = _field(
        0.0, bounds="[0, inf)", doc="entropy bonus of the offline improvement"
    )
    improvement_grad_norm: float = _field(
        0.5, bounds="(0, inf)", doc="global norm each member's improvement gradient is clipped to"
    )
    # Online: PPO.
    online_steps: int = _field(
        0, static=True, bounds="[0, inf)", doc="env steps of the online phase (0: offline only)"
    )
    num_envs: int = _field(
        1, static=True, bounds="[1, inf)", doc="environments stepped in parallel online"
    )
    num_steps: int = _field(
        2048, static=True, bounds="[1, inf)", doc="env steps per environment per online update"
    )
    num_minibatches: int = _field(
        16, static=True, bounds="[1, inf)", doc="minibatches per epoch of each online rollout"
    )
    update_epochs: int = _field(
        10, static=True, bounds="[1, inf)", doc="passes of minibatch SGD over each online rollout"
    )
    anneal_online_lr: bool = _field(
        True, static=True, doc="decay the online learning rates linearly to 0"
    )
    offline_fraction: float = _field(
        0.0, bounds="[0, 1]", doc="dataset share of online batches: must be 0 (on-policy PPO)"
    )
    online_actor_lr: float = _field(2e-5, bounds="(0, inf)", doc="Adam learning rate of the actor")
    online_critic_lr: float = _field(
        2e-4, bounds="(0, inf)", doc="Adam learning rate of the online critic"
    )
    online_clip_eps: float = _field(
        0.05, bounds="(0, inf)", doc="clip eps of the online ratio and value"
    )
    ent_coef: float = _field(0.01, bounds="[0, inf)", doc="weight of the online entropy bonus")
    gae_lambda: float = _field(0.95, bounds="[0, 1]", doc="GAE lambda")
    max_grad_norm: float = _field(
        0.5, bounds="(0, inf)", doc="global norm the online gradients are clipped to"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates

    @property
    def pretrain_updates(self) -> int:
        return self.total_updates - self.improvement_updates

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_online_updates(self) -> int:
        return self.online_steps // self.steps_per_update


@struct.dataclass
class Params:
    """The weights of both phases, and the facts act() needs without an env."""

    policies: Any  # the ensemble's weights, stacked on a leading axis of num_policies
    selected: jax.Array  # the member act() uses (and PPO trains online)
    value: Any
    critic: Any  # Q of the behaviour policy
    dynamics: Any
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    old_policies: Any  # the reference policies of the improvement, stacked like the policies
    target_critic: Any
    value_opt: Any
    critic_opt: Any
    bc_opt: Any
    dynamics_opt: Any
    improvement_opt: Any  # one clipped Adam per member, stacked
    # Per dataset row (2 floats a row, in every vmapped member's state):
    continues: jax.Array  # (rows,) 1 where the next row continues the episode
    returns: jax.Array  # (rows,) return-to-go, unscaled
    best_scores: jax.Array  # (num_policies,) the best OPE score of each member's references
    scores: jax.Array  # (num_policies,) the latest OPE scores
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


@struct.dataclass
class OnlineState:
    params: Params  # the selected member's policy and V change online
    actor_opt: Any
    critic_opt: Any
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim), raw
    rng: jax.Array
    update_step: jax.Array  # online updates done so far; drives the learning-rate decay


# --- Networks ---


class Policy(nn.Module):
    """The authors' GaussPolicyMLP: a tanh head gives the mean and, mapped linearly onto
    [LOG_STD_MIN, LOG_STD_MAX], the log-std; orthogonal weights, zero biases."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        init = nn.initializers.orthogonal(1.0)
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, kernel_init=init)(x))
        mean, raw = jnp.split(jnp.tanh(nn.Dense(2 * self.action_dim, kernel_init=init)(x)), 2, -1)
        return mean, LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (raw + 1)


class Value(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return jnp.squeeze(nn.Dense(1)(x), -1)


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return jnp.squeeze(nn.Dense(1)(x), -1)


class Dynamics(nn.Module):
    """(mean, log-variance) of (delta normalized obs, scaled reward) given (obs, action)."""

    obs_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        for size in self.hidden_sizes:
            x = nn.swish(nn.Dense(size)(x))
        mean, logvar = jnp.split(nn.Dense(2 * (self.obs_dim + 1))(x), 2, -1)
        logvar = MAX_LOGVAR - nn.softplus(MAX_LOGVAR - logvar)
        return mean, MIN_LOGVAR + nn.softplus(logvar - MIN_LOGVAR)


def _modules(config: Config, obs_dim: int, action_dim: int):
    return (
        Policy(action_dim, tuple(config.policy_hidden_sizes)),
        Value(tuple(config.value_hidden_sizes)),
        Critic(tuple(config.q_hidden_sizes)),
        Dynamics(obs_dim, tuple(config.dynamics_hidden_sizes)),
    )


def _member(policies, index):
    """One member's weights out of the stacked ensemble."""
    return jax.tree.map(lambda x: x[index], policies)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def normal_log_prob(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the last axis."""
    z = (action - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


def normal_entropy(log_std):
    """Entropy of the diagonal Gaussian, summed over the last axis."""
    return (log_std + 0.5 * jnp.log(2 * jnp.pi * jnp.e)).sum(-1)


# --- Losses and the OPE gate ---


def ensemble_bc_loss(log_probs, alpha_bc):
    """(num_policies,) losses of the BC members from their (num_policies, batch) log-likelihoods
    of the dataset actions: -log pi_i - alpha_bc (log pi_i - sg(max over the other members))."""
    others = jnp.where(jnp.eye(log_probs.shape[0], dtype=bool)[:, :, None], -jnp.inf, log_probs)
    best_other = jax.lax.stop_gradient(others.max(1))  # the max over j != i, for each i
    return (-log_probs - alpha_bc * (log_probs - best_other)).mean(-1)


def weighted_advantage(advantage, omega):
    """The batch-normalized advantage (unbiased std, as torch), times omega where positive and
    1 - omega elsewhere."""
    advantage = (advantage - advantage.mean()) / (advantage.std(ddof=1) + 1e-10)
    return jnp.where(advantage > 0, omega, 1.0 - omega) * advantage


def improvement_loss(log_prob, old_log_prob, advantage, entropy, clip, config: Config):
    """One member's clipped improvement loss on the raw advantages Q - V of actions drawn from
    its reference policy; returns (loss, clip fraction)."""
    advantage = weighted_advantage(advantage, config.omega)
    ratio = jnp.exp(log_prob - old_log_prob)
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip)
    objective = jnp.minimum(ratio * advantage, clipped * advantage)
    loss = -(objective + config.entropy_weight * entropy).mean()
    return loss, (jnp.abs(ratio - 1.0) > clip).mean()


def clip_schedule(config: Config, k):
    """The clip eps of improvement step k (0-based)."""
    held = jnp.minimum(k, config.clip_decay_steps)
    if config.clip_decay == "geometric":
        return config.clip_ratio * config.clip_decay_rate ** (held + 1)
    return config.clip_ratio * (1.0 - held / config.improvement_updates)


def replace_references(scores, best_scores, policies, old_policies):
    """The OPE gate: a member whose score beats its best so far takes its current policy as its
    reference and the score as its best. Returns (old_policies, best_scores, replaced)."""
    replaced = scores > best_scores

    def pick(new, old):
        return jnp.where(replaced.reshape(-1, *[1] * (new.ndim - 1)), new, old)

    old_policies = jax.tree.map(pick, policies, old_policies)
    return old_policies, jnp.where(replaced, scores, best_scores), replaced


def ope_scores(config: Config, params: Params, states, rng):
    """AM-Q of each member: the mean of Q(s_t, a_t) over ``rollout_steps`` model steps from the
    normalized ``states`` under the member's mean action. Returns (scores, mean model reward),
    each (num_policies,)."""
    obs_dim = states.shape[-1]
    policy, _, critic, dynamics = _modules(config, obs_dim, params.action_dim)

    def score(policy_params, key):
        def step(obs, key):
            action = jnp.clip(policy.apply(policy_params, obs)[0], -1.0, 1.0)
            q = critic.apply(params.critic, obs, action)
            mean, logvar = dynamics.apply(params.dynamics, obs, action)
            sample = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
            return obs + sample[:, :obs_dim], (q.mean(), sample[:, obs_dim].mean())

        keys = jax.random.split(key, config.rollout_steps)
        _, (q, reward) = jax.lax.scan(step, states, keys)
        return q.mean(), reward.mean()

    keys = jax.random.split(rng, config.num_policies)
    return jax.vmap(score)(params.policies, keys)


def random_permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)``, the same numbers (tests/test_inlined_copies.py), in
    about half the time on a CPU. jax orders the indices by random 32-bit keys, ties by index,
    with a sort of (key, index) pairs, which XLA's CPU backend runs through a compiled
    comparator; here each key is replaced by its rank among the keys (a search of the keys
    sorted alone) and packed with its index into one 32-bit number, sorted alone too."""
    if n > 2**16:  # rank and index no longer fit 32 bits together
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax's
    indices = jnp.arange(n, dtype=jnp.uint32)
    order = indices
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        bits = jax.random.bits(subkey, (n,), jnp.uint32)
        rank = jnp.searchsorted(jnp.sort(bits), bits).astype(jnp.uint32)
        order = order[jnp.sort(rank * n + indices) % n]
    return order.astype(jnp.int32)


def gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Generalized advantage estimation, time-major.

    Bootstraps through truncation (time limits) but not through termination. ``next_values``
    are the values of the states reached, before any auto-reset. Returns (advantages, targets).
    """
    terminated = terminated.astype(jnp.float32)
    done = jnp.maximum(terminated, truncated.astype(jnp.float32))
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    decays = gamma * lam * (1.0 - done)

    def backward(next_advantage, delta_and_decay):
        delta, decay = delta_and_decay
        advantage = delta + decay * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(deltas[0]), (deltas, decays), reverse=True, unroll=16
    )
    return advantages, advantages + values


def ppo_actor_loss(log_prob, old_log_prob, advantages, entropy, config: Config):
    """The authors' online actor loss on one minibatch (advantages normalized over the rollout):
    (loss, clip fraction)."""
    eps = config.online_clip_eps
    ratio = jnp.exp(log_prob - old_log_prob)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - eps, 1 + eps) * advantages)
    return -(surrogate + config.ent_coef * entropy).mean(), (jnp.abs(ratio - 1.0) > eps).mean()


def clipped_value_loss(value, old_value, targets, clip_eps):
    """mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)), the authors' critic
    loss (no factor 1/2)."""
    value_clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    return jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()


# --- Data ---


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """A batch for ``update_on_batch``: ``batch_size`` rows drawn uniformly with replacement,
    their indices (``rows``: update_on_batch reads their continuation flags and returns-to-go
    from the train state) and each row's next action (the next row's; unused where the episode
    does not continue), and ``ope_batch_size`` observations that OPE rollouts start from."""
    rows_key, ope_key = jax.random.split(rng)
    size = dataset.rewards.shape[0]
    idx = jax.random.randint(rows_key, (config.batch_size,), 0, size)
    return {
        "observations": dataset.observations[idx],
        "actions": dataset.actions[idx],
        "rewards": dataset.rewards[idx],
        "next_observations": dataset.next_observations[idx],
        "next_actions": dataset.actions[jnp.minimum(idx + 1, size - 1)],
        "rows": idx,
        "ope_observations": dataset.observations[
            jax.random.randint(ope_key, (config.ope_batch_size,), 0, size)
        ],
    }


def returns_to_go(rewards, continues, gamma):
    """G_t = r_t + gamma c_t G_{t+1} over the rows in order (the authors' ``compute_return``):
    restarted after every row whose episode does not continue (c_t = 0)."""

    def backward(next_return, reward_and_continue):
        reward, c = reward_and_continue
        ret = reward + gamma * c * next_return
        return ret, ret

    _, returns = jax.lax.scan(backward, jnp.zeros(()), (rewards, continues), reverse=True)
    return returns


def _check_dataset(dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"Uni-O4 takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "Uni-O4's init reads the dataset on the host (its episode order): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    actions = np.asarray(dataset.actions)
    largest = float(np.abs(actions).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the policies' means lie in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def episode_continues(dataset) -> np.ndarray:
    """(rows,) 1 where the next row continues the row's episode: the row is neither terminal
    nor a timeout and the next row starts where it ended (shuffled rows end where they stand)."""
    ends = (np.asarray(dataset.terminals) > 0) | (np.asarray(dataset.timeouts) > 0)
    observations = np.asarray(dataset.observations)
    follows = np.isclose(observations[1:], np.asarray(dataset.next_observations)[:-1], atol=1e-6)
    continues = ~ends & np.append(follows.all(-1), False)
    return continues.astype(np.float32)


# --- The offline phase ---


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and the rows' returns-to-go.

    ``dataset`` (an rljax Dataset) must be concrete; next actions and returns-to-go follow its
    rows in order (``episode_continues``).
    """
    _check_dataset(dataset)
    policy_key, value_key, critic_key, dynamics_key, rng = jax.random.split(rng, 5)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    policy, value, critic, dynamics = _modules(config, obs_dim, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    if config.normalize_obs:
        obs_mean = dataset.observations.mean(0)
        obs_std = dataset.observations.std(0) + 1e-3
    else:
        obs_mean, obs_std = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    # Independent initialisations: what makes the BC members differ.
    policy_keys = jax.random.split(policy_key, config.num_policies)
    policies = jax.vmap(policy.init, in_axes=(0, None))(policy_keys, dummy_obs)
    params = Params(
        policies=policies,
        selected=jnp.zeros((), jnp.int32),
        value=value.init(value_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        dynamics=dynamics.init(dynamics_key, dummy_obs, dummy_action),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    continues = jnp.asarray(episode_continues(dataset))
    improvement = _improvement_optimizer(config, config.improvement_lr)
    return TrainState(
        params=params,
        old_policies=policies,
        target_critic=params.critic,
        value_opt=optax.adam(config.value_lr).init(params.value),
        critic_opt=optax.adam(config.q_lr).init(params.critic),
        bc_opt=optax.adam(config.bc_lr).init(policies),
        dynamics_opt=optax.adam(config.dynamics_lr).init(params.dynamics),
        improvement_opt=jax.vmap(improvement.init)(policies),
        continues=continues,
        returns=returns_to_go(dataset.rewards.astype(jnp.float32), continues, config.gamma),
        best_scores=jnp.full(config.num_policies, -jnp.inf),
        scores=jnp.zeros(config.num_policies),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def _improvement_optimizer(config: Config, lr) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.improvement_grad_norm), optax.adam(lr))


# Each step reports both phases' metrics (the idle phase's as 0), so that the switch's two
# branches return one structure.
STEP_METRICS = (
    "value_loss", "q_loss", "bc_loss", "dynamics_loss", "v_mean", "q_mean",
    "improvement_loss", "clip_ratio", "improvement_lr", "clip_fraction", "q_advantage_mean",
)  # fmt: skip


def _pretrain_step(config: Config, state: TrainState, batch: dict, rng) -> tuple:
    """V, Q, the BC members and the model, one Adam step each on the batch."""
    params = state.params
    obs_dim = batch["observations"].shape[-1]
    policy, value, critic, dynamics = _modules(config, obs_dim, params.action_dim)
    obs, next_obs = batch["observations"], batch["next_observations"]
    rewards = config.reward_scale * batch["rewards"]

    def value_loss(value_params):
        v = value.apply(value_params, obs)
        return jnp.square(v - config.reward_scale * batch["returns"]).mean(), v.mean()

    (loss_v, v_mean), grads = jax.value_and_grad(value_loss, has_aux=True)(params.value)
    updates, value_opt = optax.adam(config.value_lr).update(grads, state.value_opt)
    value_params = optax.apply_updates(params.value, updates)

    q_next = critic.apply(state.target_critic, next_obs, batch["next_actions"])
    target = rewards + config.gamma * batch["continues"] * q_next

    def q_loss(critic_params):
        q = critic.apply(critic_params, obs, batch["actions"])
        return jnp.square(q - target).mean(), q.mean()

    (loss_q, q_mean), grads = jax.value_and_grad(q_loss, has_aux=True)(params.critic)
    updates, critic_opt = optax.adam(config.q_lr).update(grads, state.critic_opt)
    critic_params = optax.apply_updates(params.critic, updates)

    def bc_loss(policies):
        mean, log_std = jax.vmap(policy.apply, in_axes=(0, None))(policies, obs)
        log_probs = normal_log_prob(mean, log_std, batch["actions"])  # (num_policies, batch)
        return ensemble_bc_loss(log_probs, config.alpha_bc).sum()

    loss_bc, grads = jax.value_and_grad(bc_loss)(params.policies)
    updates, bc_opt = optax.adam(config.bc_lr).update(grads, state.bc_opt)
    policies = optax.apply_updates(params.policies, updates)

    def dynamics_loss(dynamics_params):
        mean, logvar = dynamics.apply(dynamics_params, obs, batch["actions"])
        y = jnp.concatenate([next_obs - obs, rewards[:, None]], -1)
        return (jnp.square(mean - y) * jnp.exp(-logvar) + logvar).mean()

    loss_d, grads = jax.value_and_grad(dynamics_loss)(params.dynamics)
    updates, dynamics_opt = optax.adam(config.dynamics_lr).update(grads, state.dynamics_opt)
    dynamics_params = optax.apply_updates(params.dynamics, updates)

    params = params.replace(
        policies=policies, value=value_params, critic=critic_params, dynamics=dynamics_params
    )
    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        value_opt=value_opt,
        critic_opt=critic_opt,
        bc_opt=bc_opt,
        dynamics_opt=dynamics_opt,
    )
    metrics = {
        "value_loss": loss_v,
        "q_loss": loss_q,
        "bc_loss": loss_bc / config.num_policies,
        "dynamics_loss": loss_d,
        "v_mean": v_mean,
        "q_mean": q_mean,
    }
    return state, metrics


def _improvement_step(config: Config, state: TrainState, batch: dict, rng) -> tuple:
    """Each member's clipped improvement step against its reference policy."""
    params = state.params
    obs = batch["observations"]
    policy, value, critic, _ = _modules(config, obs.shape[-1], params.action_dim)
    k = state.step - config.pretrain_updates
    apply = jax.vmap(policy.apply, in_axes=(0, None))
    old_mean, old_log_std = apply(state.old_policies, obs)  # (num_policies, batch, action_dim)
    actions = old_mean + jnp.exp(old_log_std) * jax.random.normal(rng, old_mean.shape)
    old_log_prob = normal_log_prob(old_mean, old_log_std, actions)
    q = jax.vmap(critic.apply, in_axes=(None, None, 0))(params.critic, obs, actions)
    advantages = q - value.apply(params.value, obs)
    clip = clip_schedule(config, k)

    def member_loss(policy_params, actions, old_log_prob, advantage):
        mean, log_std = policy.apply(policy_params, obs)
        log_prob = normal_log_prob(mean, log_std, actions)
        entropy = normal_entropy(log_std)
        return improvement_loss(log_prob, old_log_prob, advantage, entropy, clip, config)

    grad_fn = jax.vmap(jax.value_and_grad(member_loss, has_aux=True))
    (losses, clip_fractions), grads = grad_fn(params.policies, actions, old_log_prob, advantages)
    lr = config.improvement_lr * jnp.maximum(1.0 - k / config.improvement_updates, 0.0)
    optimizer = _improvement_optimizer(config, lr)
    updates, improvement_opt = jax.vmap(optimizer.update)(
        grads, state.improvement_opt, params.policies
    )
    policies = optax.apply_updates(params.policies, updates)
    state = state.replace(params=params.replace(policies=policies), improvement_opt=improvement_opt)
    metrics = {
        "improvement_loss": losses.mean(),
        "clip_ratio": clip,
        "improvement_lr": lr,
        "clip_fraction": clip_fractions.mean(),
        "q_advantage_mean": advantages.mean(),
    }
    return state, metrics


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


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One offline gradient step of the schedule (pretraining, then improvement), then the OPE
    gate at the end of pretraining, every ``eval_every`` improvement steps and after the last.

    ``batch`` (raw observations) is ``sample_batch``'s; it is normalized here.
    """
    params = state.params
    batch = batch | {
        "continues": state.continues[batch["rows"]],
        "returns": state.returns[batch["rows"]],
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "ope_observations": _normalize(params, batch["ope_observations"]),
    }
    rng, step_key, ope_key = jax.random.split(state.rng, 3)
    pretraining = state.step < config.pretrain_updates

    def with_all_metrics(step):
        def run(state):
            state, metrics = step(config, state, batch, step_key)
            return state, {k: metrics.get(k, jnp.zeros(())) for k in STEP_METRICS}

        return run

    def each_its_own(state):  # under vmap members in different phases: each takes its own
        pretrained = with_all_metrics(_pretrain_step)(state)
        improved = with_all_metrics(_improvement_step)(state)
        return jax.tree.map(lambda a, b: jnp.where(pretraining, a, b), pretrained, improved)

    # Branch 0 pretrains, 1 improves, 2 both (only when vmapped members disagree): conds on
    # unbatched predicates, so a vmapped batch does not run both phases every step.
    phase = jnp.where(_any_member(~pretraining), jnp.where(_any_member(pretraining), 2, 1), 0)
    branches = [with_all_metrics(_pretrain_step), with_all_metrics(_improvement_step)]
    state, metrics = jax.lax.switch(phase, [*branches, each_its_own], state)

    k = state.step - config.pretrain_updates
    gate = (
        (state.step == config.pretrain_updates - 1)
        | (~pretraining & ((k + 1) % config.eval_every == 0))
        | (state.step == config.total_updates - 1)
    )

    def evaluate(state):
        scores, model_reward = ope_scores(config, state.params, batch["ope_observations"], ope_key)
        old_policies, best, replaced = replace_references(
            scores, state.best_scores, state.params.policies, state.old_policies
        )
        params = state.params.replace(selected=jnp.argmax(scores).astype(jnp.int32))
        state = state.replace(
            params=params, old_policies=old_policies, best_scores=best, scores=scores
        )
        return state, model_reward.mean(), replaced.sum().astype(jnp.float32)

    def skip(state):
        return state, jnp.zeros(()), jnp.zeros(())

    def gated(state):  # under vmap another member's gate may bring a member here: it skips
        return jax.tree.map(lambda a, b: jnp.where(gate, a, b), evaluate(state), skip(state))

    state, model_reward, replaced = jax.lax.cond(_any_member(gate), gated, skip, state)
    state = state.replace(rng=rng, step=state.step + 1)
    metrics |= {
        "phase": (~pretraining).astype(jnp.float32),
        "ope_score": state.scores.max(),
        # -inf until the end of pretraining: report 0 so that the metric stays finite.
        "ope_best_score": jnp.where(jnp.isfinite(state.best_scores), state.best_scores, 0.0).max(),
        "ope_model_reward": model_reward,
        "replaced": replaced,
        "selected": state.params.selected.astype(jnp.float32),
    }
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One offline gradient step on rows sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    batch = sample_batch(config, dataset, batch_key)
    return update_on_batch(config, state.replace(rng=rng), batch)


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) offline gradient steps.

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """The selected member's mean when deterministic, else a sample; in [-1, 1]."""
    policy = Policy(params.action_dim, tuple(config.policy_hidden_sizes))
    mean, log_std = policy.apply(_member(params.policies, params.selected), _normalize(params, obs))
    if deterministic:
        return mean
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape), -1.0, 1.0)


# --- The online phase ---

# --- Online fine-tuning: the shared pieces this on-policy phase uses (of the block that every
# fine-tuning agent inlines, identical to iql.py's; the replay and collect are off-policy's) ---

ENV_AXIS = "env"  # the vmapped envs' axis name (rljax's env wrappers reduce over it)


def reset_envs(env, env_params, num_envs: int, rng):
    """(observations, env states) of ``num_envs`` freshly reset envs."""
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    return reset(jax.random.split(rng, num_envs), env_params)


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.improvement_updates >= config.total_updates:
        raise ValueError(
            f"improvement_updates={config.improvement_updates} must be below total_updates="
            f"{config.total_updates}: the first steps pretrain V, Q, the BC members and the model"
        )
    if config.online_steps % config.steps_per_update:
        raise ValueError(
            f"online_steps={config.online_steps} must be a multiple of num_envs * num_steps = "
            f"{config.steps_per_update} (the env steps of one online update)"
        )
    if config.steps_per_update % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} must divide num_envs * num_steps = "
            f"{config.steps_per_update}"
        )
    if float(config.offline_fraction) != 0.0:
        raise ValueError(
            f"offline_fraction={config.offline_fraction} must be 0: Uni-O4's online phase is "
            "on-policy PPO, which keeps no dataset rows (range [0, 0] for this agent)"
        )


def _online_optimizer(config: Config, lr) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


def begin_online(config: Config, dataset, env, env_params, state: TrainState) -> OnlineState:
    """The online state: the offline params as they are (the selected member, V as the critic),
    fresh Adams, freshly reset envs."""
    params = state.params
    rng, env_key = jax.random.split(state.rng)
    obs, env_state = reset_envs(env, env_params, config.num_envs, env_key)
    actor = _member(params.policies, params.selected)
    return OnlineState(
        params=params,
        actor_opt=_online_optimizer(config, config.online_actor_lr).init(actor),
        critic_opt=_online_optimizer(config, config.online_critic_lr).init(params.value),
        env_state=env_state,
        obs=obs,
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
    )


def _rollout(config: Config, env, env_params, state: OnlineState, rng):
    """``num_steps`` steps of the envs under the selected member (samples clipped to [-1, 1]),
    time-major; keeps truncation apart from termination, as GAE needs."""
    params = state.params
    policy = Policy(params.action_dim, tuple(config.policy_hidden_sizes))
    actor = _member(params.policies, params.selected)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    def one_step(carry, key):
        env_state, obs = carry
        noise_key, step_key = jax.random.split(key)
        mean, log_std = policy.apply(actor, _normalize(params, obs))
        action = jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(noise_key, mean.shape), -1, 1)
        next_obs, env_state, reward, terminated, truncated, info = step(
            jax.random.split(step_key, config.num_envs), env_state, action, env_params
        )
        row = {
            "observations": obs,
            "actions": action,
            "rewards": reward.astype(jnp.float32),
            "terminated": terminated,
            "truncated": truncated,
            "next_observations": info["final_observation"],
            "finished": info["returned_episode"],
            "episode_returns": info["returned_episode_returns"],
            "episode_lengths": info["returned_episode_lengths"],
        }
        return (env_state, next_obs), row

    keys = jax.random.split(rng, config.num_steps)
    (env_state, obs), rows = jax.lax.scan(one_step, (state.env_state, state.obs), keys)
    return rows, env_state, obs


def update_online(config: Config, dataset, env, env_params, state: OnlineState):
    """One online update: a rollout of num_envs x num_steps, then update_epochs of minibatch
    PPO on it (actor step, then critic step, per minibatch)."""
    params = state.params
    policy = Policy(params.action_dim, tuple(config.policy_hidden_sizes))
    value = Value(tuple(config.value_hidden_sizes))
    rng, rollout_key, epochs_key = jax.random.split(state.rng, 3)
    rows, env_state, obs = _rollout(config, env, env_params, state, rollout_key)

    actor = _member(params.policies, params.selected)
    observations = _normalize(params, rows["observations"])
    mean, log_std = policy.apply(actor, observations)
    old_log_prob = normal_log_prob(mean, log_std, rows["actions"])
    values = value.apply(params.value, observations)
    next_values = value.apply(params.value, _normalize(params, rows["next_observations"]))
    advantages, targets = gae(
        config.reward_scale * rows["rewards"], values, next_values, rows["terminated"],
        rows["truncated"], config.gamma, config.gae_lambda,
    )  # fmt: skip
    advantages = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-5)

    fraction = 1.0
    if config.anneal_online_lr:  # to 0 at the end of the online phase, and 0 past it
        fraction = jnp.maximum(1.0 - state.update_step / max(config.num_online_updates, 1), 0.0)
    actor_lr, critic_lr = config.online_actor_lr * fraction, config.online_critic_lr * fraction
    actor_optimizer = _online_optimizer(config, actor_lr)
    critic_optimizer = _online_optimizer(config, critic_lr)

    def minibatch_step(carry, minibatch):
        actor, value_params, actor_opt, critic_opt = carry
        obs, action, old_lp, adv, old_value, target = minibatch

        def actor_loss(actor):
            mean, log_std = policy.apply(actor, obs)
            log_prob = normal_log_prob(mean, log_std, action)
            entropy = normal_entropy(log_std)
            loss, clip_fraction = ppo_actor_loss(log_prob, old_lp, adv, entropy, config)
            parts = {
                "entropy": entropy.mean(),
                "approx_kl": (jnp.exp(log_prob - old_lp) - 1 - (log_prob - old_lp)).mean(),
                "clip_fraction": clip_fraction,
            }
            return loss, parts

        def critic_loss(value_params):
            v = value.apply(value_params, obs)
            return clipped_value_loss(v, old_value, target, config.online_clip_eps)

        (loss_pi, parts), grads = jax.value_and_grad(actor_loss, has_aux=True)(actor)
        updates, actor_opt = actor_optimizer.update(grads, actor_opt, actor)
        actor = optax.apply_updates(actor, updates)
        loss_v, grads = jax.value_and_grad(critic_loss)(value_params)
        updates, critic_opt = critic_optimizer.update(grads, critic_opt, value_params)
        value_params = optax.apply_updates(value_params, updates)
        metrics = {"policy_loss": loss_pi, "value_loss": loss_v, **parts}
        return (actor, value_params, actor_opt, critic_opt), metrics

    batch = (observations, rows["actions"], old_log_prob, advantages, values, targets)
    batch = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), batch)

    def epoch(carry, key):
        permutation = random_permutation(key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), batch
        )
        return jax.lax.scan(minibatch_step, carry, minibatches)

    carry = (actor, params.value, state.actor_opt, state.critic_opt)
    epoch_keys = jax.random.split(epochs_key, config.update_epochs)
    (actor, value_params, actor_opt, critic_opt), losses = jax.lax.scan(epoch, carry, epoch_keys)

    policies = jax.tree.map(
        lambda all_, one: all_.at[params.selected].set(one), params.policies, actor
    )
    params = params.replace(policies=policies, value=value_params)
    state = OnlineState(params, actor_opt, critic_opt, env_state, obs, rng, state.update_step + 1)
    finished = rows["finished"]
    count = finished.sum()

    def mean_of_finished(x):
        return jnp.where(count > 0, (x * finished).sum() / jnp.maximum(count, 1), jnp.nan)

    metrics = {
        **jax.tree.map(jnp.mean, losses),
        "actor_lr": actor_lr,
        "critic_lr": critic_lr,
        "episode_train_return": mean_of_finished(rows["episode_returns"]),
        "episode_train_length": mean_of_finished(rows["episode_lengths"]),
    }
    return state, metrics


def fine_tune(config: Config, dataset, env, env_params, state: TrainState):
    """begin_online, then num_online_updates online updates."""
    state = begin_online(config, dataset, env, env_params, state)
    return jax.lax.scan(
        lambda s, _: update_online(config, dataset, env, env_params, s),
        state,
        None,
        config.num_online_updates,
    )


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
    small = (64, 64)
    config = Config(
        total_updates=6_000, improvement_updates=1_000, batch_size=256, reward_scale=0.1,
        policy_hidden_sizes=small, value_hidden_sizes=small, q_hidden_sizes=small,
        dynamics_hidden_sizes=small, rollout_steps=20, ope_batch_size=128, value_lr=1e-3,
        q_lr=1e-3, bc_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"Uni-O4 (offline phase) on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 6).astype(int):
        shown = ("phase", "value_loss", "q_loss", "bc_loss", "improvement_loss", "ope_score")
        print(
            f"  update {i + 1:>6d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in shown)
        )
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy (member "
          f"{int(state.params.selected)}) return {float(eval_rewards.sum(1).mean()):.1f} over 10 "
          "episodes; the online phase (fine_tune) needs an env with rljax's wrappers")  # fmt: skip
