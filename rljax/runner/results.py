"""Learning curves, final returns and sweep rankings, with bootstrap confidence intervals."""

import json
from pathlib import Path

import numpy as np

from rljax.runner.sinks import read_tables

CI_LEVEL = 0.95


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (Agarwal et al., NeurIPS 2021)."""
    x = np.sort(x, axis=axis)
    n = x.shape[axis]
    low, high = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return np.take(x, np.arange(low, max(high, low + 1)), axis=axis).mean(axis=axis)


def bootstrap_ci(x: np.ndarray, statistic=np.mean, resamples: int = 2000, seed: int = 0):
    """Percentile bootstrap CI of ``statistic`` over the first axis (seeds)."""
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=(resamples, len(x)))
    stats = statistic(np.moveaxis(x[index], 1, -1), axis=-1)
    tail = 100 * (1 - CI_LEVEL) / 2
    return np.percentile(stats, tail, axis=0), np.percentile(stats, 100 - tail, axis=0)


def smoothed_returns(returns: np.ndarray, episodes: np.ndarray, window: int) -> np.ndarray:
    """Episode-weighted moving mean of per-update returns, (members, updates).

    Updates in which no episode finished carry NaN returns and zero weight.
    """
    weights = np.where(episodes > 0, episodes, 0.0)
    weighted = np.where(episodes > 0, np.nan_to_num(returns) * weights, 0.0)
    kernel = np.ones(window)

    def moving_sum(x):
        return np.apply_along_axis(lambda row: np.convolve(row, kernel)[: len(row)], -1, x)

    total = moving_sum(weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, moving_sum(weighted) / total, np.nan)


def final_returns(returns: np.ndarray, episodes: np.ndarray, fraction: float = 0.05):
    """Mean return of the episodes finished in the last ``fraction`` of updates, per member.

    A member whose episodes outlast that window (a pole held for all of a short run's last
    updates) gets the mean of the last update in which any of its episodes finished, as a
    rolling episode buffer would report, not NaN, which means a diverged or failed member
    here; NaN remains only for a member that never finished an episode.
    """
    last = max(1, int(np.ceil(fraction * returns.shape[-1])))
    in_window = smoothed_returns(returns[:, -last:], episodes[:, -last:], last)[:, -1]
    finished = episodes > 0
    latest = returns.shape[-1] - 1 - np.argmax(finished[:, ::-1], axis=-1)
    latest_return = np.take_along_axis(returns, latest[:, None], axis=-1)[:, 0]
    fallback = np.where(finished.any(-1), latest_return, np.nan)
    return np.where(np.isnan(in_window), fallback, in_window)


def run_curve(run_dir, min_window: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, smoothed returns (members, updates)) of a finished run directory; the
    window is a twentieth of the run, at least ``min_window`` updates."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    table = read_tables(sorted(run_dir.glob("metrics*.csv")))
    members, updates = len(summary["final_returns"]), summary["num_updates"]
    returns = table["episode_return"].reshape(members, updates)
    episodes = table["episodes"].reshape(members, updates)
    window = max(min_window, updates // 20)
    steps_per_update = summary["env_steps_per_member"] // updates
    steps = np.arange(1, updates + 1) * steps_per_update
    return steps, smoothed_returns(returns, episodes, window)


def seed_statistics(values) -> dict:
    """IQM over seeds, its 95% bootstrap CI and the mean, of the finite values (diverged seeds
    are NaN and left out); empty when no value is finite."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {}
    low, high = bootstrap_ci(values, iqm)
    return {"iqm": float(iqm(values)), "ci_low": float(low), "ci_high": float(high),
            "mean": float(values.mean())}  # fmt: skip


def curve_band(curve: np.ndarray, resamples: int = 500):
    """(mean, CI low, CI high) over seeds of ``curve`` (seeds, points), each (points,).

    Early in a short run some seeds have finished no episode yet (NaN). The mean is over the
    seeds that have data at each point, so it starts where the first seed has data; filling a
    seed forward with its last value, or back with its first, would invent returns it never
    had. The bootstrap band is NaN (not drawn) where fewer than two seeds have data.
    """
    present = np.isfinite(curve)
    count = present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.where(present, curve, 0.0).sum(axis=0) / count, np.nan)
    low, high = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    banded = np.flatnonzero(count >= 2)
    # Points with the same seeds present are resampled together, over those seeds only.
    patterns, group = np.unique(present[:, banded].T, axis=0, return_inverse=True)
    for i, seeds in enumerate(patterns):
        points = banded[group.ravel() == i]
        low[points], high[points] = bootstrap_ci(curve[seeds][:, points], resamples=resamples)
    return mean, low, high


def load_figure():
    """matplotlib's ``Figure``, imported at first use (0.1-0.2 s). A Figure made without pyplot
    draws to files with Agg and touches no global backend state, so a thread may import it."""
    from matplotlib.figure import Figure

    return Figure


def plot_curves(
    path,
    env_steps,
    curves: dict[str, np.ndarray],
    title: str,
    xlabel: str = "environment steps",
    ylabel: str = "episode return",
    boundary: float | None = None,
) -> None:
    """One line per label: mean over seeds with a bootstrap 95% CI band (``curve_band``); the
    line joins the points where any seed has data. ``boundary`` marks where a fine-tuning run's
    online phase begins."""
    env_steps = np.asarray(env_steps)
    figure = load_figure()(figsize=(7, 4.5))
    axis = figure.subplots()
    for label, curve in curves.items():  # curve: (seeds, points)
        mean, low, high = curve_band(curve)
        drawn = np.isfinite(mean)
        marker = "o" if drawn.sum() == 1 else None  # one point draws no line
        line = axis.plot(env_steps[drawn], mean[drawn], label=label, marker=marker)[0]
        if np.isfinite(low).any():
            axis.fill_between(env_steps, low, high, color=line.get_color(), alpha=0.2)
    if boundary is not None:
        axis.axvline(boundary, color="gray", linestyle="--", label="online from here")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if len(curves) > 1 or boundary is not None:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
