"""RiskyShortcut and the stock-augmented agent: dynamics and return laws by hand, the stock
wrapper, greedy choices for CVaR and the mean, learning the safe and the risky route, the CLI."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import cli, envs
from rljax.agents import stock_dqn
from rljax.envs import risky_shortcut
from rljax.envs.risky_shortcut import EnvParams, RiskyShortcut

UP, RIGHT, DOWN, LEFT = range(4)
SHORTCUT_LAW = {-4.0: 0.95**3, -9.0: 0.05, -10.0: 0.05 * 0.95, -11.0: 0.05 * 0.95**2}
KEY = jax.random.PRNGKey(0)
REPO = Path(__file__).resolve().parents[1]


def cell(obs) -> int:
    assert np.asarray(obs[:10]).sum() == 1.0
    return int(np.argmax(np.asarray(obs[:10])))


# --- The environment ---


def test_dynamics_by_hand():
    env = RiskyShortcut()
    safe, slippery = EnvParams(slip_prob=0.0), EnvParams(slip_prob=1.0)
    obs, state = env.reset(KEY, safe)
    assert cell(obs) == 5  # row 1, column 0

    def step(state, action, params):
        obs, state, reward, terminated, _ = env.step_env(KEY, state, action, params)
        return cell(obs), state, float(reward), bool(terminated)

    assert step(state, LEFT, safe)[::2] == (5, -1.0)  # a wall: stay, pay the step
    assert step(state, DOWN, slippery)[::2] == (5, -1.0)  # the start is no ledge
    where, up_state, reward, done = step(state, UP, slippery)
    assert (where, reward, done) == (0, -1.0, False)  # row 0 never slips
    assert step(up_state, UP, slippery)[::2] == (0, -1.0)
    assert step(state, RIGHT, slippery)[2:] == (-9.0, True)  # slips off the first ledge cell
    where, ledge, reward, done = step(state, RIGHT, safe)
    assert (where, reward, done) == (6, -1.0, False)
    assert step(ledge, DOWN, slippery)[2:] == (-9.0, True)  # bumping on the ledge slips too
    for _ in range(3):
        where, ledge, reward, done = step(ledge, RIGHT, safe)
    assert (where, reward, done) == (9, -1.0, True)  # the goal ends the episode


def test_time_limit_truncates():
    env, params = RiskyShortcut(), EnvParams(max_steps_in_episode=3)
    obs, state = env.reset(KEY, params)
    for _ in range(3):
        obs, state, _, terminated, truncated, info = env.step(KEY, state, UP, params)
    assert bool(truncated) and not bool(terminated)
    assert cell(info["final_observation"]) == 0 and cell(obs) == 5  # auto-reset to the start


def test_route_laws_exact_and_sampled():
    shortcut = risky_shortcut.route_returns(risky_shortcut.SHORTCUT)
    assert shortcut.keys() == SHORTCUT_LAW.keys()
    np.testing.assert_allclose([shortcut[k] for k in SHORTCUT_LAW], list(SHORTCUT_LAW.values()))
    assert risky_shortcut.route_returns(risky_shortcut.SAFE) == {-6.0: 1.0}
    assert risky_shortcut.cvar(shortcut, 0.1) == pytest.approx(-10.3775)
    assert sum(k * p for k, p in shortcut.items()) == pytest.approx(-4.850875)
    with pytest.raises(ValueError, match="do not reach the goal"):
        risky_shortcut.route_returns((RIGHT, RIGHT))

    # The JAX env samples the same law: 20,000 open-loop shortcut episodes.
    env, params = RiskyShortcut(), EnvParams()

    def episode(key):
        _, state = env.reset(key, params)

        def step(carry, key):
            state, total, done = carry
            _, state, reward, terminated, _ = env.step_env(key, state, RIGHT, params)
            return (state, total + jnp.where(done, 0.0, reward), done | terminated), None

        (_, total, _), _ = jax.lax.scan(step, (state, 0.0, False), jax.random.split(key, 4))
        return total

    returns = np.asarray(jax.jit(jax.vmap(episode))(jax.random.split(KEY, 20_000)))
    for value, p in SHORTCUT_LAW.items():
        assert abs((returns == value).mean() - p) < 4 * np.sqrt(p * (1 - p) / 20_000), value


def test_tabular_matches_the_dynamics():
    P, rewards, initial = risky_shortcut.tabular()
    np.testing.assert_allclose(P.sum(-1), 1.0)
    assert initial[5] == 1.0
    assert P[5, RIGHT, 6] == pytest.approx(0.95) and P[5, RIGHT, 10] == pytest.approx(0.05)
    assert rewards[5, RIGHT, 10] == -9.0 and rewards[8, RIGHT, 11] == -1.0
    assert P[5, UP, 0] == 1.0 and P[4, DOWN, 11] == 1.0  # down from above the goal arrives


def test_registered_in_make():
    env, params = envs.make("rljax/RiskyShortcut")
    assert env.action_space(params).n == 4 and env.observation_space(params).shape == (10,)


# --- The stock wrapper ---


def test_stock_follows_rewards_and_resets_within_range():
    config = stock_dqn.Config(gamma=0.5, stock_low=2.0, stock_high=3.0)
    env, _ = envs.make("rljax/RiskyShortcut")
    params = EnvParams(slip_prob=0.0)
    wrapped, _ = stock_dqn.wrap_env(config, env, params)
    assert wrapped.observation_space(params).shape == (11,)
    obs, state = wrapped.reset(KEY, params)
    stock = first = float(obs[-1])
    assert 2.0 <= stock <= 3.0 and float(state.stock) == stock
    for t, key in enumerate(jax.random.split(KEY, 4)):
        obs, state, reward, terminated, _, info = wrapped.step(key, state, RIGHT, params)
        stock = (stock + float(reward)) / 0.5  # c_{t+1} = (c_t + r_t) / gamma
        assert float(info["final_observation"][-1]) == pytest.approx(stock)
        if t < 3:
            assert float(obs[-1]) == pytest.approx(stock) and not bool(terminated)
    assert bool(terminated) and stock == pytest.approx(
        16 * first - 30
    )  # c_4 = 16 c_0 - 2 - 4 - 8 - 16
    assert cell(obs) == 5 and 2.0 <= float(obs[-1]) <= 3.0  # a new episode, a new c_0

    firsts = jax.vmap(lambda k: wrapped.reset(k, params)[0][-1])(jax.random.split(KEY, 1000))
    assert 2.0 <= float(firsts.min()) and float(firsts.max()) <= 3.0
    assert float(firsts.std()) > 0.2  # uniform on [2, 3]: std 0.29


def test_init_needs_the_wrapped_env():
    env, params = envs.make("rljax/RiskyShortcut")
    with pytest.raises(ValueError, match="wrap_env"):
        stock_dqn.init(stock_dqn.Config(), env, params, KEY)
    with pytest.raises(ValueError, match="stock_low=3.0 must be less than stock_high=1.0"):
        stock_dqn.Config(stock_low=3.0, stock_high=1.0)


# --- Greedy choices on a hand-built categorical Z ---

SUPPORT = jnp.arange(-12.0, 1.0)  # integers -12..0


def law(outcomes: dict) -> jax.Array:
    return (
        jnp.zeros(13)
        .at[jnp.array([int(v) + 12 for v in outcomes])]
        .set(jnp.array(list(outcomes.values())))
    )


SAFE_Z, RISKY_Z = law({-6.0: 1.0}), law(SHORTCUT_LAW)
PROBS = jnp.stack([SAFE_Z, RISKY_Z])  # action 0 safe, action 1 risky


def greedy(objective, stock):
    return int(jnp.argmax(stock_dqn.objective_values(objective, PROBS, SUPPORT, jnp.array(stock))))


def test_objective_values_and_greedy_actions_by_hand():
    means = stock_dqn.objective_values("mean", PROBS, SUPPORT, jnp.array(0.0))
    np.testing.assert_allclose(means, [-6.0, -4.850875], rtol=1e-6)
    # E[min(6 + Z, 0)]: the safe law never goes below -6; the risky one loses 3, 4, 5 in a fall.
    tails = stock_dqn.objective_values("cvar", PROBS, SUPPORT, jnp.array(6.0))
    np.testing.assert_allclose(tails, [0.0, -(0.05 * 3 + 0.0475 * 4 + 0.045125 * 5)], rtol=1e-6)
    assert greedy("mean", 6.0) == 1 and greedy("cvar", 6.0) == 0
    assert greedy("cvar", 0.0) == 1  # from c_0 = 0 every return is below 0: min is the mean
    assert greedy("threshold", 6.0) == 0  # P(G >= -6): 1 against 0.857
    assert greedy("threshold", 5.0) == 1  # P(G >= -5): 0 against 0.857


def test_cvar_search_by_hand():
    stocks = jnp.arange(0.0, 13.0)
    probs = jnp.broadcast_to(PROBS, (13, 2, 13))  # a Z that ignores the stock
    best, value = stock_dqn.cvar_search(probs, SUPPORT, stocks, 0.1)
    assert float(stocks[best]) == 6.0 and float(value) == pytest.approx(-6.0)
    # The risky law alone: b = VaR_0.1 = -9, CVaR = -9 - (2 * 0.045125 + 0.0475) / 0.1.
    best, value = stock_dqn.cvar_search(probs[:, 1:], SUPPORT, stocks, 0.1)
    assert float(stocks[best]) == 9.0 and float(value) == pytest.approx(-10.3775, abs=1e-5)


def test_loss_bootstraps_the_objectives_greedy_action():
    logits_tm1 = jax.random.normal(KEY, (2, 13))
    logits_t = jnp.log(jnp.maximum(PROBS, 1e-30))

    def loss(objective, stock):
        return stock_dqn.stock_categorical_loss(
            logits_tm1, 1, -1.0, 1.0, logits_t, jnp.array(stock), SUPPORT, objective
        )

    log_p = jax.nn.log_softmax(logits_tm1[1])
    # cvar from c' = 6 bootstraps the safe law shifted by r = -1: a point mass on -7.
    assert float(loss("cvar", 6.0)) == pytest.approx(-float(log_p[5]), rel=1e-5)
    # mean bootstraps the risky law shifted by -1, clipped at the support's end -12.
    target = law({-5.0: 0.857375, -10.0: 0.05, -11.0: 0.0475, -12.0: 0.045125})
    assert float(loss("mean", 6.0)) == pytest.approx(-float(target @ log_p), rel=1e-5)


# --- Learning ---


@pytest.mark.slow
@pytest.mark.parametrize("objective, route, stock", [("mean", RIGHT, None), ("cvar", UP, 6.0)])
def test_learns_the_route_of_its_objective(objective, route, stock):
    """CVaR_0.1 takes the safe detour from the searched stock c_0 = 6; the mean the ledge."""
    config = stock_dqn.Config(objective=objective, total_timesteps=102_400)
    env, params = envs.make("rljax/RiskyShortcut")
    wrapped, _ = stock_dqn.wrap_env(config, env, params)
    state, _ = jax.jit(lambda key: stock_dqn.train(config, wrapped, params, key))(KEY)
    evaluated, _ = stock_dqn.wrap_env(config, env, params, state.params)
    obs, _ = evaluated.reset(KEY, params)
    if stock is not None:
        assert float(obs[-1]) == stock
    assert int(stock_dqn.act(config, state.params, obs, KEY, deterministic=True)) == route


# --- The command line ---


def test_cli_train_and_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    tiny = ["--set", "num_envs=4", "--set", "num_steps=8", "--set", "learning_starts=64"]
    tiny += ["--set", "batch_size=16", "--set", "buffer_size=512", "--set", "hidden_sizes=[16]"]
    status = cli.main(
        ["train", "stock_dqn", "--config", "configs/stock_dqn/risky_shortcut_cvar.yaml",
         *tiny, "--total-steps", "512", "--chunk-updates", "4", "--out", str(out)]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resolved"]["objective"] == "cvar" and (out / "curve.png").exists()
    assert cli.main(["eval", str(out), "--episodes", "4", "--deterministic", "--members"]) == 0
    assert "member 0 (config 0, seed 0): return" in capsys.readouterr().out
