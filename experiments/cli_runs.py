"""What the comparison scripts share: one run through the rljax CLI, its summary back."""

import json
import time
from pathlib import Path

from rljax import cli


def train_run(argv: list[str], out: Path) -> dict:
    """Runs ``rljax ARGV --out OUT`` in this process; its summary.json, plus the wall time."""
    start = time.perf_counter()
    if cli.main([*argv, "--out", str(out)]) != 0:
        raise SystemExit(f"rljax {' '.join(argv)} failed; see above")
    summary = json.loads((Path(out) / "summary.json").read_text())
    summary["wall_seconds"] = time.perf_counter() - start
    return summary
