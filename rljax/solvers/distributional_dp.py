"""Exact tabular distributional dynamic programming over stock-augmented states.

Ávila Pires, Rowland, Borsa, Guo, Khetarpal, Barreto, Abel, Munos, Dabney, "Optimizing Return
Distributions with Distributional Dynamic Programming", JMLR 2025 (arXiv 2501.13028).

Stock augmentation: the agent sees (s, c), with a chosen initial stock c_0 and

    C_{t+1} = (C_t + R_t) / gamma    so that    C_t + G_t = gamma^{-t} (C_0 + G_0),
    G_t = sum_{k >= t} gamma^{k-t} R_k,

and the goal is to maximize a functional F of Law(C_0 + G_0). Distributional DP keeps the
law eta(t, s, c, a) of the return from (s, c) after action a, and acts greedily on the stock:

    eta(t, s, c, a) = Law(R + gamma G'),   (S', C') = (S', (c + R) / gamma)
    pi(t, s, c)     = argmax_a F(Law(c + eta(t, s, c, a)))

The paper's condition for distributional DP to optimize F is indifference to mixtures (and,
for the stationary infinite-horizon problem, to gamma-scaling); expected utilities
F = E f(C_0 + G_0) are the main class, and the objectives here are all of that form:

    expectation      f(x) = x                       (agrees with classic value iteration)
    threshold(tau)   f(x) = 1{x >= tau}             (probability of reaching tau)
    homeostatic      f(x) = -|x - target|^power     (keep the final stock near a target)
    CVaR(alpha)      CVaR_alpha(G) = max_b  b - E[(b - G)^+] / alpha       (Rockafellar-Uryasev)
                                  = max_b  b + E[min(c_0 + G, 0)] / alpha,  c_0 = -b

CVaR itself is not indifferent to mixtures; the reduction solves the expected-utility problem
f(x) = min(x, 0) from c_0 = -b for every b and keeps the best. The inner max over b for a fixed
law is attained at its alpha-quantile, an atom, so the reachable return values are enough.

Exactness: rewards are integers times ``reward_step`` and the horizon T is finite, so the
reachable stocks form a finite set that we enumerate. We store the stock in time-0 units,
x_t = gamma^t C_t - c_0 = sum_{k<t} gamma^k R_k (the discounted reward so far), which given t
and c_0 is the paper's C_t; its grid does not depend on c_0, so CVaR's search over b is a
loop over utility vectors on one grid. A law is a categorical over that grid: eta_t(s, x) is
the law of x_T = x + gamma^t G_t, i.e. of c + Z(s, c, a) in time-0 units, so the greedy step is
argmax_a E f(c_0 + x_T) and needs no gamma-scaling condition (t is part of the state).
With gamma = 1 the grid is within the integers from T min(r, 0) to T max(r, 0); with gamma < 1
it holds up to K^T values for K distinct rewards (``max_stocks`` refuses larger ones); one
backup holds S N (A + K) N floats. The
infinite-horizon discounted problem is the limit T -> inf: for L-Lipschitz f, truncating at T
changes every policy's objective, and the optimum, by at most L gamma^T max|r| / (1 - gamma).
Episodes that end before T: send them to an absorbing state with zero reward.

Backups are exact (no projection): value iteration is backward induction over t (a reverse
``lax.scan``); policy iteration evaluates the current policy and improves it everywhere at
once, keeping an action unless another is strictly better, until no action changes (at most
T + 1 rounds: the round k makes times >= T - k optimal). Policies are deterministic, indexed
by (t, s, n) with x_t = support[n]. ``solve`` and ``evaluate`` build the grid with NumPy (it
depends on concrete rewards, gamma and T); ``value_iteration``, ``policy_iteration`` and
``policy_evaluation`` are pure, jittable, and vmappable over MDPs that share the grid.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class MDP(NamedTuple):
    """A finite MDP with S states, A actions and integer rewards.

    P: (S, A, S) transition probabilities P[s, a, s'].
    rewards: (S, A, S) or (S, A) integers; the reward of (s, a, s') is reward_step * rewards.
    initial: (S,) initial state distribution.
    horizon: T, the number of decisions. gamma: in (0, 1]; G = sum_{t<T} gamma^t R_t.
    """

    P: Any
    rewards: Any
    initial: Any
    horizon: int
    gamma: float = 1.0
    reward_step: float = 1.0


class StockGrid(NamedTuple):
    """The reachable stocks x_t = sum_{k<t} gamma^k R_k of an MDP, for t = 0..T."""

    support: jax.Array  # (N,) sorted values of x, in reward units (times reward_step)
    next_index: jax.Array  # (T, N, K) int: index of support[n] + gamma^t reward k
    reward_index: jax.Array  # (S, A, S) int in [0, K): which reward (s, a, s') pays
    reachable: jax.Array  # (T + 1, N) bool: x = support[n] is reachable at time t
    origin: jax.Array  # () int: index of x = 0


class ReturnDistribution(NamedTuple):
    support: jax.Array  # (N,) return values
    probs: jax.Array  # (N,) their probabilities


class Solution(NamedTuple):
    value: jax.Array  # () the optimal objective from the initial distribution
    policy: jax.Array  # (T, S, N) int: action at time t in state s with x_t = support[n]
    distribution: ReturnDistribution  # the law of G_0 under that policy
    initial_stock: jax.Array  # () c_0 (for CVaR, -b at the best b)
    grid: StockGrid


class CVaR(NamedTuple):
    """Maximize the conditional value at risk of the return at level alpha in (0, 1]."""

    alpha: float


def expectation(x):
    """f(x) = x: the mean return, as in classic RL."""
    return x


def threshold(tau: float) -> Callable:
    """f(x) = 1{x >= tau}: E f(c_0 + G) is the probability of reaching tau (float ties count)."""
    return lambda x: (x >= tau - 1e-6 * (1.0 + abs(tau))).astype(jnp.float32)


def homeostatic(target: float, power: float = 1.0) -> Callable:
    """f(x) = -|x - target|^power: penalize the final stock's distance from a target."""
    return lambda x: -(jnp.abs(x - target) ** power)


# --- The stock grid ---


def make_grid(mdp: MDP, max_stocks: int = 4096) -> StockGrid:
    """Enumerate the reachable stocks; raise ValueError if there are more than max_stocks."""
    rewards = _check(mdp)[2]
    reward_values, reward_index = np.unique(rewards, return_inverse=True)
    horizon, gamma = mdp.horizon, float(mdp.gamma)
    # Keys in integer reward units, rounded so that equal sums of powers of gamma coincide.
    levels = [np.zeros(1)]
    for t in range(horizon):
        level = np.unique(np.round(levels[-1][:, None] + gamma**t * reward_values, 9))
        if level.size > max_stocks:
            raise ValueError(
                f"more than max_stocks={max_stocks} reachable stocks at t={t + 1} "
                f"(horizon={horizon}, gamma={gamma}, {reward_values.size} distinct rewards); "
                "shorten the horizon, use gamma=1 or fewer reward values"
            )
        levels.append(level)
    keys = np.unique(np.concatenate(levels))
    if keys.size > max_stocks:
        raise ValueError(f"more than max_stocks={max_stocks} reachable stocks (horizon={horizon})")
    discounts = gamma ** np.arange(horizon)[:, None, None]
    targets = np.round(keys[None, :, None] + discounts * reward_values, 9)
    # Unreachable (t, x) may step off the grid; their laws are never used.
    next_index = np.minimum(np.searchsorted(keys, targets), keys.size - 1)
    return StockGrid(
        support=jnp.asarray(keys * float(mdp.reward_step), jnp.float32),
        next_index=jnp.asarray(next_index, jnp.int32),
        reward_index=jnp.asarray(reward_index.reshape(rewards.shape), jnp.int32),
        reachable=jnp.asarray(np.stack([np.isin(keys, level) for level in levels])),
        origin=jnp.asarray(np.searchsorted(keys, 0.0), jnp.int32),
    )


def _check(mdp: MDP):
    """Validate an MDP; return (P, initial, integer rewards of shape (S, A, S)) as NumPy."""
    P, initial = np.asarray(mdp.P, np.float64), np.asarray(mdp.initial, np.float64)
    if P.ndim != 3 or P.shape[0] != P.shape[2]:
        raise ValueError(f"MDP.P must have shape (S, A, S), got {P.shape}")
    if (P < 0).any() or not np.allclose(P.sum(-1), 1.0, atol=1e-5):
        raise ValueError("MDP.P[s, a] must be probability vectors (nonnegative, summing to 1)")
    if initial.shape != P.shape[:1] or (initial < 0).any() or abs(initial.sum() - 1) > 1e-5:
        raise ValueError(f"MDP.initial must be a probability vector of shape {P.shape[:1]}")
    rewards = np.asarray(mdp.rewards)
    if rewards.shape == P.shape[:2]:
        rewards = np.broadcast_to(rewards[..., None], P.shape)
    if rewards.shape != P.shape:
        raise ValueError(f"MDP.rewards must have shape {P.shape} or {P.shape[:2]}")
    if not np.array_equal(rewards, np.round(rewards)):
        raise ValueError("MDP.rewards must be integers (the reward is reward_step * rewards)")
    if not (isinstance(mdp.horizon, int | np.integer) and mdp.horizon >= 1):
        raise ValueError(f"MDP.horizon must be an int >= 1, got {mdp.horizon!r}")
    if not 0.0 < float(mdp.gamma) <= 1.0:
        raise ValueError(f"MDP.gamma must be in (0, 1], got {mdp.gamma}")
    if not float(mdp.reward_step) > 0.0:
        raise ValueError(f"MDP.reward_step must be > 0, got {mdp.reward_step}")
    return P, initial, rewards.astype(np.int64)


# --- Pure backups ---


def _action_laws(grid: StockGrid, P_k, eta_next, t):
    """Law of x_T after each action at time t in (s, x): (S, N, A, N).

    eta_next: (S, N, N), the law of x_T from (s', x') at time t + 1; P_k: (S, A, S, K), the
    transition probabilities split by the reward paid."""
    shifted = eta_next[:, grid.next_index[t], :]  # (S', N, K, N): from s' with x' = x + g^t r_k
    return jnp.einsum("sapk,pnkz->snaz", P_k, shifted)


def _split_by_reward(grid: StockGrid, P):
    num_rewards = grid.next_index.shape[-1]
    return P[..., None] * jax.nn.one_hot(grid.reward_index, num_rewards, dtype=P.dtype)


def _terminal_laws(grid: StockGrid, num_states: int):
    n = grid.support.shape[0]
    return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (num_states, n, n))


def policy_evaluation(grid: StockGrid, P, policy) -> jax.Array:
    """eta_0: (S, N, N), the law of x_T from each (s, x) at t = 0 under a policy given as
    action probabilities pi(a | t, s, x) of shape (T, S, N, A)."""
    P = jnp.asarray(P, jnp.float32)
    P_k = _split_by_reward(grid, P)

    def backup(eta_next, xs):
        t, pi_t = xs
        return jnp.einsum("snaz,sna->snz", _action_laws(grid, P_k, eta_next, t), pi_t), None

    horizon = grid.next_index.shape[0]
    steps = (jnp.arange(horizon), policy)
    eta_0, _ = jax.lax.scan(backup, _terminal_laws(grid, P.shape[0]), steps, reverse=True)
    return eta_0


def value_iteration(grid: StockGrid, P, utility) -> tuple[jax.Array, jax.Array]:
    """Distributional value iteration (backward induction) for E f(c_0 + x_T).

    utility: (N,) f(c_0 + support). Returns (policy (T, S, N) int, eta_0 (S, N, N))."""
    P = jnp.asarray(P, jnp.float32)
    P_k = _split_by_reward(grid, P)

    def backup(eta_next, t):
        laws = _action_laws(grid, P_k, eta_next, t)  # (S, N, A, N)
        action = jnp.argmax(laws @ utility, axis=-1)  # greedy on F(c + eta(s, c, a))
        eta = jnp.take_along_axis(laws, action[..., None, None], axis=2)[:, :, 0]
        return eta, action

    horizon = grid.next_index.shape[0]
    eta_T = _terminal_laws(grid, P.shape[0])
    eta_0, policy = jax.lax.scan(backup, eta_T, jnp.arange(horizon), reverse=True)
    return policy, eta_0


def policy_iteration(grid: StockGrid, P, utility) -> tuple[jax.Array, jax.Array]:
    """Distributional policy iteration for E f(c_0 + x_T), from the policy 'always action 0'.

    Returns (policy (T, S, N) int, eta_0 (S, N, N)), like value_iteration."""
    P = jnp.asarray(P, jnp.float32)
    P_k = _split_by_reward(grid, P)
    horizon, num_actions = grid.next_index.shape[0], P.shape[1]
    eta_T = _terminal_laws(grid, P.shape[0])
    # Float rounding must not count as improvement, or ties could cycle.
    tol = 1e-6 * jnp.maximum(1.0, jnp.abs(utility).max())

    def improve(policy):
        def backup(eta_next, xs):
            t, action = xs
            laws = _action_laws(grid, P_k, eta_next, t)
            q = laws @ utility  # (S, N, A), from the current policy's own laws
            best = jnp.argmax(q, axis=-1)
            q_kept = jnp.take_along_axis(q, action[..., None], -1)[..., 0]
            better = q.max(-1) > q_kept + tol
            eta = jnp.take_along_axis(laws, action[..., None, None], axis=2)[:, :, 0]
            return eta, jnp.where(better, best, action)

        _, improved = jax.lax.scan(backup, eta_T, (jnp.arange(horizon), policy), reverse=True)
        return improved

    def body(carry):
        policy, _, rounds = carry
        improved = improve(policy)
        return improved, jnp.any(improved != policy), rounds + 1

    start = jnp.zeros((horizon, P.shape[0], grid.support.shape[0]), jnp.int32)
    policy, _, _ = jax.lax.while_loop(
        lambda c: c[1] & (c[2] <= horizon), body, (start, jnp.array(True), 0)
    )
    pi = jax.nn.one_hot(policy, num_actions, dtype=jnp.float32)
    return policy, policy_evaluation(grid, P, pi)


# --- Solve and evaluate ---


@jax.jit(static_argnames="method")
def _solve_utility(grid, P, initial, utility, method):
    """(value, law of x_T from the initial distribution, policy) for utility vectors (N,)."""
    solver = value_iteration if method == "value_iteration" else policy_iteration
    policy, eta_0 = solver(grid, P, utility)
    law = initial @ eta_0[:, grid.origin]
    return law @ utility, law, policy


@jax.jit(static_argnames="method")
def _cvar_tails(grid, P, initial, candidates, method):
    """max_pi E[min(G - b, 0)] for each candidate b: utility min(x, 0) from c_0 = -b."""
    utilities = jnp.minimum(grid.support[None, :] - candidates[:, None], 0.0)
    return jax.lax.map(lambda u: _solve_utility(grid, P, initial, u, method)[0], utilities)


def solve(
    mdp: MDP,
    objective: Callable | CVaR,
    *,
    method: str = "value_iteration",
    initial_stock: float = 0.0,
    max_stocks: int = 4096,
) -> Solution:
    """Optimize an objective of the return's law over policies on (t, s, stock).

    objective: a utility f (jnp -> jnp, elementwise) to maximize E f(initial_stock + G), e.g.
    ``expectation``, ``threshold(tau)``, ``homeostatic(target)``; or ``CVaR(alpha)``, which
    searches the initial stock itself (``initial_stock`` is then ignored).
    method: "value_iteration" or "policy_iteration"."""
    if method not in ("value_iteration", "policy_iteration"):
        raise ValueError(f"method must be 'value_iteration' or 'policy_iteration', got {method!r}")
    P, initial, _ = _check(mdp)
    grid = make_grid(mdp, max_stocks)
    P, initial = jnp.asarray(P, jnp.float32), jnp.asarray(initial, jnp.float32)

    def run(utility):
        return _solve_utility(grid, P, initial, utility.astype(jnp.float32), method)

    if isinstance(objective, CVaR):
        alpha = float(objective.alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"CVaR.alpha must be in (0, 1], got {alpha}")
        candidates = grid.support[grid.reachable[-1]]  # every b that can be a quantile of G
        tails = _cvar_tails(grid, P, initial, candidates, method)
        best = jnp.argmax(candidates + tails / alpha)
        initial_stock = -candidates[best]
        _, law, policy = run(jnp.minimum(grid.support - candidates[best], 0.0))
        value = candidates[best] + tails[best] / alpha
    else:
        value, law, policy = run(jnp.asarray(objective(initial_stock + grid.support)))
    distribution = ReturnDistribution(grid.support, law)
    return Solution(value, policy, distribution, jnp.asarray(initial_stock, jnp.float32), grid)


def _policy_probs(policy, horizon: int, num_states: int, num_actions: int, num_stocks: int):
    """Any accepted policy layout as action probabilities of shape (T, S, N, A)."""
    policy = jnp.asarray(policy)
    full = (horizon, num_states, num_stocks)
    integer = jnp.issubdtype(policy.dtype, jnp.integer)
    ndim = policy.ndim - (0 if integer else 1)  # axes among (t, s, n)
    layouts = {
        1: ((num_states,), (None, slice(None), None)),
        2: (full[:2], (slice(None), slice(None), None)),
        3: (full, ...),
    }
    if ndim in layouts and policy.shape == layouts[ndim][0] + (() if integer else (num_actions,)):
        expanded = policy[layouts[ndim][1]]
        if integer:
            return jax.nn.one_hot(jnp.broadcast_to(expanded, full), num_actions)
        return jnp.broadcast_to(expanded, (*full, num_actions)).astype(jnp.float32)
    raise ValueError(
        f"policy must be integer actions of shape (S,), (T, S) or (T, S, N) = {full}, or action "
        f"probabilities of shape (S, A), (T, S, A) or (T, S, N, A); got {policy.dtype} "
        f"{policy.shape}"
    )


def evaluate(mdp: MDP, policy, *, max_stocks: int = 4096) -> ReturnDistribution:
    """The exact law of the return G_0 of a policy from the initial distribution.

    policy: integer actions indexed by (s,), (t, s) or (t, s, n) with x_t = support[n] (the
    layout ``solve`` returns), or float action probabilities with a trailing A axis."""
    P, initial, _ = _check(mdp)
    grid = make_grid(mdp, max_stocks)
    pi = _policy_probs(policy, mdp.horizon, *P.shape[:2], grid.support.shape[0])
    eta_0 = jax.jit(policy_evaluation)(grid, P, pi)
    return ReturnDistribution(
        grid.support, jnp.asarray(initial, jnp.float32) @ eta_0[:, grid.origin]
    )


def occupancy(mdp: MDP, policy, *, max_stocks: int = 4096) -> jax.Array:
    """Pr(S_t = s, x_t = support[n]) under a policy, shape (T + 1, S, N); forward in time."""
    P, initial, _ = _check(mdp)
    grid = make_grid(mdp, max_stocks)
    num_stocks = grid.support.shape[0]
    pi = _policy_probs(policy, mdp.horizon, *P.shape[:2], num_stocks)
    P_k = _split_by_reward(grid, jnp.asarray(P, jnp.float32))

    def forward(d, xs):
        t, pi_t = xs
        flow = jnp.einsum("sn,sna,sapk->pnk", d, pi_t, P_k)  # mass moving to s' paying r_k
        moved = jnp.zeros_like(d).at[:, grid.next_index[t]].add(flow)
        return moved, moved

    d_0 = jnp.zeros((P.shape[0], num_stocks)).at[:, grid.origin].set(initial)
    _, later = jax.lax.scan(forward, d_0, (jnp.arange(mdp.horizon), pi))
    return jnp.concatenate([d_0[None], later])


def conditional_value_at_risk(distribution: ReturnDistribution, alpha: float) -> jax.Array:
    """CVaR_alpha of a categorical law: the mean of its lowest alpha fraction of mass.

    probs may carry leading batch axes over one support."""
    order = jnp.argsort(distribution.support)
    values, probs = distribution.support[order], distribution.probs[..., order]
    mass_below = jnp.cumsum(probs, axis=-1) - probs
    taken = jnp.clip(alpha - mass_below, 0.0, probs)
    return (taken * values).sum(-1) / alpha


if __name__ == "__main__":
    # Safe vs risky: in every state, "safe" (0) pays 1 and "risky" (1) pays 4 or -1 with
    # probability 1/2 each; the next state records the last outcome. Two decisions.
    P = np.zeros((3, 2, 3))
    P[:, 0, 0] = 1.0
    P[:, 1, 1] = P[:, 1, 2] = 0.5
    rewards = np.tile(np.array([[1, 1, 1], [0, 4, -1]]), (3, 1, 1))
    mdp = MDP(P, rewards, initial=np.array([1.0, 0.0, 0.0]), horizon=2)
    alpha = 0.25
    for name, objective in [
        ("mean", expectation),
        (f"CVaR_{alpha}", CVaR(alpha)),
        ("P(G >= 5)", threshold(5.0)),
        ("-|G - 6|", homeostatic(6.0)),
    ]:
        solution = solve(mdp, objective)
        dist = solution.distribution
        visited = np.asarray(occupancy(mdp, solution.policy)[:-1] > 0)
        support = np.asarray(dist.support)
        print(f"{name}-optimal: value {float(solution.value):.3f}")
        for t, s, n in zip(*np.nonzero(visited), strict=True):
            action = ("safe", "risky")[int(solution.policy[t, s, n])]
            print(f"  t={t} s={s} stock x={support[n]:+.0f}: {action}")
        law = {
            float(x): round(float(p), 3) for x, p in zip(support, dist.probs, strict=True) if p > 0
        }
        mean = float(dist.probs @ dist.support)
        cvar = float(conditional_value_at_risk(dist, alpha))
        print(f"  return law {law}  mean {mean:.3f}  CVaR_{alpha} {cvar:.3f}")
