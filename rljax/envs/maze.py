"""Goal-conditioned mazes with OGBench's layouts: a point mass (PointMaze) and a grid (GridMaze).

OGBench (Park et al., "OGBench: Benchmarking Offline Goal-Conditioned RL", ICLR 2025;
``ogbench/locomaze/maze.py``, ``point.py``) builds its mazes in MuJoCo; these are the same mazes
in JAX, so thousands of evaluation episodes run in one vmapped program.

Geometry, as OGBench: the layout is a grid of 4 x 4 blocks (``MAZE_UNIT``); cell (i, j) has its
centre at xy = (4 j - 4, 4 i - 4), so row i grows with y. Observations and goals are xy (float32,
shape (2,)); the goal of an episode is ``state.goal`` (under wrappers,
``rljax.envs.wrappers.find_state(state, MazeState).goal``), a full observation as OGBench
passes it.

PointMaze kinematics. OGBench's point adds ``0.2 * action`` to its position, zeroes the velocity
and runs 5 MuJoCo substeps in which only contacts act; a sphere of radius 0.7 touches the walls.
Here: ``xy += SPEED * clip(action, -1, 1)``, then the ball is pushed out of the walls exactly
(clamped against the faces of orthogonally adjacent wall blocks, pushed radially away from the
corner of a diagonally adjacent one). A step (<= 0.2 sqrt 2) is shorter than the radius, so the
ball never passes through a wall; it slides along walls and rounds corners like a ball.

Checked against ogbench 1.2.2 (``tests/test_real_ogbench.py``; OGBench's teleport maze is not
here): wall maps, cell centres and xy -> cell, the five tasks, the start/goal noise, the success
radius (``<=``, after the step), reward, termination, action bounds and the 1000-step limit are
OGBench's. One step from the same state lands within 1e-5 (float32 rounding) of OGBench's where
the ball touches no wall, and within 0.06 where it does: MuJoCo's contacts are soft, so OGBench's
ball ends a step up to ~0.05 inside a wall it was pushed into (the worst, a full diagonal step
into a corner), where ours is pushed out exactly. By design, OGBench's env does not clip actions
(its data scripts and evaluation loop do) and its observation space is unbounded float64.

GridMaze: the same layouts as cells; the position is always a cell centre, actions 0..3 move one
cell up, right, down, left (up = row - 1, i.e. -y), and a move into a wall keeps the cell.

Episodes (``EnvParams``): ``task_id`` 0 draws a random start cell and a different random goal
cell; 1..5 are OGBench's evaluation tasks (``TASKS``; the ``mbrcsl`` layout, which is not
OGBench's, has one). PointMaze adds OGBench's uniform noise of
+-maze_unit/4 to both the start and the goal position; GridMaze has none. Success is
``||xy - goal|| <= goal_radius`` (1.0 for the point as OGBench; 0 for the grid: the goal cell);
the reward is 1 on success and 0 otherwise (OGBench's), or with ``dense_reward``
exp(-||xy - goal|| / maze_unit) (gymnasium-robotics' dense PointMaze reward, whose cells are 1
wide); the episode terminates at success when ``terminate_at_goal`` and is truncated after
``max_steps_in_episode`` steps (OGBench: 1000 for every pointmaze; the grid gets the same
budget in cells, 1000 / 20 = 50 moves).

The oracle (OGBench's ``get_oracle_subgoal``): all-pairs BFS distances over free cells are
precomputed with numpy; ``oracle_subgoal`` is the centre of the next cell on a shortest path to
the goal's cell, or the goal itself once in that cell (OGBench aims at the goal cell's centre
there, which never reaches a goal more than ~1 from it), and ``oracle_action`` heads there.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

MAZE_UNIT = 4.0
OFFSET = 4.0  # cell (i, j) is centred at (j * MAZE_UNIT - OFFSET, i * MAZE_UNIT - OFFSET)
NOISE = MAZE_UNIT / 4  # uniform +- noise on the point's start and goal positions
SPEED = 0.2  # OGBench's point moves by 0.2 * action per step
RADIUS = 0.7  # the radius of OGBench's point sphere
MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # grid actions: up, right, down, left
NUM_TASKS = 5  # OGBench's evaluation tasks per maze

# OGBench's maze maps ('#' wall, '.' free), evaluation tasks ((start row, col), (goal row, col))
# and episode limits.
LAYOUTS = {
    "medium": (
        "########",
        "#..##..#",
        "#..#...#",
        "##...###",
        "#..#...#",
        "#.#..#.#",
        "#...#..#",
        "########",
    ),
    "large": (
        "############",
        "#....#.....#",
        "#.##.#.#.#.#",
        "#......#...#",
        "#.####.###.#",
        "#..#.#.....#",
        "##.#.#.#.###",
        "#..#...#...#",
        "############",
    ),
    "giant": (
        "################",
        "#.#......##....#",
        "#.#.##.#.#..##.#",
        "#...#..#...#...#",
        "#.###.######.#.#",
        "#...#...#....#.#",
        "###.#.#..#.#.###",
        "#...#..#...#...#",
        "#.#.#.######.#.#",
        "#.###...#...##.#",
        "#.....#...#....#",
        "################",
    ),
    # Zhou et al.'s stitching maze (MBRCSL, ICLR 2024: envs/pointmaze/config/maze_default.json):
    # from (1, 2) to the goal (2, 4) the short way is down, then right; see
    # rljax.generate.mbrcsl_maze for its data.
    "mbrcsl": (
        "######",
        "#..###",
        "#....#",
        "######",
    ),
}
TASKS = {
    "medium": (((1, 1), (6, 6)), ((6, 1), (1, 6)), ((5, 3), (4, 2)), ((6, 5), (6, 1)),
               ((2, 6), (1, 1))),
    "large": (((1, 1), (7, 10)), ((5, 4), (7, 1)), ((7, 4), (1, 10)), ((3, 8), (5, 4)),
              ((1, 1), (5, 4))),
    "giant": (((1, 1), (10, 14)), ((1, 14), (10, 1)), ((8, 14), (1, 1)), ((8, 3), (5, 12)),
              ((5, 9), (3, 8))),
    "mbrcsl": (((1, 2), (2, 4)),),
}  # fmt: skip
MAX_STEPS = {"medium": 1000, "large": 1000, "giant": 1000, "mbrcsl": 200}
CELL_STEPS = round(MAZE_UNIT / SPEED)  # point steps to cross a cell: the grid's time scale


def walls_of(layout) -> np.ndarray:
    """The layout's wall map, (rows, cols) bool."""
    return np.array([[c == "#" for c in row] for row in layout])


def bfs_distances(walls: np.ndarray) -> np.ndarray:
    """Shortest-path lengths in moves between all cells, (C, C) over flat cell ids i * cols + j;
    -1 where either cell is a wall or they are not connected."""
    rows, cols = walls.shape
    dist = np.full((rows * cols, rows * cols), -1, np.int32)
    for source in np.flatnonzero(~walls.ravel()):
        dist[source, source] = 0
        frontier = [divmod(int(source), cols)]
        while frontier:
            nxt = []
            for i, j in frontier:
                for di, dj in MOVES:
                    ni, nj = i + di, j + dj
                    cell = ni * cols + nj
                    inside = 0 <= ni < rows and 0 <= nj < cols
                    if inside and not walls[ni, nj] and dist[source, cell] < 0:
                        dist[source, cell] = dist[source, i * cols + j] + 1
                        nxt.append((ni, nj))
            frontier = nxt
    return dist


def next_cells(walls: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(C, C): the neighbour of cell a on a shortest path to cell b (a itself when a == b or b is
    unreachable). Ties go to the first of up, left, down, right, as OGBench's oracle."""
    rows, cols = walls.shape
    cells = rows * cols
    nxt = np.tile(np.arange(cells)[:, None], (1, cells))
    for a in np.flatnonzero(~walls.ravel()):
        i, j = divmod(int(a), cols)
        best = np.where(dist[a] >= 0, dist[a], np.iinfo(np.int32).max)
        for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
            ni, nj = i + di, j + dj
            if 0 <= ni < rows and 0 <= nj < cols and not walls[ni, nj]:
                n = ni * cols + nj
                closer = (dist[n] >= 0) & (dist[n] < best)
                nxt[a, closer] = n
                best = np.where(closer, dist[n], best)
    return nxt


def vertex_cells(walls: np.ndarray) -> np.ndarray:
    """Flat ids of the free cells that are not hallways (OGBench's navigate goals): a hallway
    cell is open on exactly two opposite sides, walled on the other two."""
    rows, cols = walls.shape
    out = []
    for i, j in zip(*np.nonzero(~walls), strict=True):
        vertical = (
            not walls[i - 1, j] and not walls[i + 1, j] and walls[i, j - 1] and walls[i, j + 1]
        )
        horizontal = (
            not walls[i, j - 1] and not walls[i, j + 1] and walls[i - 1, j] and walls[i + 1, j]
        )
        if not (vertical or horizontal):
            out.append(i * cols + j)
    return np.array(out, np.int32)


def uniform_index(u: jax.Array, n: int) -> jax.Array:
    """A uniform index in 0..n-1 from a uniform u in [0, 1)."""
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


@struct.dataclass
class MazeState(environment.EnvState):
    pos: jax.Array  # xy, (2,)
    goal: jax.Array  # the goal observation, xy, (2,)
    time: int


@struct.dataclass
class EnvParams(environment.EnvParams):
    max_steps_in_episode: int = 1000
    task_id: int = 0  # 0: random start and goal cells; 1..5: OGBench's evaluation tasks
    terminate_at_goal: bool = True
    goal_radius: float = 1.0
    dense_reward: bool = False  # exp(-distance to the goal in cells) instead of success


class InvalidMazeParameter(ValueError):
    """A maze parameter out of range; the message names it."""


class _Maze(environment.Environment):
    """What both mazes share: the layout's tables, reset, success and the oracle's subgoal."""

    noise = 0.0  # uniform +- noise on start and goal positions
    goal_radius = 0.0

    def __init__(self, layout: str = "medium"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown maze layout {layout!r}; known: {', '.join(LAYOUTS)}")
        self.layout = layout
        self.walls = walls_of(LAYOUTS[layout])
        self.rows, self.cols = self.walls.shape
        self.dist = bfs_distances(self.walls)
        self.next_cell = next_cells(self.walls, self.dist)
        self.free_cells = np.flatnonzero(~self.walls.ravel()).astype(np.int32)
        self.vertex_cells = vertex_cells(self.walls)
        i, j = np.divmod(np.arange(self.rows * self.cols), self.cols)
        self.centres = np.stack([j * MAZE_UNIT - OFFSET, i * MAZE_UNIT - OFFSET], -1).astype(
            np.float32
        )
        self.tasks = np.array([[a[0] * self.cols + a[1], b[0] * self.cols + b[1]]
                               for a, b in TASKS[layout]], np.int32)  # fmt: skip
        self.num_tasks = len(self.tasks)

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(max_steps_in_episode=MAX_STEPS[self.layout], goal_radius=self.goal_radius)

    def check_params(self, params: EnvParams) -> None:
        """Raises InvalidMazeParameter, naming the parameter, for a value out of range."""
        rules = [
            (
                "task_id",
                params.task_id in range(self.num_tasks + 1),
                f"an integer in 0..{self.num_tasks}",
            ),
            ("max_steps_in_episode", params.max_steps_in_episode >= 1, ">= 1"),
            ("goal_radius", params.goal_radius >= 0, ">= 0"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise InvalidMazeParameter(
                    f"{name}={getattr(params, name)!r} is out of range: it must be {allowed}"
                )

    def cell(self, xy: jax.Array) -> jax.Array:
        """Flat id of the cell containing xy, (...) int32 for xy (..., 2)."""
        ij = jnp.floor((xy[..., ::-1] + OFFSET + MAZE_UNIT / 2) / MAZE_UNIT).astype(jnp.int32)
        i = jnp.clip(ij[..., 0], 0, self.rows - 1)
        return i * self.cols + jnp.clip(ij[..., 1], 0, self.cols - 1)

    def reset_env(self, key, params):
        # One uniform draw for everything: each random op compiles on its own, slowly on CPU.
        u = jax.random.uniform(key, (6,))
        n = len(self.free_cells)
        free = jnp.asarray(self.free_cells)
        start_index = uniform_index(u[0], n)
        goal_index = uniform_index(u[1], n - 1)  # any free cell but the start
        goal_index = goal_index + (goal_index >= start_index)
        task = jnp.asarray(self.tasks)[jnp.clip(params.task_id - 1, 0, self.num_tasks - 1)]
        start = jnp.where(params.task_id > 0, task[0], free[start_index])
        goal = jnp.where(params.task_id > 0, task[1], free[goal_index])
        noise = self.noise * (2 * u[2:].reshape(2, 2) - 1)
        centres = jnp.asarray(self.centres)
        state = MazeState(pos=centres[start] + noise[0], goal=centres[goal] + noise[1], time=0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        pos = self.move(state.pos, action)
        success = self.success(pos, state.goal, params.goal_radius)
        state = MazeState(pos=pos, goal=state.goal, time=state.time + 1)
        terminated = success & params.terminate_at_goal
        dense = jnp.exp(-jnp.linalg.norm(pos - state.goal, axis=-1) / MAZE_UNIT)
        return (
            self.get_obs(state),
            state,
            jnp.where(params.dense_reward, dense, success.astype(jnp.float32)),
            terminated,
            {"success": success},
        )

    def success(self, pos: jax.Array, goal: jax.Array, goal_radius) -> jax.Array:
        return jnp.linalg.norm(pos - goal, axis=-1) <= goal_radius

    def get_obs(self, state, params=None, key=None):
        return state.pos

    def oracle_subgoal(self, pos: jax.Array, goal: jax.Array) -> jax.Array:
        """The centre of the next cell on a shortest path from pos's cell to goal's cell, or goal
        itself once pos is in goal's cell; (..., 2) for pos and goal (..., 2)."""
        here, there = self.cell(pos), self.cell(goal)
        subgoal = jnp.asarray(self.centres)[jnp.asarray(self.next_cell)[here, there]]
        return jnp.where((here == there)[..., None], goal, subgoal)

    def observation_space(self, params=None) -> spaces.Box:
        low = -OFFSET - MAZE_UNIT / 2
        high = jnp.array([self.cols, self.rows], jnp.float32) * MAZE_UNIT + low
        return spaces.Box(low, high, (2,), jnp.float32)


class PointMaze(_Maze):
    """A point mass in one of OGBench's mazes (module docstring); actions in [-1, 1]^2."""

    noise = NOISE
    goal_radius = 1.0

    def move(self, pos: jax.Array, action: jax.Array) -> jax.Array:
        """The position after one step from ``pos`` (2,) with ``action`` (2,): the move, then the
        ball pushed out of the walls around the cell it lands in."""
        p = pos + SPEED * jnp.clip(action, -1.0, 1.0)
        cell = self.cell(p)
        i, j = cell // self.cols, cell % self.cols
        walls = jnp.asarray(self.walls)
        centre = jnp.asarray(self.centres)[cell]
        low, high = centre - MAZE_UNIT / 2, centre + MAZE_UNIT / 2
        x = jnp.where(walls[i, j - 1], jnp.maximum(p[0], low[0] + RADIUS), p[0])
        x = jnp.where(walls[i, j + 1], jnp.minimum(x, high[0] - RADIUS), x)
        y = jnp.where(walls[i - 1, j], jnp.maximum(p[1], low[1] + RADIUS), p[1])
        y = jnp.where(walls[i + 1, j], jnp.minimum(y, high[1] - RADIUS), y)
        p = jnp.stack([x, y])
        for di, dj in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
            corner = jnp.stack([(low, high)[dj > 0][0], (low, high)[di > 0][1]])
            away = p - corner
            length = jnp.linalg.norm(away)
            inward = (centre - corner) / jnp.linalg.norm(centre - corner)
            direction = jnp.where(length > 1e-6, away / jnp.maximum(length, 1e-6), inward)
            pushed = corner + RADIUS * direction
            p = jnp.where(walls[i + di, j + dj] & (length < RADIUS), pushed, p)
        return p

    def oracle_action(self, pos: jax.Array, goal: jax.Array) -> jax.Array:
        """The unit direction from pos to the oracle's subgoal (OGBench's expert, noise-free)."""
        delta = self.oracle_subgoal(pos, goal) - pos
        return delta / (jnp.linalg.norm(delta, axis=-1, keepdims=True) + 1e-6)

    @property
    def name(self) -> str:
        return f"rljax/PointMaze-{self.layout}"

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)


class GridMaze(_Maze):
    """OGBench's mazes as a grid of cells (module docstring); actions 0..3."""

    def __init__(self, layout: str = "medium"):
        super().__init__(layout)
        cells = np.arange(self.rows * self.cols)
        i, j = np.divmod(cells, self.cols)
        targets = []
        for di, dj in MOVES:
            ni, nj = np.clip(i + di, 0, self.rows - 1), np.clip(j + dj, 0, self.cols - 1)
            targets.append(np.where(self.walls[ni, nj], cells, ni * self.cols + nj))
        self.moves = np.stack(targets, -1).astype(np.int32)  # (C, 4): the cell each action reaches
        # The first action from a that reaches next_cell[a, b]; at the goal cell that is a move
        # into a wall (which keeps the cell) where there is one, else up.
        hits = self.moves[:, None, :] == self.next_cell[:, :, None]  # (C, C, 4)
        self.next_action = hits.argmax(-1).astype(np.int32)

    @property
    def default_params(self) -> EnvParams:
        return super().default_params.replace(
            max_steps_in_episode=MAX_STEPS[self.layout] // CELL_STEPS
        )

    def move(self, pos: jax.Array, action: jax.Array) -> jax.Array:
        """The cell centre one move from ``pos``'s cell; a move into a wall keeps the cell."""
        return jnp.asarray(self.centres)[jnp.asarray(self.moves)[self.cell(pos), action]]

    def oracle_action(self, pos: jax.Array, goal: jax.Array) -> jax.Array:
        """The move toward the oracle's subgoal (at the goal cell: a bump into a wall if any)."""
        return jnp.asarray(self.next_action)[self.cell(pos), self.cell(goal)]

    @property
    def name(self) -> str:
        return f"rljax/GridMaze-{self.layout}"

    @property
    def num_actions(self) -> int:
        return 4

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(4)
