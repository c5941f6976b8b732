"""Bad inputs and faults, each run through the CLI in a fresh process; what the user sees.

Every case runs ``python -m rljax.cli ...`` in its own temporary directory (the fixtures it
needs are copied there) and prints the exit code, the seconds until the process ended, the
first ``rljax:`` line of stderr (else its first line; in brackets, how many lines stderr had)
and a verdict:

  named error   exit 2 (or 1) with a one-line ``rljax: error: ...``, no traceback
  recovery      a documented recovery: exit 0 with a warning line (a corrupt checkpoint
                replaced by the one before it), or a valid input that must succeed did
  SILENT        exit 0 for an input that should have been refused, with nothing said
  TRACEBACK     a Python traceback reached the terminal
  HANG          no exit within the case's time limit (killed)
  WRONG         a valid input (one that must succeed) was refused
  UNCLEAR       a non-zero exit with neither an ``rljax:`` line nor a traceback

    python experiments/bad_inputs.py                    # every case
    python experiments/bad_inputs.py --cases dataset    # cases whose name contains "dataset"
    python experiments/bad_inputs.py --list
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
TINY = ["--total-steps", "2048", "--set", "num_envs=4", "--set", "num_steps=16"]
TINY += ["--chunk-updates", "8"]
PPO = ["train", "ppo", "--env", "CartPole-v1"]
IQL = ["train", "iql", "--total-steps", "64", "--set", "batch_size=8", "--chunk-updates", "32"]
METADATA_ATTR = "rljax_metadata"  # rljax.data.d4rl's; written here without importing rljax


@dataclasses.dataclass
class Case:
    name: str
    # (case directory, fixtures) -> argv lists; two or more are started together
    argvs: Callable[[Path, dict], list[list[str]]]
    expect: str = "error"  # "error", "success" (must exit 0), "recovery" (0 with a warning)
    timeout: float = 120.0


@dataclasses.dataclass
class Outcome:
    returncode: int | None  # None: killed at the time limit
    stderr: str
    seconds: float


def cli(tmp: Path, *args: str) -> list[list[str]]:
    return [list(args)]


def _copy(source: Path, tmp: Path, name: str = "run") -> Path:
    target = tmp / name
    shutil.copytree(source, target)
    return target


def _under_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a directory\n")
    return tmp / "a_file" / "sub"


def _unwritable(tmp: Path) -> Path:
    """A directory nobody may write to; root ignores permissions, so for root a path under a
    regular file (which no one can create)."""
    if os.geteuid() == 0:
        return _under_file(tmp)
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "sub"


def _flip_latest_checkpoint(run: Path) -> None:
    """Flips 64 bytes in the middle of the largest file of the newest checkpoint step."""
    steps = [p for p in (run / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit()]
    latest = max(steps, key=lambda p: int(p.name))
    largest = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(largest.read_bytes())
    middle = len(raw) // 2
    for i in range(middle, min(middle + 64, len(raw))):
        raw[i] ^= 0xFF
    largest.write_bytes(bytes(raw))


CASES = [
    Case("unknown algorithm", lambda t, f: cli(t, "train", "nope", "--env", "CartPole-v1")),
    Case("unknown env", lambda t, f: cli(t, "train", "ppo", "--env", "Nope-v0", *TINY)),
    Case("unknown field", lambda t, f: cli(t, *PPO, "--set", "nope=1", *TINY)),
    Case("out-of-range field lr=-1", lambda t, f: cli(t, *PPO, "--set", "lr=-1", *TINY)),
    Case(
        "static-field sweep num_envs",
        lambda t, f: cli(t, "sweep", "ppo", "--env", "CartPole-v1", "--grid", "num_envs=4,8"),
    ),
    Case("env.reward_gamma=2", lambda t, f: cli(t, *PPO, "--set", "env.reward_gamma=2", *TINY)),
    Case(
        "env.max_steps_in_episode=-5",
        lambda t, f: cli(t, *PPO, "--set", "env.max_steps_in_episode=-5", *TINY),
    ),
    Case(
        "env.normalize_obs=maybe",
        lambda t, f: cli(t, *PPO, "--set", "env.normalize_obs=maybe", *TINY),
    ),
    Case("hidden_sizes=[-4,8]", lambda t, f: cli(t, *PPO, "--set", "hidden_sizes=[-4,8]", *TINY)),
    Case(
        "--total-steps 1e30",
        lambda t, f: cli(t, *PPO, "--total-steps", "1e30", "--out", str(t / "run")),
        timeout=60,
    ),
    Case(
        "--resume of a missing dir",
        lambda t, f: cli(t, *PPO, *TINY, "--resume", "--out", str(t / "missing")),
    ),
    Case(
        "existing --out without --resume",
        lambda t, f: cli(t, *PPO, *TINY, "--set", "lr=1e-3", "--out", str(_copy(f["run"], t))),
    ),
    Case(
        "--out under a regular file", lambda t, f: cli(t, *PPO, *TINY, "--out", str(_under_file(t)))
    ),
    Case(
        "--wandb without wandb",
        lambda t, f: cli(t, *PPO, *TINY, "--wandb", "proj", "--out", str(t / "run")),
    ),
    Case("missing dataset", lambda t, f: cli(t, *IQL, "--dataset", str(t / "missing.hdf5"))),
    Case("empty dataset", lambda t, f: cli(t, *IQL, "--dataset", str(f["empty"]))),
    Case("one-row dataset", lambda t, f: cli(t, *IQL, "--dataset", str(f["one_row"]))),
    Case("NaN dataset", lambda t, f: cli(t, *IQL, "--dataset", str(f["nan"]))),
    Case("bytes-observation dataset", lambda t, f: cli(t, *IQL, "--dataset", str(f["bytes"]))),
    Case(
        "data generate into unwritable dir",
        lambda t, f: cli(
            t, "data", "generate", "Pendulum-v1", "--kind", "random", "--out", str(_unwritable(t))
        ),
        timeout=90,
    ),
    Case(
        "data generate over an existing file",
        lambda t, f: cli(
            t,
            "data",
            "generate",
            "Pendulum-v1",
            "--kind",
            "random",
            "--out",
            str(_copy(f["generated_dir"], t, "data")),
        ),  # fmt: skip
        timeout=90,
    ),
    Case("eval of a non-run dir", lambda t, f: cli(t, "eval", str(t), "--episodes", "2")),
    Case(
        "eval with a corrupt checkpoint",
        lambda t, f: cli(t, "eval", str(_corrupted(f["run"], t)), "--episodes", "2"),
        expect="recovery",
    ),
    Case(
        "resume with lr=0.001 (started 1e-3)",
        lambda t, f: cli(
            t, *PPO, *TINY, "--set", "lr=0.001", "--resume", "--out", str(_copy(f["run"], t))
        ),
        expect="success",
    ),
    Case(
        "two runs into the same --out at once",
        lambda t, f: [[*PPO, *TINY, "--seed", str(s), "--out", str(t / "run")] for s in (0, 1)],
    ),
]


def _corrupted(run: Path, tmp: Path) -> Path:
    copy = _copy(run, tmp)
    _flip_latest_checkpoint(copy)
    return copy


def _write_dataset(path: Path, n: int, obs_dtype=np.float32, nan: bool = False) -> Path:
    """A Pendulum-v1 D4RL file with ``n`` rows, written with h5py, so it can be malformed."""
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
        "next_observations": rng.normal(size=(n, 3)).astype(np.float32),
    }
    if n:
        arrays["timeouts"][-1] = True
    if nan:
        arrays["observations"][n // 2, 0] = np.nan
    if obs_dtype is bytes:
        arrays["observations"] = np.array([b"obs%d" % i for i in range(n)], dtype="S8")
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        f.attrs[METADATA_ATTR] = json.dumps({"env": "Pendulum-v1", "policy": "fixture"})
    return path


def build_fixtures(root: Path) -> dict:
    """A tiny PPO run (started with lr=1e-3, a checkpoint after every chunk), malformed
    datasets, and a directory holding the file ``data generate Pendulum-v1 --kind random``
    would write."""
    root.mkdir(parents=True)
    fixtures = {"run": root / "run"}
    start = time.perf_counter()
    argv = [*PPO, *TINY, "--set", "lr=1e-3", "--checkpoint-seconds", "0"]
    made = _run([argv + ["--out", str(fixtures["run"])]], root, 300)[0]
    if made.returncode != 0:
        sys.exit(f"the tiny PPO fixture failed (exit {made.returncode}):\n{made.stderr}")
    for key, n, kwargs in [
        ("empty", 0, {}),
        ("one_row", 1, {}),
        ("nan", 100, {"nan": True}),
        ("bytes", 100, {"obs_dtype": bytes}),
    ]:
        fixtures[key] = _write_dataset(root / f"{key}.hdf5", n, **kwargs)
    fixtures["generated_dir"] = root / "generated"
    code = (
        "import sys; from rljax.generate import d4rl; "
        "print(d4rl.paths('Pendulum-v1', sys.argv[1], ['random'])['random'])"
    )
    target = subprocess.run(
        [sys.executable, "-c", code, str(fixtures["generated_dir"])],
        capture_output=True, text=True, check=True, cwd=root,
    ).stdout.strip()  # fmt: skip
    fixtures["generated_dir"].mkdir()
    _write_dataset(Path(target), 100)
    print(f"fixtures in {root} ({time.perf_counter() - start:.1f}s)\n")
    return fixtures


def _run(argvs: list[list[str]], cwd: Path, timeout: float) -> list[Outcome]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rljax.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for argv in argvs
    ]
    outcomes = []
    for proc in procs:
        try:
            remaining = max(0.1, timeout - (time.perf_counter() - start))
            _, err = proc.communicate(timeout=remaining)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            code = None
        outcomes.append(Outcome(code, err, time.perf_counter() - start))
    return outcomes


def _first_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if line.startswith("rljax")]
    line = (named or lines or [""])[0]
    return line if len(line) <= 110 else line[:107] + "..."


def _named(stderr: str) -> bool:
    # rljax's own "rljax: error: ..." and argparse's "rljax train: error: ..."
    return bool(re.search(r"^rljax( \w+)*: error: ", stderr, re.MULTILINE))


def _warned(stderr: str) -> bool:
    return bool(re.search(r"^rljax: (warning|recovered)|warning", stderr, re.MULTILINE | re.I))


def verdict(case: Case, outcomes: list[Outcome]) -> tuple[str, Outcome]:
    """The verdict, and the outcome it rests on (for two processes: the one that failed)."""
    failed = [o for o in outcomes if o.returncode != 0]
    shown = failed[0] if failed else outcomes[0]
    if any("Traceback (most recent call last)" in o.stderr for o in outcomes):
        return "TRACEBACK", shown
    if any(o.returncode is None for o in outcomes):
        return "HANG", shown
    if not failed:
        if case.expect == "success":
            return "recovery", shown
        if case.expect == "recovery" and _warned(shown.stderr):
            return "recovery", shown
        return "SILENT", shown
    if case.expect == "success":
        return "WRONG", shown
    return ("named error" if _named(shown.stderr) else "UNCLEAR"), shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="run only the cases whose name contains this (any case)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or args.cases.lower() in c.name.lower()]
    if args.list or not cases:
        print("\n".join(c.name for c in CASES))
        return
    if any("wandb" in c.name for c in cases) and importlib.util.find_spec("wandb"):
        print("wandb is installed: skipping '--wandb without wandb'")
        cases = [c for c in cases if "wandb" not in c.name]
    rows = []
    with tempfile.TemporaryDirectory(prefix="rljax-bad-inputs-") as root:
        fixtures = build_fixtures(Path(root) / "fixtures")
        print(f"{'case':38} {'exit':>5} {'secs':>6}  {'verdict':12} first stderr line [lines]")
        for i, case in enumerate(cases):
            tmp = Path(root) / f"case{i:02d}"
            tmp.mkdir()
            outcomes = _run(case.argvs(tmp, fixtures), tmp, case.timeout)
            word, shown = verdict(case, outcomes)
            codes = "/".join("-" if o.returncode is None else str(o.returncode) for o in outcomes)
            lines = len(shown.stderr.splitlines())
            print(
                f"{case.name:38} {codes:>5} {shown.seconds:6.1f}  {word:12} "
                f"{_first_line(shown.stderr)} [{lines}]",
                flush=True,
            )
            rows.append((word, shown))
            for path in Path(tmp).rglob("*"):  # let the temp dir go even after chmod 0o500
                if path.is_dir():
                    path.chmod(0o700)
    words = [w for w, _ in rows]
    fail_times = [o.seconds for w, o in rows if o.returncode not in (0, None)]
    median = f"{statistics.median(fail_times):.1f}s" if fail_times else "n/a"
    other = len(words) - sum(words.count(w) for w in ("named error", "recovery", "SILENT"))
    other -= words.count("TRACEBACK")
    print(
        f"\n{len(words)} cases: {words.count('named error')} named errors, "
        f"{words.count('recovery')} recoveries, {words.count('SILENT')} silent, "
        f"{words.count('TRACEBACK')} tracebacks, {other} other (hang, wrong, unclear); "
        f"median time to fail {median}"
    )


if __name__ == "__main__":
    main()
