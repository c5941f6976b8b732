"""What the command line tells a researcher: agents, fields, datasets, versions, help, eval, and
plots of short runs."""

import argparse
import dataclasses
import json
import subprocess
import sys
import types
from importlib.metadata import version

import numpy as np
import pytest

from rljax import agents, cli
from rljax.data import write_d4rl, write_minari, write_ogbench
from rljax.runner import report, results
from rljax.runner.spec import RunSpec

REFERENCES = (-1000.0, -200.0)


def test_agents_lists_every_name_with_its_paper(capsys):
    assert cli.main(["agents"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("learn from an env") and any(
        line.startswith("learn from a dataset") for line in lines
    )
    for name in agents.ALGORITHMS:
        declared = agents.declaration(name)
        (line,) = [line for line in lines if line.split()[0] == name]
        assert line.endswith(declared.paper), name
        assert ("goal-conditioned" in line) == declared.goal_conditioned, name


def test_fields_shows_default_bounds_kind_and_meaning_of_every_field(capsys):
    from rljax.agents import iql

    assert cli.main(["fields", "iql"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    names = [f.name for f in dataclasses.fields(iql.Config)]
    rows = {line.split()[0]: line for line in lines if line.split()[0] in names}
    assert list(rows) == names  # every field, in declaration order
    for field in dataclasses.fields(iql.Config):
        row = rows[field.name]
        assert field.metadata["doc"] in row
        allowed = field.metadata["bounds"] or "|".join(field.metadata["choices"] or ["-"])
        assert f" {allowed} " in row, row
        assert (" static" in row) == (not field.metadata.get("pytree_node", True)), row
    assert " 0.7 " in rows["expectile"] and " [256,256] " in rows["hidden_sizes"]
    assert " true " in rows["normalize_obs"] and "static, budget" in rows["total_updates"]
    assert "rljax sweep iql --grid FIELD=V1,V2" in out


def test_fields_of_an_unknown_algorithm_fails_before_jax_imports():
    script = (
        "import sys; from rljax import cli; status = cli.main(['fields', 'iqll']); "
        "assert 'jax' not in sys.modules, 'jax was imported'; sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    known = ", ".join(sorted(agents.ALGORITHMS))
    assert done.returncode == 2, done.stderr
    assert f"unknown algorithm 'iqll'; known algorithms: {known}" in done.stderr


def test_data_list_shows_the_local_datasets_or_where_it_looked(tmp_path, monkeypatch, capsys):
    roots = {
        "RLJAX_DATA_DIR": tmp_path / "rljax",
        "D4RL_DATASET_DIR": tmp_path / "d4rl",
        "MINARI_DATASETS_PATH": tmp_path / "minari",
        "HOME": tmp_path / "home",
    }
    for key, path in roots.items():
        monkeypatch.setenv(key, str(path))
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "no datasets found; looked in:" in out
    for key in ("RLJAX_DATA_DIR", "D4RL_DATASET_DIR", "MINARI_DATASETS_PATH"):
        assert str(roots[key]) in out, key
    assert str(tmp_path / "home" / ".ogbench" / "data") in out

    arrays = _pendulum_arrays(episodes=2)
    metadata = {"env": "Pendulum-v1", "kind": "random"}
    write_d4rl(roots["RLJAX_DATA_DIR"] / "pendulum-random.hdf5", arrays, metadata)
    maze = {k: arrays[k] for k in ("observations", "actions", "terminals")}
    write_ogbench(tmp_path / "home" / ".ogbench" / "data" / "maze-test-v0.npz", maze)
    episode = {
        "observations": arrays["observations"][:51], "actions": arrays["actions"][:50],
        "rewards": arrays["rewards"][:50], "terminations": np.zeros(50, bool),
        "truncations": np.arange(50) == 49,
    }  # fmt: skip
    write_minari(roots["MINARI_DATASETS_PATH"] / "mine" / "test-v0", [episode])
    assert cli.main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "layout", "size", "env", "kind"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["pendulum-random"][1] == "d4rl" and rows["pendulum-random"][4:] == [
        "Pendulum-v1",
        "random",
    ]
    assert rows["pendulum-random"][3] in ("KiB", "MiB")  # a size with its unit
    assert rows["maze-test-v0"][1] == "ogbench" and rows["maze-test-v0"][-2:] == ["-", "-"]
    assert any(row[1] == "minari" for row in rows.values())


def test_version_names_rljax_and_jax(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"rljax {version('rljax')} (jax {version('jax')})\n"


def _parsers(parser: argparse.ArgumentParser, name: str = "rljax"):
    """(name, parser) of the parser and every subcommand's, recursively."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {command}")


def test_every_help_is_plain_text_and_every_option_has_help():
    for name, parser in _parsers(cli.parser()):
        text = parser.format_help()
        assert "`" not in text, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{name} {choice.dest}"
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.dest}"


def _pendulum_arrays(episodes: int) -> dict:
    """Random rows shaped as Pendulum-v1 data, 50-step episodes; rewards to score."""
    rng = np.random.default_rng(0)
    n = 50 * episodes
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
        "rewards": -rng.uniform(0, 16, size=n).astype(np.float32),
        "terminals": np.zeros(n, np.float32),
        "timeouts": (np.arange(n) % 50 == 49).astype(np.float32),
    }


def test_eval_of_an_offline_run_reports_the_normalized_score(tmp_path, capsys):
    """IQM and CI per config of the normalized score, members on request, eval.json where
    --out says, with the checkpoint's update, the options and per-member returns."""
    dataset = tmp_path / "pendulum-test.hdf5"
    env = {"name": "Pendulum-v1", "unit_actions": True, "max_steps_in_episode": 50}
    metadata = {"env": env, "ref_min_score": REFERENCES[0], "ref_max_score": REFERENCES[1]}
    write_d4rl(dataset, _pendulum_arrays(episodes=4), metadata)
    run = tmp_path / "run"
    argv = ["train", "bc", "--dataset", str(dataset), "--total-steps", "4", "--seeds", "2"]
    argv += ["--chunk-updates", "2", "--eval-episodes", "1", "--out", str(run)]
    argv += ["--set", "hidden_sizes=[8]", "--set", "batch_size=8"]
    assert cli.main(argv) == 0
    capsys.readouterr()

    out = tmp_path / "elsewhere" / "eval.json"
    argv = ["eval", str(run), "--episodes", "2", "--deterministic", "--members", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{run}: update 4, 2 deterministic episodes per member" in printed
    assert "normalized score (IQM over seeds, 95% bootstrap CI):" in printed
    assert "member 1 (config 0, seed 1): return" in printed and f"wrote {out}" in printed
    assert not (run / "eval.json").exists()
    record = json.loads(out.read_text())
    assert record["update"] == 4 and record["references"] == list(REFERENCES)
    assert record["options"] == {"episodes": 2, "deterministic": True, "seed": 0}
    scores = []
    for member in record["members"]:
        assert len(member["returns"]) == 2
        assert member["return"] == pytest.approx(np.mean(member["returns"]))
        score = 100 * (member["return"] - REFERENCES[0]) / (REFERENCES[1] - REFERENCES[0])
        assert member["score"] == pytest.approx(score)
        scores.append(score)
    (config,) = record["configs"]
    assert config["label"] == "bc" and config["seeds"] == 2
    assert config["iqm"] == pytest.approx(float(results.iqm(np.array(scores))))
    assert config["ci_low"] <= config["iqm"] <= config["ci_high"]
    assert f"  bc{' ' * 34} {config['iqm']:9.2f}  [" in printed


def test_eval_of_a_goal_conditioned_sweep_reports_success_per_task():
    """Returns are successes laid out task by task; a maze dataset's references (0, 1) do not
    turn them into a normalized score."""
    spec = RunSpec(algo="gcbc", env={"name": "rljax/GridMaze-medium"}, grid={"lr": ["1", "2"]})
    program = types.SimpleNamespace(
        spec=spec,
        agent=agents.declaration("gcbc"),
        env=types.SimpleNamespace(num_tasks=3),
        configs=[None, None],
        members=[(0, 0), (0, 1), (1, 0), (1, 1)],
        references=(0.0, 1.0),
    )
    # 3 tasks x 2 episodes per member: task 1, task 1, task 2, task 2, task 3, task 3.
    returns = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6, [1] * 6], float)
    options = {"episodes": 2, "deterministic": True, "seed": 0}
    record = report.evaluation("RUN", program, returns, 7, options)
    assert record["measure"] == "success rate" and record["references"] is None
    assert record["members"][0]["task_success"] == [1.0, 0.5, 0.0]
    assert record["members"][0]["success"] == pytest.approx(0.5)
    assert "score" not in record["members"][0]
    first, second = record["configs"]
    assert (first["label"], second["label"]) == ("lr=1", "lr=2")
    assert [t["mean"] for t in first["tasks"]] == [0.75, 0.25, 0.0]
    assert first["mean"] == pytest.approx((0.5 + 1 / 6) / 2) and second["iqm"] == 0.5
    text = "\n".join(report.evaluation_text(record, members=True))
    assert "2 deterministic episodes per task per member" in text and "score" not in text
    assert "success rate (IQM over seeds, 95% bootstrap CI):" in text
    assert "per task: 1 0.75  2 0.25  3 0.00" in text
    assert "member 0 (config 0, seed 0): success 0.50 (per task 1.00 0.50 0.00)" in text
    assert report.measured(program)[0] == "success rate"
    assert report.measured(_offline(program))[0] == "normalized score"


def _offline(program):
    """The same program as an offline, not goal-conditioned agent's."""
    return types.SimpleNamespace(**{**vars(program), "agent": agents.declaration("iql")})


def test_curves_of_short_runs_average_the_seeds_that_have_data(tmp_path):
    """A seed with no finished episode yet (NaN) leaves the mean finite wherever another seed
    has data; the band is drawn only where two seeds have data."""
    curve = np.array([[np.nan, np.nan, 2.0, 4.0, 6.0], [1.0, 3.0, 4.0, np.nan, 8.0]])
    mean, low, high = results.curve_band(curve)
    np.testing.assert_allclose(mean, [1.0, 3.0, 3.0, 4.0, 7.0])
    banded = ~np.isnan(low)
    np.testing.assert_array_equal(banded, [False, False, True, False, True])
    assert np.all(low[banded] <= mean[banded]) and np.all(mean[banded] <= high[banded])
    assert np.all(np.isnan(results.curve_band(np.full((2, 3), np.nan))[0]))
    path = tmp_path / "curve.png"
    results.plot_curves(path, np.arange(1, 6), {"a": curve, "b": curve[:1]}, "t", ylabel="y")
    assert path.stat().st_size > 0


def test_final_return_of_episodes_longer_than_the_final_window_is_their_last_return():
    """The final return is the episode-weighted mean over the last 5% of updates; a member none
    of whose episodes ended there (each outlasts the window) reports its last finished
    episodes' return instead of NaN, which the tables read as a failed seed and leave out."""
    nan = np.nan
    returns = np.array([[nan] * 20 + [10.0] * 20, [5.0, 7.0] + [nan] * 38, [nan] * 40])
    episodes = np.array([[0] * 20 + [1] * 20, [1, 2] + [0] * 38, [0] * 40])
    returns[0, -2:], episodes[0, -2:] = [30.0, 60.0], [1, 3]  # the last 5%: two updates
    np.testing.assert_allclose(results.final_returns(returns, episodes), [52.5, 7.0, nan])
