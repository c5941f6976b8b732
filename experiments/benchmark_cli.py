"""What the command line costs over the bare function: whole processes, timed from outside.

Runs, in turn and ``--pairs`` times, ``rljax train ppo --env CartPole-v1`` (into a scratch
directory, the compile cache off) and a bare script that imports the same agent and env, jits
``ppo.train`` at the same config and runs it to the end; and, for reference, the bare script
ending in ``os._exit`` as the command does (it skips the interpreter's teardown). Each process's
wall time and peak memory come from ``/usr/bin/time -v`` where it exists (else the wall clock
and the largest child's peak so far). Prints each pair and the medians and their ratio.

    python experiments/benchmark_cli.py [--pairs 5]
"""

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """
import jax
from rljax import envs
from rljax.agents import ppo

env, params = envs.make("CartPole-v1")
config = ppo.Config()
jax.block_until_ready(jax.jit(lambda key: ppo.train(config, env, params, key))(jax.random.key(0)))
"""
BARE_EXIT = BARE + "import os, sys\nsys.stdout.flush()\nos._exit(0)\n"


def measure(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one process."""
    timer = shutil.which("time", path="/usr/bin")
    if timer:
        done = subprocess.run(
            [timer, "-v", *command], env=env, capture_output=True, text=True, check=True
        )
        wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
        hours, minutes, seconds = wall.groups()
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds), int(peak[1]) / 1024
    start = time.perf_counter()
    subprocess.run(command, env=env, capture_output=True, check=True)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs={args.pairs} must be at least 1")
    env = {**os.environ, "RLJAX_CACHE_DIR": ""}  # every process compiles
    rljax = shutil.which("rljax", path=str(Path(sys.executable).parent)) or "rljax"
    times = {"rljax train": [], "bare script": [], "bare, os._exit": []}
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(args.pairs):
            out = Path(scratch) / f"run{pair}"
            commands = {
                "rljax train": [rljax, "train", "ppo", "--env", "CartPole-v1", "--out", str(out)],
                "bare script": [sys.executable, "-c", BARE],
                "bare, os._exit": [sys.executable, "-c", BARE_EXIT],
            }
            row = []
            for name, command in commands.items():
                wall, peak = measure(command, env)
                times[name].append((wall, peak))
                row.append(f"{name} {wall:.2f} s {peak:,.0f} MiB")
            print(f"pair {pair + 1}: " + ", ".join(row), flush=True)
    medians = {
        name: [statistics.median(x) for x in zip(*runs, strict=True)]
        for name, runs in times.items()
    }
    for name, (wall, peak) in medians.items():
        print(f"median {name}: {wall:.2f} s, {peak:,.0f} MiB")
    cli = medians["rljax train"][0]
    print(
        f"rljax train / bare script: {cli / medians['bare script'][0]:.3f}x the time; "
        f"/ bare with os._exit: {cli / medians['bare, os._exit'][0]:.3f}x"
    )


if __name__ == "__main__":
    main()
