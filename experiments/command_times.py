"""How long the README's commands take here: the figures beside each command block.

Runs each command in a scratch directory (its own ``RLJAX_DATA_DIR``, so nothing of yours is
touched) for at most ``--cap`` seconds. A command that finishes reports its wall time; one that
does not reports the estimate from its last progress line (seconds so far + the runner's ETA),
which covers a GPU-scale preset without running it for hours.

    python experiments/command_times.py [--cap 90] [--only SUBSTRING]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

# Run in this order: later commands use what earlier ones wrote (datasets, run directories).
COMMANDS = [
    "rljax train ppo --env CartPole-v1 --out runs/cartpole",
    "rljax train ppo --env CartPole-v1 --seeds 4",
    "rljax train ppo --config {repo}/configs/ppo/brax_hopper.yaml",
    "rljax train ppo --env Pendulum-v1 --config {repo}/configs/ppo/pendulum.yaml --set lr=1e-3",
    "rljax sweep ppo --env CartPole-v1 --grid lr=1e-4,3e-4,1e-3 --grid clip_eps=0.1,0.2 --seeds 4",
    "rljax eval runs/cartpole --episodes 32 --deterministic",
    "rljax export runs/cartpole policy.jax",
    "rljax train c51 --config {repo}/configs/c51/cartpole.yaml --seeds 4",
    "rljax train qr_dqn --config {repo}/configs/qr_dqn/breakout_minatar.yaml",
    "rljax train dsac_t --config {repo}/configs/dsac_t/pendulum.yaml",
    "rljax data generate Pendulum-v1",  # runs to the end: the next commands need its data
    "rljax data info pendulum-medium-replay",
    "rljax train iql --dataset pendulum-medium-replay --seeds 4",
    "rljax sweep td3_bc --dataset pendulum-medium --grid alpha=1,2.5,10 --seeds 4",
    "rljax data generate rljax/PointMaze-medium --kind navigate",  # to the end, likewise
    "rljax train hiql --dataset pointmaze-medium-navigate-v0 --seeds 4",
]
# The runner's progress line: "[####----]  12.5%  ...  ETA 0:01:23".
PROGRESS = re.compile(r"(\d+\.\d)%.*ETA (\d+(?: days?, \d+)?:\d\d:\d\d)")


def seconds(eta: str) -> float:
    days = 0
    if "day" in eta:
        head, eta = eta.split(", ")
        days = int(head.split()[0])
    h, m, s = map(int, eta.split(":"))
    return timedelta(days=days, hours=h, minutes=m, seconds=s).total_seconds()


def run(command: str, cap: float | None, cwd: Path) -> str:
    start = time.perf_counter()
    # Its own process group, so a timeout stops the command and not just its shell.
    process = subprocess.Popen(
        command, shell=True, cwd=cwd, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        output = process.communicate(timeout=cap)[0]
        if process.returncode != 0:
            return f"failed ({process.returncode}): {output.strip().splitlines()[-1]}"
        return f"{time.perf_counter() - start:.0f} s"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate()[0]
    elapsed = time.perf_counter() - start
    lines = PROGRESS.findall(output)
    if not lines:
        return f"over {cap:.0f} s (no progress line to estimate from)"
    percent, eta = lines[-1]
    total = elapsed + seconds(eta)
    return f"about {timedelta(seconds=round(total))} (estimated at {percent}%)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap", type=float, default=90.0, help="seconds per command")
    parser.add_argument("--only", help="run only the commands containing this")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["RLJAX_DATA_DIR"] = str(Path(scratch) / "datasets")
        print(f"{os.cpu_count()} CPU cores, python {sys.version.split()[0]}")
        for command in COMMANDS:
            command = command.format(repo=repo)
            if args.only and args.only not in command:
                continue
            cap = None if "data generate" in command else args.cap
            print(f"{run(command, cap, Path(scratch)):>40}  {command}", flush=True)


if __name__ == "__main__":
    main()
