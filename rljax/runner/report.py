"""What a run tells: the progress line, diverged members, the summary, ranking and curves, and
what ``rljax eval`` reports.

Everything here reads a Program and host-side metrics or evaluation returns; nothing trains.
"""

import dataclasses
import datetime
import json
from pathlib import Path

import numpy as np

from rljax import data
from rljax.runner import checkpoint, metadata, results
from rljax.runner import config as config_lib
from rljax.runner import evaluation as evaluation_lib
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


# What a run's episode returns are reported as (``measured``).
RETURN, SCORE, SUCCESS = "episode return", "normalized score", "success rate"


def measured(program):
    """(name, returns -> values): what a run's returns are reported as. A goal-conditioned
    agent's returns are successes, a success rate even where its maze dataset's references
    (0, 1) would make it a normalized score; other dataset runs with references report a
    normalized score; the rest their episode return."""
    if program.agent.goal_conditioned:
        return SUCCESS, np.asarray
    if program.references is not None:
        return SCORE, _score(program)
    return RETURN, np.asarray


def progress(program, done, metrics, steps_per_second, eta_seconds) -> str:
    fraction = done / program.num_updates
    bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
    unit = program.unit(done)
    line = f"[{bar}] {100 * fraction:5.1f}%  {int(program.steps(done)):,} {unit}/member"
    line += f"  {steps_per_second:,.0f} {unit}/s"
    if "episode_return" in metrics:
        episodes = metrics["episodes"]
        if episodes.sum() > 0:
            mean = (np.nan_to_num(metrics["episode_return"]) * episodes).sum() / episodes.sum()
            name, measure = measured(program)
            if name == SUCCESS:
                line += f"  success {mean:.2f}"
            else:
                line += f"  return {mean:.1f}"
            if name == SCORE:
                line += f"  score {float(measure(mean)):.1f}"
    return line + f"  ETA {datetime.timedelta(seconds=round(eta_seconds))}"


def finish(program, out: Path, table: dict, timing: dict, failures: dict, print_fn) -> dict:
    """Writes curve.png, summary.json and, for sweeps, sweep.csv; returns the summary."""
    spec, members, num_updates = program.spec, program.members, program.num_updates
    env_steps = None if program.agent.from_dataset else num_updates * program.steps_per_update
    first, boundary = program.phases[0], program.boundary
    if program.agent.fine_tunes and boundary is not None:
        env_steps = program.base.online_steps
    summary = {
        "algo": spec.algo,
        "env": spec.env["name"],
        "run": dataclasses.asdict(spec),
        "resolved": config_lib.as_dict(program.base),
        "environment": metadata.environment(),
        "num_updates": num_updates,
        "env_steps_per_member": env_steps,
        **({f"{first.name}_updates": boundary} if boundary is not None else {}),
        **timing,
        "failed": {str(m): failure_text(program, m, f) for m, f in sorted(failures.items())},
    }
    if "episode_return" in table:
        shape = (len(members), num_updates)
        returns = table["episode_return"].reshape(shape)
        episodes = table["episodes"].reshape(shape)
        final = results.final_returns(returns, episodes)
        final[list(failures)] = np.nan
        name, measure = measured(program)
        summary["final_returns"] = [
            {"member": m, "config": c, "seed": spec.seed + s, **_point(spec, c),
             **_final(program, "final", final[m]), "failed": m in failures}
            for m, (c, s) in enumerate(members)
        ]  # fmt: skip
        if boundary is not None and first.evaluates:  # and each member's last evaluation
            before = slice(0, boundary)  # of the first phase
            at_boundary = results.final_returns(returns[:, before], episodes[:, before])
            for row, value in zip(summary["final_returns"], at_boundary, strict=True):
                row |= _final(program, f"{first.name}_final", value)
        steps = program.steps(np.arange(1, num_updates + 1))
        if program.agent.from_dataset:  # the evaluations after each chunk, unsmoothed
            evaluated = episodes[0] > 0
            steps, curves = steps[evaluated], measure(returns[:, evaluated])
        else:
            curves = results.smoothed_returns(returns, episodes, max(1, num_updates // 50))
        by_config = {_label(spec, c): curves[_own(members, c)] for c in range(len(program.configs))}
        if is_primary():
            title = f"{spec.algo} on {spec.dataset or spec.env['name']}"
            marked = None if boundary is None else program.steps(boundary)
            results.plot_curves(
                out / "curve.png", steps, by_config, title, program.axis_label(), name,
                boundary=marked,
            )  # fmt: skip
        summary["ranking"] = _rank(spec, members, measure(final), failures, out, print_fn, name)
    if is_primary():
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_fn(f"results in {out}: summary.json, metrics.csv, curve.png, checkpoints/")
    return summary


def _final(program, prefix: str, value: float) -> dict:
    """``{prefix}_return`` and, with the dataset's references, ``{prefix}_score``."""
    row = {f"{prefix}_return": _number(value)}
    if program.references:
        row[f"{prefix}_score"] = _number(_score(program)(value))
    return row


def _score(program):
    """Returns to normalized scores with the dataset's references."""
    return lambda returns: data.normalized_score(returns, *program.references)


def _rank(spec, members, final, failures, out: Path, print_fn, name: str) -> list[dict]:
    """Configs ranked by the IQM over seeds of their final return (or score), with a CI.

    Diverged seeds are left out of the statistics and counted in ``failed``.
    """
    header = ["config", *spec.grid, "seeds", "failed", "iqm", "ci_low", "ci_high", "mean"]
    rows = []
    for c in range(max(ci for ci, _ in members) + 1):
        own = _own(members, c)
        failed = sum(m in failures for m in own)
        row = {"config": c, **_point(spec, c), "seeds": len(own), "failed": failed}
        rows.append(row | results.seed_statistics(final[own]))
    rows.sort(key=lambda row: -row.get("iqm", -np.inf))
    if spec.grid and is_primary():
        lines = [",".join(header)]
        lines += [",".join(str(row.get(h, "")) for h in header) for row in rows]
        (out / "sweep.csv").write_text("\n".join(lines) + "\n")
    print_fn(f"final {name} (IQM over seeds, 95% bootstrap CI):")
    for row in rows:
        failed = f"  ({row['failed']} of {row['seeds']} seeds failed)" if row["failed"] else ""
        empty = "failed" if failed else "no finished episodes"
        print_fn(_statistics_text(_label(spec, row["config"]), row, empty, failed))
    return rows


def evaluation(run_dir, program, returns: np.ndarray, step: int, options: dict) -> dict:
    """What ``rljax eval`` reports and writes to eval.json: the evaluation ``options``
    (episodes, deterministic, seed), each member's episode returns (with its normalized score,
    or its success rate overall and per task) and, per config, the IQM over seeds with a 95%
    bootstrap CI of what the run is measured in (``measured``)."""
    spec, members = program.spec, program.members
    name, measure = measured(program)
    returns = np.asarray(returns, dtype=np.float64)
    value = measure(returns.mean(axis=1))  # per member
    tasks = evaluation_lib.task_means(returns, program.env) if name == SUCCESS else None
    rows = []
    for m, (c, s) in enumerate(members):
        row = {"member": m, "config": c, "seed": spec.seed + s, **_point(spec, c),
               "returns": _numbers(returns[m]), "return": _number(returns[m].mean())}  # fmt: skip
        if name == SCORE:
            row["score"] = _number(value[m])
        if name == SUCCESS:
            row |= {"success": _number(value[m]), "task_success": _numbers(tasks[m])}
        rows.append(row)
    configs = []
    for c in range(len(program.configs)):
        own = _own(members, c)
        row = {"config": c, "label": _label(spec, c), **_point(spec, c), "seeds": len(own)}
        row |= results.seed_statistics(value[own])
        if name == SUCCESS:
            row["tasks"] = [results.seed_statistics(t) for t in tasks[own].T]
        configs.append(row)
    return {
        "run_dir": str(run_dir), "algo": spec.algo, "env": spec.env["name"],
        "dataset": spec.dataset, "update": step, "options": options,
        "measure": name, "references": program.references if name == SCORE else None,
        "members": rows, "configs": configs,
    }  # fmt: skip


def evaluation_text(report: dict, members: bool = False) -> list[str]:
    """The lines ``rljax eval`` prints of an ``evaluation`` report; ``members``: one per member."""
    options, name = report["options"], report["measure"]
    mode = "deterministic" if options["deterministic"] else "stochastic"
    per = " per task" if name == SUCCESS else ""
    lines = [
        f"{report['run_dir']}: update {report['update']}, {options['episodes']} {mode} "
        f"episode{'s' * (options['episodes'] > 1)}{per} per member "
        f"(evaluation seed {options['seed']})"
    ]
    for row in report["members"] if members else []:
        line = f"  member {row['member']} (config {row['config']}, seed {row['seed']}): "
        if name == SUCCESS:
            tasks = " ".join(_text(x) for x in row["task_success"])
            line += f"success {_text(row['success'])} (per task {tasks})"
        else:
            returns = np.array(row["returns"], dtype=np.float64)  # None (not finite) -> NaN
            line += f"return {returns.mean():.2f} +- {returns.std():.2f}"
        if name == SCORE:
            line += f", normalized score {_text(row['score'], '.1f')}"
        lines.append(line)
    lines.append(f"{name} (IQM over seeds, 95% bootstrap CI):")
    for row in report["configs"]:
        seeds = f"  ({row['seeds']} seed{'s' * (row['seeds'] > 1)})"
        lines.append(_statistics_text(row["label"], row, "no finite returns", seeds))
        if name == SUCCESS:
            tasks = "  ".join(f"{t} {_text(s.get('iqm'))}" for t, s in enumerate(row["tasks"], 1))
            lines.append(f"  {'':<36} per task: {tasks}")
    return lines


def write_json(path: Path, record: dict) -> None:
    """Writes ``record`` to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomically(path, json.dumps(record, indent=2) + "\n")


def _statistics_text(label: str, row: dict, empty: str, note: str = "") -> str:
    if "iqm" not in row:
        return f"  {label:<36} {empty}{note}"
    interval = f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return f"  {label:<36} {row['iqm']:9.2f}  {interval}{note}"


def _own(members, config_index: int) -> list[int]:
    """The members of one config."""
    return [m for m, (c, _) in enumerate(members) if c == config_index]


def _point(spec, config_index: int) -> dict:
    return config_lib.grid_points(spec.grid)[config_index] if spec.grid else {}


def _label(spec, config_index: int) -> str:
    return " ".join(f"{k}={v}" for k, v in _point(spec, config_index).items()) or spec.algo


def _number(x) -> float | None:
    return float(x) if np.isfinite(x) else None


def _numbers(xs) -> list[float | None]:
    return [_number(x) for x in xs]


def _text(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)
