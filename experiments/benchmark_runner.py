"""What the runner's safety costs: the divergence guard and checkpointing, in steps/s.

PPO with PureJaxRL's CartPole config (4 envs x 128 steps, 5e5 steps) through the runner, four
ways: the guard off and checkpoints only at the end (the baseline), the guard on (the default),
and the guard on with a checkpoint after every chunk (`--checkpoint-seconds 0`, the worst case).
Each is run --repeats times; the median steps/s (training loop only, compile excluded) is
reported with its overhead relative to the baseline.

    python experiments/benchmark_runner.py [--repeats 3] [--chunk-updates 61] [--seeds 1]
"""

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import jax.numpy as jnp

from rljax.runner import loop, program
from rljax.runner.loop import train
from rljax.runner.spec import RunSpec


def steps_per_second(spec: RunSpec, checkpoint_seconds: float, guard: bool) -> float:
    with tempfile.TemporaryDirectory() as directory, contextlib.ExitStack() as patches:
        if not guard:
            patches.enter_context(
                mock.patch.object(program, "params_finite", lambda params: jnp.bool_(True))
            )
            patches.enter_context(mock.patch.object(loop, "first_failures", lambda *a: {}))
        summary = train(
            spec, Path(directory) / "run", checkpoint_seconds=checkpoint_seconds,
            print_fn=lambda *_: None,
        )  # fmt: skip
    return summary["steps_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-updates", type=int, default=61, help="976 updates = 16 x 61")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    spec = RunSpec(
        algo="ppo", env={"name": "CartPole-v1"}, seeds=args.seeds, chunk_updates=args.chunk_updates
    )
    cases = [
        ("guard off, final checkpoint only", 1e9, False),
        ("guard on (default)", 1e9, True),
        ("guard on, checkpoint every chunk", 0.0, True),
    ]
    medians = {}
    for name, checkpoint_seconds, guard in cases:
        rates = [steps_per_second(spec, checkpoint_seconds, guard) for _ in range(args.repeats)]
        medians[name] = statistics.median(rates)
        print(f"  {name:<36} " + "  ".join(f"{r:,.0f}" for r in rates), flush=True)
    baseline = medians[cases[0][0]]
    print(f"\nPPO CartPole, {args.seeds} seed(s), chunks of {args.chunk_updates} updates")
    print(f"{'case':<36} {'steps/s':>10} {'overhead':>9}")
    for name, rate in medians.items():
        print(f"{name:<36} {rate:>10,.0f} {100 * (baseline - rate) / baseline:>8.1f}%")


if __name__ == "__main__":
    main()
