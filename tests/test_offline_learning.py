"""Offline learning check: on a generated Pendulum medium-replay dataset (mixed quality),
TD3+BC and IQL reach a clearly higher D4RL normalized score than BC.

The dataset is generated here, as ``rljax data generate`` does: a behaviour SAC trained with the
Pendulum recipe (stopped at 48k steps, about -175), whose steps until it first reaches a third
of the way from random to expert form medium-replay: ~25k transitions from random-level play
to medium. BC clones their average, which scores below random; the value-based agents pick
the better actions. TD3+BC runs with alpha = 10 here: with the paper's 2.5 its BC term holds
it near the data's average on this mostly random data (about 0 here, against BC's -10; the
experiments/offline_pendulum.py table has both).
"""

import numpy as np
import pytest
from runs import pendulum_medium_replay, quiet

from rljax.runner.loop import train
from rljax.runner.spec import RunSpec

AGENT = {"total_updates": 5000, "hidden_sizes": [64, 64]}


@pytest.mark.slow
def test_td3_bc_and_iql_beat_bc_on_pendulum_medium_replay(tmp_path):
    path, metadata = pendulum_medium_replay(tmp_path)
    assert metadata["transitions"] > 10_000

    def scores(algo, **agent):
        spec = RunSpec(
            algo=algo, env=metadata["env"], agent={**AGENT, **agent}, seeds=3,
            dataset=str(path), eval_episodes=20, chunk_updates=2500,
        )  # fmt: skip
        summary = train(spec, tmp_path / algo, print_fn=quiet)
        return np.array([m["final_score"] for m in summary["final_returns"]])

    bc, td3_bc, iql = scores("bc"), scores("td3_bc", alpha=10.0), scores("iql")
    assert td3_bc.mean() >= bc.mean() + 10, (bc, td3_bc)
    assert iql.mean() >= bc.mean() + 10, (bc, iql)
