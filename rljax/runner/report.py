"""What a run tells: the progress line, diverged members, and the summary, ranking and curves.

Everything here reads a Program and host-side metrics; nothing trains.
"""

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from rljax import data
from rljax.runner import config as config_lib
from rljax.runner import metadata, results
from rljax.runner.distributed import is_primary


def failure_text(program, member: int, failure: tuple) -> str:
    config_index, seed_index = program.members[member]
    quantities, update = failure
    verb = "is" if len(quantities) == 1 else "are"
    return (
        f"member {member} (config {config_index}, seed {program.spec.seed + seed_index}): "
        f"{', '.join(quantities)} {verb} not finite at update {update}"
    )


def failures_text(program, failures: dict) -> str:
    return "; ".join(failure_text(program, m, failures[m]) for m in sorted(failures))


def progress(program, done, metrics, steps_per_second, eta_seconds) -> str:
    fraction = done / program.base.num_updates
    bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
    line = (
        f"[{bar}] {100 * fraction:5.1f}%  {done * program.steps_per_update:,} {program.unit}/member"
    )
    line += f"  {steps_per_second:,.0f} {program.unit}/s"
    if "episode_return" in metrics:
        episodes = metrics["episodes"]
        if episodes.sum() > 0:
            mean = (np.nan_to_num(metrics["episode_return"]) * episodes).sum() / episodes.sum()
            line += f"  return {mean:.1f}"
            if program.references is not None:
                line += f"  score {float(data.normalized_score(mean, *program.references)):.1f}"
    return line + f"  ETA {datetime.timedelta(seconds=round(eta_seconds))}"


def finish(program, out: Path, table: dict, timing: dict, failures: dict, print_fn) -> dict:
    """Writes curve.png, summary.json and, for sweeps, sweep.csv; returns the summary."""
    spec, members, num_updates = program.spec, program.members, program.base.num_updates
    summary = {
        "algo": spec.algo,
        "env": spec.env["name"],
        "run": dataclasses.asdict(spec),
        "resolved": config_lib.as_dict(program.base),
        "environment": metadata.environment(),
        "num_updates": num_updates,
        "env_steps_per_member": (
            None if program.agent.from_dataset else num_updates * program.steps_per_update
        ),
        **timing,
        "failed": {str(m): failure_text(program, m, f) for m, f in sorted(failures.items())},
    }
    if "episode_return" in table:
        shape = (len(members), num_updates)
        returns = table["episode_return"].reshape(shape)
        episodes = table["episodes"].reshape(shape)
        final = results.final_returns(returns, episodes)
        final[list(failures)] = np.nan
        score = _score(program)
        summary["final_returns"] = [
            {"member": m, "config": c, "seed": spec.seed + s, **_point(spec, c),
             "final_return": _number(final[m]), "failed": m in failures}
            | ({"final_score": _number(score(final[m]))} if program.references else {})
            for m, (c, s) in enumerate(members)
        ]  # fmt: skip
        steps = np.arange(1, num_updates + 1) * program.steps_per_update
        if program.agent.from_dataset:  # the evaluations after each chunk, unsmoothed
            evaluated = episodes[0] > 0
            steps, curves = steps[evaluated], score(returns[:, evaluated])
        else:
            curves = results.smoothed_returns(returns, episodes, max(1, num_updates // 50))
        by_config = {
            _label(spec, c): curves[[m for m, (ci, _) in enumerate(members) if ci == c]]
            for c in range(len(program.configs))
        }
        if is_primary():
            title = f"{spec.algo} on {spec.dataset or spec.env['name']}"
            ylabel = "normalized score" if program.references else "episode return"
            results.plot_curves(out / "curve.png", steps, by_config, title, program.unit, ylabel)
        name = "final normalized score" if program.references else "final return"
        summary["ranking"] = _rank(spec, members, score(final), failures, out, print_fn, name)
    if is_primary():
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_fn(f"results in {out}: summary.json, metrics.csv, curve.png, checkpoints/")
    return summary


def _score(program):
    """Returns to normalized scores where the dataset has references, else unchanged."""
    if program.references is None:
        return lambda returns: returns
    return lambda returns: data.normalized_score(returns, *program.references)


def _rank(spec, members, final, failures, out: Path, print_fn, name: str) -> list[dict]:
    """Configs ranked by the IQM over seeds of their final return (or score), with a CI.

    Diverged seeds are left out of the statistics and counted in ``failed``.
    """
    header = ["config", *spec.grid, "seeds", "failed", "iqm", "ci_low", "ci_high", "mean"]
    rows = []
    for c in range(max(ci for ci, _ in members) + 1):
        own = [m for m, (ci, _) in enumerate(members) if ci == c]
        values = final[own][np.isfinite(final[own])]
        failed = sum(m in failures for m in own)
        row = {"config": c, **_point(spec, c), "seeds": len(own), "failed": failed}
        if len(values):
            low, high = results.bootstrap_ci(values, results.iqm)
            row.update(iqm=float(results.iqm(values)), ci_low=float(low), ci_high=float(high),
                       mean=float(values.mean()))  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda row: -row.get("iqm", -np.inf))
    if spec.grid and is_primary():
        lines = [",".join(header)]
        lines += [",".join(str(row.get(h, "")) for h in header) for row in rows]
        (out / "sweep.csv").write_text("\n".join(lines) + "\n")
    print_fn(f"{name} (IQM over seeds, 95% bootstrap CI):")
    for row in rows:
        point = " ".join(f"{k}={row[k]}" for k in spec.grid) or spec.algo
        failed = f"  ({row['failed']} of {row['seeds']} seeds failed)" if row["failed"] else ""
        if "iqm" in row:
            interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            print_fn(f"  {point:<36} {row['iqm']:9.2f}  {interval}{failed}")
        else:
            print_fn(f"  {point:<36} {'failed' if failed else 'no finished episodes'}{failed}")
    return rows


def _point(spec, config_index: int) -> dict:
    return config_lib.grid_points(spec.grid)[config_index] if spec.grid else {}


def _label(spec, config_index: int) -> str:
    return " ".join(f"{k}={v}" for k, v in _point(spec, config_index).items()) or spec.algo


def _number(x) -> float | None:
    return float(x) if np.isfinite(x) else None
