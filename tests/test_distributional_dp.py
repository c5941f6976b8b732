"""Distributional DP over stock-augmented states: hand-computed safe-vs-risky values, classic
value iteration, Monte Carlo, and every deterministic Markov policy on small random MDPs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.solvers import distributional_dp as ddp

SAFE, RISKY = 0, 1
METHODS = ("value_iteration", "policy_iteration")


def safe_vs_risky(horizon=2):
    """In every state, safe pays 1 (to state 0), risky pays 4 (to state 1) or -1 (to state 2)
    with probability 1/2 each. The state records the last outcome."""
    P = np.zeros((3, 2, 3))
    P[:, SAFE, 0] = 1.0
    P[:, RISKY, 1] = P[:, RISKY, 2] = 0.5
    rewards = np.tile(np.array([[1, 1, 1], [0, 4, -1]]), (3, 1, 1))
    return ddp.MDP(P, rewards, np.array([1.0, 0.0, 0.0]), horizon)


def pass_through():
    """Safe vs risky from state 0 only, and outcomes pass through states 1 (safe or win) and 2
    (loss) back to 0 with reward 0, so at t = 2 the state is 0 whatever happened: only the
    stock remembers. Four steps, two decisions (t = 0 and t = 2)."""
    P = np.zeros((3, 2, 3))
    P[0, SAFE, 1] = 1.0
    P[0, RISKY, 1] = P[0, RISKY, 2] = 0.5
    P[1:, :, 0] = 1.0
    rewards = np.zeros((3, 2, 3), int)
    rewards[0, SAFE, 1], rewards[0, RISKY, 1], rewards[0, RISKY, 2] = 1, 4, -1
    return ddp.MDP(P, rewards, np.array([1.0, 0.0, 0.0]), horizon=4)


def random_mdp(rng, S, A, T, gamma=1.0, rewards=(-2, -1, 0, 1, 2), reward_step=1.0, sa=False):
    P = rng.dirichlet(np.ones(S), size=(S, A))
    shape = (S, A) if sa else (S, A, S)
    return ddp.MDP(
        P, rng.choice(rewards, size=shape), rng.dirichlet(np.ones(S)), T, gamma, reward_step
    )


def law_dict(distribution):
    return {
        float(x): float(p)
        for x, p in zip(distribution.support, distribution.probs, strict=True)
        if p > 1e-7
    }


def assert_law(distribution, expected):
    got = law_dict(distribution)
    assert got.keys() == expected.keys(), got
    np.testing.assert_allclose([got[x] for x in expected], list(expected.values()), atol=1e-6)


def visited_actions(mdp, solution):
    """{(t, s, x): action} over the (t, s, stock) the policy visits before the horizon."""
    visited = np.asarray(ddp.occupancy(mdp, solution.policy)[:-1] > 1e-7)
    support = np.asarray(solution.grid.support)
    return {
        (int(t), int(s), float(support[n])): int(solution.policy[t, s, n])
        for t, s, n in zip(*np.nonzero(visited), strict=True)
    }


def objective_value(objective, distribution, initial_stock=0.0):
    if isinstance(objective, ddp.CVaR):
        return float(ddp.conditional_value_at_risk(distribution, objective.alpha))
    utility = objective(initial_stock + distribution.support)
    return float(distribution.probs @ utility)


def markov_laws(mdp):
    """The return law of each deterministic Markov policy a(t, s), all |A|^(T S) of them:
    (support (N,), probs (|A|^(T S), N))."""
    S, A, _ = np.shape(mdp.P)
    grid = ddp.make_grid(mdp)
    policies = np.array(list(itertools.product(range(A), repeat=mdp.horizon * S)))
    shape = (len(policies), mdp.horizon, S, grid.support.shape[0])
    pi = jax.nn.one_hot(jnp.broadcast_to(policies.reshape(shape[:3])[..., None], shape), A)
    eta_0 = jax.vmap(ddp.policy_evaluation, in_axes=(None, None, 0))(grid, mdp.P, pi)
    return grid.support, jnp.asarray(mdp.initial, jnp.float32) @ eta_0[:, :, grid.origin]


def objective_values(objective, support, laws):
    """objective_value for a batch of laws (M, N) on one support."""
    if isinstance(objective, ddp.CVaR):
        laws = ddp.ReturnDistribution(support, laws)
        return np.asarray(ddp.conditional_value_at_risk(laws, objective.alpha))
    return np.asarray(laws @ objective(support))


# --- Hand-built cases ---


@pytest.mark.parametrize("method", METHODS)
def test_safe_vs_risky_mean_and_cvar_by_hand(method):
    """Two decisions. Every deterministic policy and its return law (first action, then the
    action after safe / win / loss):
      safe, safe           G = 2                          mean 2      CVaR_.25  2
      safe, risky          G = 5 or 0 (1/2 each)          mean 2.5    CVaR_.25  0
      risky, safe          G = 5 or 0                     mean 2.5    CVaR_.25  0
      risky, risky         G = 8, 3, -2 (1/4, 1/2, 1/4)   mean 3      CVaR_.25 -2
      risky, win S/loss R  G = 5, 3, -2 (1/2, 1/4, 1/4)   mean 2.75   CVaR_.25 -2
      risky, win R/loss S  G = 8, 3, 0 (1/4, 1/4, 1/2)    mean 2.75   CVaR_.25  0
    so risky-risky is mean-optimal (3) and safe-safe CVaR_.25-optimal (2), both uniquely.
    Rockafellar-Uryasev for G = 2: b + E[min(G - b, 0)] / alpha = b for b <= 2 and falls after,
    so b* = 2 and c_0 = -2. At alpha = 1 CVaR is the mean, so its optimum is 3 again."""
    mdp = safe_vs_risky()
    mean = ddp.solve(mdp, ddp.expectation, method=method)
    np.testing.assert_allclose(mean.value, 3.0, atol=1e-6)
    assert_law(mean.distribution, {-2.0: 0.25, 3.0: 0.5, 8.0: 0.25})
    assert visited_actions(mdp, mean) == {
        (0, 0, 0.0): RISKY,
        (1, 1, 4.0): RISKY,
        (1, 2, -1.0): RISKY,
    }
    np.testing.assert_allclose(ddp.conditional_value_at_risk(mean.distribution, 0.25), -2.0)

    cvar = ddp.solve(mdp, ddp.CVaR(0.25), method=method)
    np.testing.assert_allclose(cvar.value, 2.0, atol=1e-6)
    np.testing.assert_allclose(cvar.initial_stock, -2.0)
    assert_law(cvar.distribution, {2.0: 1.0})
    assert visited_actions(mdp, cvar) == {(0, 0, 0.0): SAFE, (1, 0, 1.0): SAFE}

    np.testing.assert_allclose(ddp.solve(mdp, ddp.CVaR(1.0), method=method).value, 3.0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_threshold_and_homeostatic_by_hand(method):
    """Same MDP and table as above.
    P(G >= 5): safe-safe 0, safe-risky 1/2, risky-safe 1/2, risky-risky 1/4 (only 8),
      risky/win S/loss R 1/2, risky/win R/loss S 1/4: the optimum is 1/2, the mean-optimal
      policy gets 1/4.
    -|G - 6| by backward induction: at t = 1, after a win (x = 4) safe gives -1 and risky
      -(2 + 3)/2 = -2.5; after a loss (x = -1) safe gives -6, risky -(3 + 8)/2 = -5.5; after
      safe (x = 1) safe gives -4, risky -(1 + 6)/2 = -3.5. At t = 0 safe leads to -3.5 and
      risky to (-1 - 5.5)/2 = -3.25: risky, then safe after a win and risky after a loss.
      The mean-optimal law (8, 3, -2 w.p. 1/4, 1/2, 1/4) gets -(2/4 + 3/2 + 8/4) = -4."""
    mdp = safe_vs_risky()
    mean_policy = ddp.solve(mdp, ddp.expectation).policy

    reach = ddp.solve(mdp, ddp.threshold(5.0), method=method)
    np.testing.assert_allclose(reach.value, 0.5, atol=1e-6)
    mean_reach = objective_value(ddp.threshold(5.0), ddp.evaluate(mdp, mean_policy))
    np.testing.assert_allclose(mean_reach, 0.25, atol=1e-6)

    home = ddp.solve(mdp, ddp.homeostatic(6.0), method=method)
    np.testing.assert_allclose(home.value, -3.25, atol=1e-5)
    assert visited_actions(mdp, home) == {
        (0, 0, 0.0): RISKY,
        (1, 1, 4.0): SAFE,
        (1, 2, -1.0): RISKY,
    }
    mean_home = objective_value(ddp.homeostatic(6.0), ddp.evaluate(mdp, mean_policy))
    np.testing.assert_allclose(mean_home, -4.0, atol=1e-5)
    # A target of 6 is a stock of -6 to bring to 0: the same problem.
    shifted = ddp.solve(mdp, ddp.homeostatic(0.0), initial_stock=-6.0, method=method)
    np.testing.assert_allclose(shifted.value, -3.25, atol=1e-5)


def test_evaluate_stochastic_and_markov_layouts_by_hand():
    """Uniform actions: one step pays 1, 4, -1 w.p. 1/2, 1/4, 1/4; two steps convolve to
    2: 1/4, 5: 2(1/2)(1/4) = 1/4, 0: 1/4, 8: 1/16, 3: 2/16, -2: 1/16. 'Always risky' given as
    (S,), (T, S) and (T, S, N) actions gives the risky-risky law."""
    mdp = safe_vs_risky()
    uniform = np.full((3, 2), 0.5, np.float32)
    expected = {-2.0: 1 / 16, 0.0: 1 / 4, 2.0: 1 / 4, 3.0: 1 / 8, 5.0: 1 / 4, 8.0: 1 / 16}
    assert_law(ddp.evaluate(mdp, uniform), expected)
    assert_law(ddp.evaluate(mdp, np.broadcast_to(uniform, (2, 3, 2))), expected)
    N = ddp.make_grid(mdp).support.shape[0]
    for risky in (np.ones(3, int), np.ones((2, 3), int), np.ones((2, 3, N), int)):
        assert_law(ddp.evaluate(mdp, risky), {-2.0: 0.25, 3.0: 0.5, 8.0: 0.25})


def test_the_stock_beats_every_markov_policy():
    """Pass-through MDP, objective -|G - 6|. At t = 2 the state is 0 whatever happened, so a
    Markov policy fixes its second action: safe-safe G = 2 (-4), safe-risky and risky-safe
    G = 5 or 0 (-(1 + 6)/2 = -3.5), risky-risky 8, 3, -2 (-4): at best -3.5. With the stock,
    risky then safe after a win (x = 4) and risky after a loss (x = -1) gets -3.25 as in the
    safe-vs-risky MDP."""
    mdp = pass_through()
    home = ddp.solve(mdp, ddp.homeostatic(6.0))
    np.testing.assert_allclose(home.value, -3.25, atol=1e-5)
    decisions = {k: a for k, a in visited_actions(mdp, home).items() if k[1] == 0}
    assert decisions == {(0, 0, 0.0): RISKY, (2, 0, 4.0): SAFE, (2, 0, -1.0): RISKY}
    markov = {}
    for first, second in itertools.product((SAFE, RISKY), repeat=2):
        policy = np.zeros((4, 3), int)  # only state 0 at t = 0 and t = 2 has a choice
        policy[0, 0], policy[2, 0] = first, second
        law = ddp.evaluate(mdp, policy)
        markov[first, second] = objective_value(ddp.homeostatic(6.0), law)
    expected = {(SAFE, SAFE): -4.0, (SAFE, RISKY): -3.5, (RISKY, SAFE): -3.5, (RISKY, RISKY): -4.0}
    np.testing.assert_allclose([markov[k] for k in expected], list(expected.values()), atol=1e-5)


def test_conditional_value_at_risk_by_hand():
    """Law 8, 3, -2 w.p. 1/4, 1/2, 1/4: CVaR_.1 = CVaR_.25 = -2, CVaR_.5 = (-2/4 + 3/4)/(1/2)
    = 0.5, CVaR_1 = mean = 3."""
    law = ddp.ReturnDistribution(jnp.array([3.0, -2.0, 8.0]), jnp.array([0.5, 0.25, 0.25]))
    for alpha, expected in [(0.1, -2.0), (0.25, -2.0), (0.5, 0.5), (1.0, 3.0)]:
        np.testing.assert_allclose(ddp.conditional_value_at_risk(law, alpha), expected, atol=1e-6)


# --- Against classic DP and Monte Carlo ---


def classic_value_iteration(mdp, horizon):
    """Finite-horizon expected-return backward induction, plain NumPy."""
    P = np.asarray(mdp.P, np.float64)
    R = np.asarray(mdp.rewards, np.float64) * mdp.reward_step
    if R.ndim == 2:
        R = np.broadcast_to(R[..., None], P.shape)
    v = np.zeros(P.shape[0])
    for _ in range(horizon):
        v = (P * (R + mdp.gamma * v)).sum(-1).max(-1)
    return float(mdp.initial @ v)


@pytest.mark.parametrize("method", METHODS)
def test_expectation_equals_classic_value_iteration(method):
    rng = np.random.default_rng(0)
    cases = [
        random_mdp(rng, 4, 3, 5),
        random_mdp(rng, 4, 3, 5, reward_step=0.5, sa=True),
        random_mdp(rng, 3, 2, 4, gamma=0.9, rewards=(-1, 0, 1)),
    ]
    for mdp in cases:
        solution = ddp.solve(mdp, ddp.expectation, method=method)
        expected = classic_value_iteration(mdp, mdp.horizon)
        np.testing.assert_allclose(solution.value, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(solution.distribution.probs.sum(), 1.0, atol=1e-5)


def test_truncated_discounted_return_within_the_stated_bound():
    """Horizon T approximates the infinite discounted problem within gamma^T max|r| / (1 - g)
    for the mean (f is 1-Lipschitz)."""
    rng = np.random.default_rng(1)
    mdp = random_mdp(rng, 3, 2, 1, gamma=0.5, rewards=(-1, 0, 1))
    infinite = classic_value_iteration(mdp, 200)
    for horizon in (2, 4, 7):
        truncated = ddp.solve(mdp._replace(horizon=horizon), ddp.expectation).value
        bound = 0.5**horizon * 1.0 / (1 - 0.5)
        assert abs(float(truncated) - infinite) <= bound + 1e-5, (horizon, truncated, infinite)


def test_evaluate_matches_monte_carlo_and_the_forward_occupancy():
    """A random stock-dependent policy on a random discounted MDP: the exact law's CDF is
    within the DKW band of 40000 simulated returns (failure probability 1e-6), and the forward
    occupancy at t = T, summed over states, is the same law."""
    rng = np.random.default_rng(2)
    mdp = random_mdp(rng, 3, 2, 4, gamma=0.8, rewards=(-1, 0, 2), reward_step=0.5)
    grid = ddp.make_grid(mdp)
    support = np.asarray(grid.support, np.float64)
    policy = rng.integers(2, size=(mdp.horizon, 3, support.size))
    law = ddp.evaluate(mdp, policy)

    episodes = 40_000
    s = rng.choice(3, size=episodes, p=mdp.initial)
    x = np.zeros(episodes)
    for t in range(mdp.horizon):
        n = np.abs(support[None, :] - x[:, None]).argmin(1)
        assert np.abs(support[n] - x).max() < 1e-4  # every visited stock is on the grid
        a = policy[t, s, n]
        s_next = (rng.random(episodes)[:, None] > mdp.P[s, a].cumsum(-1)).sum(-1)
        x += mdp.gamma**t * mdp.reward_step * mdp.rewards[s, a, s_next]
        s = s_next
    empirical_cdf = (x[None, :] <= support[:, None] + 1e-6).mean(1)
    dkw = np.sqrt(np.log(2 / 1e-6) / (2 * episodes))
    assert np.abs(empirical_cdf - np.cumsum(law.probs)).max() < dkw
    assert abs(x.mean() - float(law.probs @ law.support)) < 0.05

    final = ddp.occupancy(mdp, policy)[-1].sum(0)
    np.testing.assert_allclose(final, law.probs, atol=1e-6)


# --- Optimality against enumeration ---


OBJECTIVES = {
    "mean": ddp.expectation,
    "threshold": ddp.threshold(1.0),
    "homeostatic": ddp.homeostatic(1.0, power=2.0),
    "exponential": lambda x: -jnp.exp(-x),
    "cvar": ddp.CVaR(0.3),
}


@pytest.mark.parametrize("S, T, gamma, seed", [(2, 3, 1.0, 3), (2, 3, 0.9, 5), (3, 2, 0.8, 6)])
def test_never_worse_than_any_deterministic_markov_policy(S, T, gamma, seed):
    """On random MDPs with 2 actions (64 Markov policies a(t, s)): for every objective, value
    and policy iteration reach the same value, the returned policy realizes it, it is at
    least every Markov policy's, and for the mean it equals the best Markov policy's."""
    mdp = random_mdp(np.random.default_rng(seed), S, 2, T, gamma=gamma)
    support, laws = markov_laws(mdp)
    for name, objective in OBJECTIVES.items():
        best_markov = objective_values(objective, support, laws).max()
        values = []
        for method in METHODS:
            solution = ddp.solve(mdp, objective, method=method)
            realized = objective_value(
                objective, ddp.evaluate(mdp, solution.policy), float(solution.initial_stock)
            )
            close = dict(rtol=1e-5, atol=1e-5, err_msg=f"{name} {method}")
            np.testing.assert_allclose(realized, solution.value, **close)
            assert float(solution.value) >= best_markov - 1e-5 * (1 + abs(best_markov)), close
            values.append(float(solution.value))
        np.testing.assert_allclose(values[0], values[1], **close)
        if name == "mean":
            np.testing.assert_allclose(values[0], best_markov, **close)


# --- Transforms and errors ---


def test_value_iteration_jit_and_vmap_over_mdps_agree():
    """Three MDPs sharing rewards, gamma and horizon (so one grid): vmapped and jitted value
    iteration equal one un-jitted call per MDP."""
    rng = np.random.default_rng(7)
    mdp = random_mdp(rng, 3, 2, 3)
    grid = ddp.make_grid(mdp)
    Ps = jnp.asarray(rng.dirichlet(np.ones(3), size=(3, 3, 2)), jnp.float32)
    utility = -jnp.abs(grid.support - 1.0)
    batched = jax.jit(jax.vmap(ddp.value_iteration, in_axes=(None, 0, None)))(grid, Ps, utility)
    for i in range(3):
        policy, eta_0 = ddp.value_iteration(grid, Ps[i], utility)
        np.testing.assert_array_equal(batched[0][i], policy)
        np.testing.assert_allclose(batched[1][i], eta_0, atol=1e-6)


def test_bad_input_raises_named_errors():
    mdp = safe_vs_risky()
    P = np.asarray(mdp.P).copy()
    P[0, 0, 0] = 0.5
    cases = [
        (mdp._replace(P=P), "MDP.P"),
        (mdp._replace(rewards=np.asarray(mdp.rewards) + 0.5), "MDP.rewards"),
        (mdp._replace(gamma=0.0), "MDP.gamma"),
        (mdp._replace(horizon=0), "MDP.horizon"),
        (mdp._replace(initial=np.ones(3)), "MDP.initial"),
    ]
    for bad, field in cases:
        with pytest.raises(ValueError, match=field):
            ddp.solve(bad, ddp.expectation)
    with pytest.raises(ValueError, match="max_stocks"):
        ddp.make_grid(mdp._replace(gamma=0.9, horizon=12))
    with pytest.raises(ValueError, match="CVaR.alpha"):
        ddp.solve(mdp, ddp.CVaR(0.0))
    with pytest.raises(ValueError, match="method"):
        ddp.solve(mdp, ddp.expectation, method="q_learning")
    with pytest.raises(ValueError, match="policy must be"):
        ddp.evaluate(mdp, np.zeros((5,), int))
