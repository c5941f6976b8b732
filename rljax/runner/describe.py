"""What the library offers, as the text ``rljax agents``, ``rljax fields`` and ``rljax data list``
print: the agents by what they learn from, an agent's config fields, the local datasets.

Everything here reads the agents' declarations and the data directories; nothing is traced.
"""

import dataclasses

from rljax import agents, data
from rljax.runner.config import is_static

# What an agent learns from, as the heading of its group in ``rljax agents``.
SOURCE_HEADINGS = {
    agents.ENV: "learn from an env (rljax train ALGO --env ENV)",
    agents.DATASET: "learn from a dataset (rljax train ALGO --dataset NAME)",
    agents.DATASET_THEN_ENV: (
        "learn from a dataset, then an env (rljax train ALGO --dataset NAME --offline-steps N "
        "--online-steps M; without --online-steps, offline only)"
    ),
    agents.MODEL_THEN_DATASET: (
        "fit a dynamics model to a dataset, then learn from both (rljax train ALGO --dataset NAME "
        "--model-steps K --offline-steps N)"
    ),
}
GOAL_MARK = "goal-conditioned"


def agents_text() -> list[str]:
    """Every agent grouped by what it learns from, goal-conditioned ones marked, with its
    paper."""
    declared = [agents.declaration(name) for name in agents.names()]
    width = max(len(d.name) for d in declared)
    lines = []
    for source, heading in SOURCE_HEADINGS.items():
        group = [d for d in declared if d.learns_from == source]
        marked = any(d.goal_conditioned for d in group)  # a column only where it says something
        if group:
            lines.append(f"{heading}:")
            for d in sorted(group, key=lambda d: (d.goal_conditioned, d.name)):
                mark = f"{GOAL_MARK if d.goal_conditioned else '':<{len(GOAL_MARK)}}  "
                lines.append(f"  {d.name:<{width}}  {mark if marked else ''}{d.paper}")
    return lines


def fields_text(name: str) -> list[str]:
    """Agent ``name``'s config fields in declaration order: default, allowed values, traced or
    static, and meaning; with the budget field and how to set and sweep fields."""
    declared = agents.declaration(name)
    rows = [("field", "default", "allowed", "kind", "meaning")]
    for field in dataclasses.fields(declared.module.Config):
        kind = "static" if is_static(field) else "traced"
        if field.name == declared.budget_field:
            kind += ", budget"
        rows.append(
            (field.name, _value(field.default), _allowed(field), kind, field.metadata["doc"])
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{declared.name}: {declared.paper}"]
    lines += ["  " + "  ".join([*map(str.ljust, row, widths), row[-1]]) for row in rows]
    unit = "gradient steps" if declared.from_dataset else "env steps"
    return lines + [
        f"set a field with --set FIELD=VALUE; the budget, {declared.budget_field} ({unit}), "
        "also with --total-steps N.",
        "traced fields can be swept in one compiled program: "
        f"rljax sweep {declared.name} --grid FIELD=V1,V2,...",
        "static fields set shapes or the program's structure: changing one recompiles.",
    ]


def datasets_text() -> list[str]:
    """The local datasets, one row each, or where they were looked for when there are none."""
    found = data.local_datasets()
    if not found:
        where = "\n".join(f"  {d}" for d in data.dataset_dirs())
        return [
            f"no datasets found; looked in:\n{where}",
            "make one with 'rljax data generate ENV' (see its --help), or copy dataset files "
            "into one of these directories",
        ]
    header = ("name", "layout", "size", "env", "kind")
    rows = [header] + [
        (d["name"], d["layout"], _size(d["bytes"]), d["env"] or "-", d["kind"] or "-")
        for d in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(map(str.ljust, row, widths)).rstrip() for row in rows]


def _value(value) -> str:
    """A default as ``--set`` takes it: YAML-like lists and booleans."""
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _allowed(field: dataclasses.Field) -> str:
    choices, bounds = field.metadata.get("choices"), field.metadata.get("bounds")
    if choices:
        return "|".join(map(str, choices))
    return bounds or "-"


def _size(num_bytes: int) -> str:
    """Bytes in binary units: 512 B, 1.5 KiB, 20.0 MiB."""
    if num_bytes < 1024:
        return f"{num_bytes} B"
    size = num_bytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
