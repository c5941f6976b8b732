"""RiskyShortcut: a 2 x 5 gridworld whose short route runs along a slippery ledge.

A small stochastic environment on which the mean-optimal and the CVaR-optimal policies differ,
for the stock-augmented agent (``rljax/agents/stock_dqn.py``)::

    row 0:   .  .  .  .  .      the safe detour
    row 1:   S  L  L  L  G      S start, L ledge, G goal; below row 1 is the cliff

Actions 0..3 move up, right, down, left; a move into the border leaves the agent in place.
Every step costs ``step_cost``. A step whose destination is a ledge cell (a bump into the border
while on the ledge included) slips with probability ``slip_prob``: the agent falls off the cliff,
receives ``-step_cost - fall_penalty`` and the episode terminates. Reaching G terminates it.
Observations are the one-hot cell (10 floats); episodes are cut at ``max_steps_in_episode``.

With the defaults (``step_cost=1``, ``slip_prob=0.05``, ``fall_penalty=8``, undiscounted), the
two routes that no other route beats have these exact return distributions:

    shortcut (right x 4, three ledge steps): -4 w.p. 0.95^3 = 0.857375, and a fall on ledge
        step j = 1, 2, 3 gives -(j + 8) w.p. 0.05 * 0.95^(j-1): -9 w.p. 0.05, -10 w.p. 0.0475,
        -11 w.p. 0.045125.   mean -4.851,  CVaR_0.1 -10.3775,  P(fall) 0.142625
    safe (up, right x 4, down):  -6 w.p. 1.   mean -6,  CVaR_0.1 -6,  P(fall) 0

so the expectation prefers the shortcut and CVaR at level 0.1 prefers the detour (any other
route is no shorter than the detour and takes some of the ledge's risk). ``route_returns`` computes
these distributions for any parameters.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

ROWS, COLS = 2, 5
START, GOAL = (1, 0), (1, 4)
LEDGE = ((1, 1), (1, 2), (1, 3))
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # up, right, down, left
SHORTCUT = (1, 1, 1, 1)
SAFE = (0, 1, 1, 1, 1, 2)


@struct.dataclass
class EnvState(environment.EnvState):
    row: jax.Array
    col: jax.Array
    time: int


@struct.dataclass
class EnvParams(environment.EnvParams):
    step_cost: float = 1.0
    slip_prob: float = 0.05
    fall_penalty: float = 8.0
    max_steps_in_episode: int = 20


def is_ledge(row, col):
    return (row == 1) & (col >= 1) & (col <= 3)


class RiskyShortcut(environment.Environment):
    """The gridworld of the module docstring."""

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    def reset_env(self, key, params):
        state = EnvState(row=jnp.int32(START[0]), col=jnp.int32(START[1]), time=0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        move = jnp.asarray(MOVES)[action]
        row = jnp.clip(state.row + move[0], 0, ROWS - 1)
        col = jnp.clip(state.col + move[1], 0, COLS - 1)
        fell = is_ledge(row, col) & (jax.random.uniform(key) < params.slip_prob)
        reward = -params.step_cost - jnp.where(fell, params.fall_penalty, 0.0)
        reached = (row == GOAL[0]) & (col == GOAL[1])
        state = EnvState(row=row, col=col, time=state.time + 1)
        return self.get_obs(state), state, reward, fell | reached, {}

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(state.row * COLS + state.col, ROWS * COLS)

    @property
    def name(self) -> str:
        return "rljax/RiskyShortcut"

    @property
    def num_actions(self) -> int:
        return 4

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(4)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (ROWS * COLS,), jnp.float32)


def tabular(params: EnvParams | None = None):
    """The env as a finite MDP for exact dynamic programming: (P, rewards, initial), with
    P[s, a, s'] and rewards[s, a, s'] over the 10 cells plus two absorbing, zero-reward states,
    "fallen" (10) and "arrived" (11); the horizon is ``max_steps_in_episode``."""
    params = EnvParams() if params is None else params
    cells, fallen, arrived = ROWS * COLS, ROWS * COLS, ROWS * COLS + 1
    P = np.zeros((cells + 2, 4, cells + 2))
    rewards = np.zeros((cells + 2, 4, cells + 2))
    P[fallen, :, fallen] = P[arrived, :, arrived] = 1.0
    for row, col, action in np.ndindex(ROWS, COLS, 4):
        if (row, col) == GOAL:
            P[row * COLS + col, action, arrived] = 1.0  # never occupied: the goal ends episodes
            continue
        s = row * COLS + col
        to_row = int(np.clip(row + MOVES[action][0], 0, ROWS - 1))
        to_col = int(np.clip(col + MOVES[action][1], 0, COLS - 1))
        to = arrived if (to_row, to_col) == GOAL else to_row * COLS + to_col
        slip = params.slip_prob if (to_row, to_col) in LEDGE else 0.0
        P[s, action, to] += 1.0 - slip
        P[s, action, fallen] += slip
        rewards[s, action, to] = -params.step_cost
        rewards[s, action, fallen] = -params.step_cost - params.fall_penalty
    initial = np.zeros(cells + 2)
    initial[START[0] * COLS + START[1]] = 1.0
    return P, rewards, initial


def route_returns(actions, params: EnvParams | None = None) -> dict:
    """The exact return distribution {return: probability} of an open-loop action sequence
    (undiscounted; it must reach the goal unless it falls)."""
    params = EnvParams() if params is None else params
    row, col = START
    outcomes, alive, spent = {}, 1.0, 0.0
    for action in actions:
        row = int(np.clip(row + MOVES[action][0], 0, ROWS - 1))
        col = int(np.clip(col + MOVES[action][1], 0, COLS - 1))
        spent += params.step_cost
        if (row, col) in LEDGE:
            fall = -spent - params.fall_penalty
            outcomes[fall] = outcomes.get(fall, 0.0) + alive * params.slip_prob
            alive *= 1.0 - params.slip_prob
    if (row, col) != GOAL:
        raise ValueError(f"the actions {actions} do not reach the goal {GOAL}")
    outcomes[-spent] = outcomes.get(-spent, 0.0) + alive
    return outcomes


def cvar(outcomes: dict, alpha: float) -> float:
    """CVaR_alpha (the mean of the worst alpha fraction) of a finite distribution."""
    total, left = 0.0, alpha
    for value in sorted(outcomes):
        take = min(outcomes[value], left)
        total, left = total + take * value, left - take
    return total / alpha
