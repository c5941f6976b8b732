"""Where metrics go: metrics.csv always; TensorBoard and W&B when asked for."""

import csv
from pathlib import Path

import numpy as np

KEY_COLUMNS = ["member", "config", "seed", "update", "env_steps"]


class CsvLog:
    """metrics.csv: one row per (member, update), appended chunk by chunk."""

    def __init__(self, path: Path, metric_names: list[str]):
        self.path = Path(path)
        self.columns = KEY_COLUMNS + metric_names
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def append(self, rows: list[list]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)

    def truncate_after(self, update: int) -> None:
        """Drops rows past ``update``: a resumed run rewrites what its checkpoint did not hold."""
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [row for row in rows[1:] if int(row[3]) <= update]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)


def metric_rows(members, owned, updates, steps, metrics) -> list[list]:
    """metrics.csv rows of this process's members (``steps``: the step axis at ``updates``)."""
    names = sorted(metrics)
    rows = []
    for m in owned:
        config_index, seed_index = members[m]
        for k, update in enumerate(updates):
            values = [float(metrics[name][m, k]) for name in names]
            rows.append([m, config_index, seed_index, int(update), int(steps[k])])
            rows[-1].extend(values)
    return rows


def read_tables(paths: list[Path]) -> dict[str, np.ndarray]:
    """Rows of several metrics files (one per process, or per session), each (member, update)
    once, sorted by member then update, as column arrays."""
    header, rows = None, {}
    for path in paths:
        with Path(path).open(newline="") as f:
            lines = list(csv.reader(f))
        header = header or lines[0]
        rows.update({(int(row[0]), int(row[3])): row for row in lines[1:]})
    data = np.array([rows[key] for key in sorted(rows)], dtype=np.float64).reshape(-1, len(header))
    return {name: data[:, i] for i, name in enumerate(header)}


def write_table(path: Path, table: dict[str, np.ndarray]) -> None:
    names = list(table)
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for i in range(len(table[names[0]])):
            writer.writerow([_cell(name, table[name][i]) for name in names])


def _cell(name: str, value: float):
    return int(value) if name in KEY_COLUMNS else repr(float(value))


class TensorBoardSink:
    """Member-mean of each metric per update, under ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(
                "--tensorboard needs tensorboardX: pip install 'rljax[tensorboard]'"
            ) from None
        self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, env_steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        for name, values in metrics.items():  # values: (members, updates)
            for step, value in zip(env_steps, np.nanmean(values, axis=0), strict=True):
                if np.isfinite(value):
                    self._writer.add_scalar(name, value, int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """Member-mean of each metric per update, to a Weights & Biases project."""

    def __init__(self, project: str, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb needs wandb: pip install 'rljax[wandb]'") from None
        self._run = wandb.init(project=project, dir=str(run_dir), config=config)

    def write(self, env_steps: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
        means = {name: np.nanmean(values, axis=0) for name, values in metrics.items()}
        for i, step in enumerate(env_steps):
            row = {name: float(v[i]) for name, v in means.items() if np.isfinite(v[i])}
            self._run.log(row, step=int(step))

    def close(self) -> None:
        self._run.finish()
