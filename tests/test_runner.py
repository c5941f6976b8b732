"""The runner: config validation, sweeps as one program, determinism, checkpoints, policies."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from runs import TINY, checkpoint_leaves, quiet, tiny_spec

from rljax import envs, load_policy
from rljax.agents import ppo
from rljax.runner import config as config_lib
from rljax.runner.checkpoint import Checkpoints
from rljax.runner.errors import RunDirectoryExists
from rljax.runner.loop import train
from rljax.runner.program import build_program, over_members
from rljax.runner.sinks import CsvLog, read_tables
from rljax.runner.spec import RunSpec, resolve_spec


def test_build_coerces_and_validates_fields():
    """Strings from the command line become typed values; bad ones name field and range."""
    config = config_lib.make_config(
        ppo.Config, {"lr": "1e-3", "num_envs": "8", "anneal_lr": "false"}
    )
    assert (config.lr, config.num_envs, config.anneal_lr) == (1e-3, 8, False)
    with pytest.raises(config_lib.UnknownField, match="'lrr'.*its fields: num_envs"):
        config_lib.make_config(ppo.Config, {"lrr": 1})
    with pytest.raises(config_lib.FieldOutOfRange, match=r"gamma=1.5 .* \[0, 1\]"):
        config_lib.make_config(ppo.Config, {"gamma": "1.5"})
    with pytest.raises(config_lib.FieldOutOfRange, match=r"lr=0.0 .* \(0, inf\)"):
        config_lib.make_config(ppo.Config, {"lr": 0})
    with pytest.raises(config_lib.FieldOutOfRange, match="activation='gelu'.*tanh"):
        config_lib.make_config(ppo.Config, {"activation": "gelu"})
    with pytest.raises(config_lib.FieldOutOfRange, match="num_envs=2.5 is not a valid int"):
        config_lib.make_config(ppo.Config, {"num_envs": "2.5"})


def test_one_member_runs_unbatched_and_agrees_with_vmap():
    """A one-member program calls the member function on unbatched arrays (the size-1 vmap is
    what XLA's CPU backend compiles badly) and gives vmap's numbers; several are vmapped."""
    seen = []

    def compute(w, x):
        h = x @ w
        return (h - h.mean(-1, keepdims=True)) * (h * x).mean(-1, keepdims=True), h.sum()

    def member(w, x):
        seen.append(x.shape)
        return compute(w, x)

    w, x = (jax.random.normal(k, (3, 8, 8)) for k in jax.random.split(jax.random.key(0)))
    for count in (1, 3):
        got = jax.jit(over_members(member))(w[:count], x[:count])
        want = jax.vmap(compute)(w[:count], x[:count])
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert seen == [(8, 8), (8, 8)]  # traced once unbatched, once under vmap (a batch tracer)


def test_sweeping_a_static_field_is_refused():
    with pytest.raises(config_lib.StaticFieldSweep, match="'num_steps'.*static.*Sweepable.*lr"):
        config_lib.check_sweepable(ppo.Config, {"num_steps": [64, 128]})


def test_grid_points_are_the_cartesian_product_in_order():
    points = config_lib.grid_points({"lr": [1, 2], "clip_eps": [3, 4, 5]})
    assert len(points) == 6 and points[1] == {"lr": 1, "clip_eps": 4}


def test_sweep_member_equals_the_single_run_of_its_config(tmp_path):
    """Member k of a 4-config x 2-seed sweep reproduces the single run of config k."""
    grid = {"lr": [1e-4, 1e-3], "clip_eps": [0.1, 0.3]}
    sweep = train(tiny_spec(grid=grid, seeds=2), tmp_path / "sweep", print_fn=quiet)
    single = train(
        tiny_spec(agent={**TINY, "lr": 1e-3, "clip_eps": 0.1}, seeds=2),
        tmp_path / "single",
        print_fn=quiet,
    )
    sweep_metrics = read_tables([tmp_path / "sweep" / "metrics.csv"])
    single_metrics = read_tables([tmp_path / "single" / "metrics.csv"])
    member = sweep_metrics["config"] == 2  # lr=1e-3, clip_eps=0.1
    for name in ("loss", "value_loss", "entropy", "episode_return"):
        np.testing.assert_allclose(
            sweep_metrics[name][member], single_metrics[name], rtol=1e-5, equal_nan=True
        )
    assert len(sweep["ranking"]) == 4 and len(single["final_returns"]) == 2


def test_same_seed_same_numbers(tmp_path):
    train(tiny_spec(seeds=2), tmp_path / "a", print_fn=quiet)
    train(tiny_spec(seeds=2), tmp_path / "b", print_fn=quiet)
    a = (tmp_path / "a" / "metrics.csv").read_text()
    assert a == (tmp_path / "b" / "metrics.csv").read_text()
    other = train(tiny_spec(seed=5), tmp_path / "c", print_fn=quiet)
    assert other["final_returns"][0]["seed"] == 5


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    """4 of 8 updates, a crash, --resume: the same parameters and metrics as 8 straight."""
    train(tiny_spec(), tmp_path / "straight", checkpoint_seconds=0, print_fn=quiet)

    printed = []

    def crash_after_two_chunks(line):
        printed.append(line)
        if len(printed) == 3:  # the header, then two chunks (checkpointed)
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            tiny_spec(), tmp_path / "resumed", checkpoint_seconds=0, print_fn=crash_after_two_chunks
        )
    assert Checkpoints(tmp_path / "resumed" / "checkpoints").latest_step() == 4
    train(tiny_spec(), tmp_path / "resumed", resume=True, checkpoint_seconds=0, print_fn=quiet)

    straight_params = checkpoint_leaves(tmp_path / "straight")
    resumed_params = checkpoint_leaves(tmp_path / "resumed")
    for a, b in zip(straight_params, resumed_params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    straight = (tmp_path / "straight" / "metrics.csv").read_text()
    assert straight == (tmp_path / "resumed" / "metrics.csv").read_text()


def test_metrics_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    """Chunks logged after the last checkpoint are rerun, not duplicated."""
    train(tiny_spec(), tmp_path / "run", checkpoint_seconds=1e9, print_fn=quiet)
    log = CsvLog(tmp_path / "run" / "metrics.csv", [])
    log.truncate_after(6)
    assert read_tables([log.path])["update"].max() == 6


def test_existing_run_directory_is_never_overwritten(tmp_path):
    train(tiny_spec(), tmp_path / "run", print_fn=quiet)
    with pytest.raises(RunDirectoryExists, match="--resume"):
        train(tiny_spec(), tmp_path / "run", print_fn=quiet)


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(tiny_spec(), tmp_path / "run", print_fn=quiet)
    with pytest.raises(Exception, match="seeds=1 \\(now 2\\)"):
        train(tiny_spec(seeds=2), tmp_path / "run", resume=True, print_fn=quiet)


def test_load_policy_applies_the_saved_normalization(tmp_path):
    """The loaded policy acts on raw observations exactly as the agent acts on normalized ones."""
    spec = RunSpec(
        algo="ppo",
        env={"name": "Pendulum-v1", "normalize_obs": True},
        agent=dict(TINY),
        chunk_updates=4,
    )
    train(spec, tmp_path / "run", print_fn=quiet)
    policy = load_policy(tmp_path / "run", deterministic=True)
    raw = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -2.0]], np.float32)
    action = policy(raw, jax.random.PRNGKey(0))
    assert action.shape == (2, 1)

    from rljax.envs.wrappers import NormalizeObservationState, find_state, normalize
    from rljax.runner.policy import restore

    program, state, _ = restore(tmp_path / "run")
    moments = find_state(state.env_state, NormalizeObservationState).moments
    moments = jax.tree.map(lambda x: x[0, 0], moments)
    assert not np.allclose(moments.mean, 0.0)  # statistics were learned
    params = jax.tree.map(lambda x: x[0], state.params)
    expected = ppo.act(program.base, params, normalize(raw, moments), None, deterministic=True)
    np.testing.assert_allclose(action, np.clip(expected, -2.0, 2.0), rtol=1e-6)  # Pendulum's box


def test_evaluate_reports_raw_returns(tmp_path):
    from rljax import evaluate_run

    train(tiny_spec(seeds=2), tmp_path / "run", print_fn=quiet)
    returns, program, step = evaluate_run(tmp_path / "run", episodes=4)
    returns = np.asarray(returns)
    assert returns.shape == (2, 4) and step == 8
    assert np.all(returns >= 8) and np.all(returns <= 500)  # CartPole returns count steps


def test_sharded_sweep_on_fake_devices_equals_one_device(tmp_path):
    """With 4 fake CPU devices the member axis is sharded, and the numbers do not change."""
    script = textwrap.dedent(
        f"""
        import jax
        from rljax.runner.loop import train
        from rljax.runner.program import build_program, over_members
        from rljax.runner.spec import RunSpec
        spec = RunSpec(algo="ppo", env={{"name": "CartPole-v1"}}, agent={TINY!r},
                       grid={{"lr": [1e-4, 1e-3]}}, seeds=2, chunk_updates=4)
        assert len(jax.devices()) == 4, jax.devices()
        assert len(build_program(spec).sharding.mesh.devices) == 4
        train(spec, {str(tmp_path / "sharded")!r}, print_fn=lambda *_: None)
        """
    )
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    environment = {**os.environ, "XLA_FLAGS": flags}
    subprocess.run([sys.executable, "-c", script], env=environment, check=True)
    spec = tiny_spec(grid={"lr": [1e-4, 1e-3]}, seeds=2, chunk_updates=4)
    train(spec, tmp_path / "one", print_fn=quiet)
    sharded = read_tables([tmp_path / "sharded" / "metrics.csv"])
    one = read_tables([tmp_path / "one" / "metrics.csv"])
    for name in ("loss", "episode_return", "entropy"):
        np.testing.assert_allclose(sharded[name], one[name], rtol=1e-5, equal_nan=True)


def test_make_rejects_unknown_environments_by_listing_known_ones():
    with pytest.raises(envs.UnknownEnvironment, match="(?s)CartPole-v1.*brax/hopper"):
        build_program(resolve_spec(tiny_spec(env={"name": "CartPol-v1"})))
