"""D4RL normalized scores: ``100 * (return - random) / (expert - random)``.

The reference returns are D4RL's (d4rl/gym_mujoco/__init__.py, d4rl/locomotion/__init__.py):
the mean return of a random policy and of an expert (SAC) policy per environment. D4RL's own
``get_normalized_score`` returns the fraction; papers and tables report 100 times it, as here.
AntMaze's references are 0 and 1, so its score is the success rate in percent.

Datasets that rljax writes carry their references in their metadata under Minari's keys
``ref_min_score`` (random) and ``ref_max_score`` (expert); ``references`` reads them back, and
falls back to the D4RL table by environment name.
"""

import numpy as np

from rljax.data.dataset import DatasetError

# env -> (random return, expert return)
D4RL_REFERENCES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
}


class NoReferenceScores(DatasetError):
    """No random/expert reference returns for a dataset; the message lists where it looked."""


def normalized_score(returns, random: float, expert: float):
    """``100 * (returns - random) / (expert - random)``: 0 is random, 100 is expert."""
    if expert == random:
        raise ValueError(
            f"expert and random references are equal ({expert}); no scale to divide by"
        )
    return 100.0 * (np.asarray(returns, np.float64) - random) / (expert - random)


def references(metadata: dict | None = None, env: str | None = None) -> tuple[float, float]:
    """(random, expert) from ``metadata`` (``ref_min_score``, ``ref_max_score``), else D4RL's table.

    ``env`` may be a D4RL dataset name: ``hopper-medium-v2`` and ``antmaze-umaze-v2`` resolve to
    ``hopper`` and ``antmaze`` (the longest table key that prefixes the name).
    """
    metadata = metadata or {}
    if "ref_min_score" in metadata and "ref_max_score" in metadata:
        return float(metadata["ref_min_score"]), float(metadata["ref_max_score"])
    if env is not None:
        name = env.lower().removeprefix("d4rl/")
        matches = [k for k in D4RL_REFERENCES if name == k or name.startswith(f"{k}-")]
        if matches:
            return D4RL_REFERENCES[max(matches, key=len)]
    raise NoReferenceScores(
        f"no reference returns for env={env!r}: the metadata has no 'ref_min_score' and "
        f"'ref_max_score', and D4RL's table knows only {sorted(D4RL_REFERENCES)}"
    )
