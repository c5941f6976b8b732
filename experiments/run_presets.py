"""Trains every preset under configs/ to its end and tabulates what it reached.

Each preset runs once through the CLI (``rljax train ALGO --config FILE``, its own seeds and
budget, nothing changed); the row gives the final return over its seeds (IQM, mean and each
seed), the wall time of the whole command and the device. Results go to ``--results`` (JSON, one
entry per preset), and a preset already there is not run again, so the script can be stopped
and started. Brax presets of more than a million env steps are sized for a GPU and are left
out on a CPU unless ``--all``; dataset presets train on ``--dataset`` (make it first:
``rljax data generate Pendulum-v1 --kind medium-replay``).

    python experiments/run_presets.py                        # every preset that fits a CPU
    python experiments/run_presets.py --only 'sac/*,dsac_t/*'
"""

import argparse
import fnmatch
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import yaml
from cli_runs import train_run

from rljax import agents, data
from rljax.runner import results

REPO = Path(__file__).resolve().parents[1]


def presets(only: str | None) -> list[Path]:
    found = sorted((REPO / "configs").glob("*/*.yaml"))
    if only is None:
        return found
    patterns = only.split(",")
    return [p for p in found if any(fnmatch.fnmatch(preset_name(p), pat) for pat in patterns)]


def preset_name(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def gpu_sized(spec: dict) -> bool:
    """A brax preset of more than a million env steps per seed: hours on a CPU."""
    steps = spec.get("agent", {}).get("total_timesteps", 0)
    return env_name(spec).startswith("brax/") and steps > 1_000_000


def env_name(spec: dict) -> str:
    """The preset's env; a dataset preset's env is the dataset's."""
    return spec.get("env", {}).get("name", "its dataset's")


def run_preset(path: Path, out: Path, dataset: str) -> dict:
    spec = yaml.safe_load(path.read_text())
    argv = ["train", spec["algo"], "--config", str(path)]
    if agents.declaration(spec["algo"]).from_dataset:
        argv += ["--dataset", str(data.resolve(dataset))]
    summary = train_run(argv, out / preset_name(path).replace("/", "-"))
    finals = np.array([row["final_return"] for row in summary["final_returns"]], float)
    return {
        "env": env_name(spec),
        "seeds": len(finals),
        "iqm": float(results.iqm(finals)),
        "mean": float(finals.mean()),
        "finals": finals.round(3).tolist(),
        "wall_seconds": round(summary["wall_seconds"], 1),
        "device": device(summary["environment"]),
    }


def device(environment: dict) -> str:
    """The accelerator's kind, or on a CPU backend the host's CPU and cores."""
    if environment["backend"] == "cpu":
        return f"CPU: {environment['host']}"
    return f"{environment['backend']}: {environment['device_kind']}"


def table(entries: dict) -> str:
    lines = [
        "| preset | env | seeds | final return: IQM (mean) | each seed | wall | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in sorted(entries.items()):
        if "iqm" not in e:
            lines.append(f"| `{name}` | {e['env']} | | not yet run: {e['why']} | | | |")
            continue
        seeds = ", ".join(f"{x:.4g}" for x in e["finals"])
        lines.append(
            f"| `{name}` | {e['env']} | {e['seeds']} | {e['iqm']:.4g} ({e['mean']:.4g}) | "
            f"{seeds} | {e['wall_seconds'] / 60:.1f} min | {e['device']} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated globs of ALGO/PRESET, e.g. 'sac/*'")
    parser.add_argument("--all", action="store_true", help="brax presets too, on any device")
    parser.add_argument("--dataset", default="pendulum-medium-replay", help="for dataset presets")
    parser.add_argument("--results", type=Path, default=Path("runs/presets.json"))
    parser.add_argument("--out", type=Path, help="run directories (default: a temporary dir)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="rljax-presets-"))
    entries = json.loads(args.results.read_text()) if args.results.exists() else {}
    on_cpu = jax.default_backend() == "cpu"
    for path in presets(args.only):
        name = preset_name(path)
        if "iqm" in entries.get(name, {}):
            continue
        spec = yaml.safe_load(path.read_text())
        if on_cpu and not args.all and gpu_sized(spec):
            entries[name] = {"env": env_name(spec), "why": "sized for a GPU"}
            continue
        print(f"== {name}", flush=True)
        entries[name] = run_preset(path, out, args.dataset)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(entries, indent=1))
    print(table(entries))


if __name__ == "__main__":
    main()
