"""The training loop: jitted chunks, with logging, checkpoints, resume and signals between them.

Nothing crosses to the host inside a chunk. Between chunks the loop logs metrics, prints
progress, marks diverged members, checkpoints (atomically, at most every
``checkpoint_seconds`` and at the end) and calls ``on_chunk``. A run directory is created once,
before anything compiles, held by one process at a time (``rljax.runner.rundir``), and only
ever resumed, bit for bit, from its latest checkpoint.
"""

import contextlib
import dataclasses
import json
import pickle
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import yaml

from rljax.runner import config as config_lib
from rljax.runner import metadata, report, results
from rljax.runner import spec as spec_lib
from rljax.runner.checkpoint import Checkpoints, load_orbax
from rljax.runner.distributed import any_process, barrier, gather, is_primary, owned_members
from rljax.runner.errors import Divergence, Interrupted
from rljax.runner.guard import StopSignals, first_failures, logged_failures
from rljax.runner.program import Program, build_program, chunk_updates
from rljax.runner.rundir import check_free, check_sinks, run_directory
from rljax.runner.sinks import (
    CsvLog,
    TensorBoardSink,
    WandbSink,
    metric_rows,
    read_tables,
    write_table,
)
from rljax.runner.spec import RunSpec, check_budget, check_directory, resolve_spec


def train(
    spec: RunSpec,
    out: Path,
    *,
    resume: bool = False,
    checkpoint_seconds: float = 60.0,
    tensorboard: bool = False,
    wandb_project: str | None = None,
    print_fn=print,
    inner_wrapper=None,
    on_chunk=None,
) -> dict:
    """Trains (or resumes) the run in ``out`` and returns its summary.

    ``inner_wrapper`` goes beneath the env's normalization (``rljax.envs.wrap``);
    ``on_chunk(done, state)`` sees the member-stacked state after each chunk. Raises Divergence
    when every member has diverged, and Interrupted after a final checkpoint when SIGTERM or
    SIGINT arrives; the run directory then resumes with ``resume=True``.
    """
    out = Path(out)
    say = print_fn if is_primary() else _silent
    spec = resolve_spec(spec)
    check_budget(spec)
    check_sinks(tensorboard, wandb_project)
    dataset_sha256 = spec_lib.dataset_sha256(spec.dataset) if spec.dataset else None
    check_free(out)
    check_directory(spec, out, resume, dataset_sha256)
    barrier("rljax: run directory checked")  # before process 0 creates it
    with run_directory(out, resume) as directory:
        barrier("rljax: run directory created")
        metadata.enable_compilation_cache()
        program = build_program(spec, inner_wrapper=inner_wrapper)
        num_updates, boundary = program.num_updates, program.boundary
        chunks = program.chunks()
        source = (
            f"dataset {spec.dataset} (evaluated on {spec.env['name']})"
            if program.agent.from_dataset
            else spec.env["name"]
        )
        if program.agent.fits_model:
            source += f", a dynamics model of it fitted first ({boundary:,} model steps)"
        elif boundary is not None:
            source += f", then {program.base.online_steps:,} steps online"
        size = "" if program.agent.from_dataset else f" of {program.steps_per_update} steps"
        members = len(program.members)
        say(f"{spec.algo} on {source}: {members} member(s) x {num_updates} updates{size}, as one "
            "program")  # fmt: skip

        start = time.perf_counter()
        init_jit = program.init_fn()
        shapes = {False: jax.eval_shape(init_jit, program.stacked, program.keys)}
        layouts = {False: program.abstract(shapes[False])}  # the train state's, per phase
        # XLA compiles init on a thread (it lets go of the GIL) while the chunk is traced here.
        with ThreadPoolExecutor(1) as pool:
            init_compiled = pool.submit(init_jit.lower(program.stacked, program.keys).compile)
            chunk = program.chunk_fn(chunk_updates(program)).lower(program.stacked, layouts[False])
            init_fn = init_compiled.result()
        chunk_fns = {False: chunk.compile()}
        if boundary is not None:
            begin_jit = program.begin_fn()
            shapes[True] = jax.eval_shape(begin_jit, program.stacked, layouts[False])
            layouts[True] = program.abstract(shapes[True])
            begin_fn = begin_jit.lower(program.stacked, layouts[False]).compile()
            chunk_fns[True] = (
                program.chunk_fn(chunk_updates(program, 1), later=True)
                .lower(program.stacked, layouts[True])
                .compile()
            )
        phase_metrics = {later: sorted(fn.out_info[1]) for later, fn in chunk_fns.items()}
        metric_names = sorted(set().union(*phase_metrics.values()))
        compile_seconds = time.perf_counter() - start

        def launch(state, first: int):
            """Dispatches the chunk after update ``first``, switching phase before the second
            phase's first chunk."""
            later = program.later_after(first + 1)
            if later and first == boundary:
                state = begin_fn(program.stacked, state)
                if program.agent.fits_model:
                    program.agent.check_begin_policy(program.base, state)
            return chunk_fns[later](program.stacked, state)

        checkpoints = Checkpoints(out / "checkpoints")
        done, state = (
            checkpoints.restore_latest(lambda step: layouts[program.later_after(step)])
            if resume
            else (None, None)
        )
        if done is None:
            done, state = 0, init_fn(program.stacked, program.keys)
        else:
            say(f"resuming {out} from update {done} of {num_updates}")
        if is_primary():
            _write_run_files(out, program, shapes, dataset_sha256)
            for path in _metric_files(out):  # drop what the checkpoint does not hold
                CsvLog(path, metric_names).truncate_after(done)
        barrier("rljax: run files written")
        log = CsvLog(_own_metric_file(out), metric_names)
        owned = owned_members(program.sharding, members)
        failures = {}
        if done:  # resumed: the failures its logged metrics hold
            table = read_tables(_metric_files(out))
            failures = logged_failures(table, members, done, boundary, phase_metrics)
        sinks = _sinks(out, spec, tensorboard, wandb_project) if is_primary() else []

        directory.started = True  # from here on a failed run keeps its directory
        resumed_at, steps_per_second = done, None
        loop_start = last_checkpoint = time.perf_counter()
        try:
            with StopSignals() as stop:
                running = launch(state, done) if done < num_updates else None
                _import_while_training()
                for first, size in [(f, n) for f, n in chunks if f >= done]:
                    state, metrics, finite = running
                    metrics, finite = gather((metrics, finite))
                    updates = np.arange(first + 1, first + size + 1)
                    found = first_failures(metrics, updates, finite)
                    done = first + size
                    now = time.perf_counter()
                    stopping, due = any_process(
                        np.array(
                            [stop.received is not None, now - last_checkpoint >= checkpoint_seconds]
                        )
                    )
                    saving = stopping or due or done == num_updates
                    # The next chunk runs while the host logs this one, unless something must
                    # read this chunk's state first (it donates the state it takes).
                    diverging = len(failures.keys() | found.keys()) == members
                    overlap = not (saving or diverging or on_chunk) and done < num_updates
                    if overlap:
                        running = launch(state, done)
                    empty = np.full((members, size), np.nan)  # the other phase's metrics
                    logged = {name: metrics.get(name, empty) for name in metric_names}
                    steps = program.steps(updates)
                    log.append(metric_rows(program.members, owned, updates, steps, logged))
                    for sink in sinks:
                        sink.write(steps, metrics)
                    _guard(program, failures, found, checkpoints, say)
                    if on_chunk is not None:
                        on_chunk(done, state)
                    if saving:
                        checkpoints.save(done, state)
                        last_checkpoint = now
                    if not overlap and done < num_updates and not stopping:
                        running = launch(state, done)
                    members_steps = members * (program.steps(done) - program.steps(resumed_at))
                    steps_per_second = members_steps / (now - loop_start)
                    eta = (num_updates - done) * (now - loop_start) / (done - resumed_at)
                    say(report.progress(program, done, metrics, steps_per_second, eta))
                    if stopping and done < num_updates:
                        signum = stop.received or signal.SIGTERM  # another process was signalled
                        raise Interrupted(
                            f"stopped by {signal.Signals(signum).name} after update {done} of "
                            f"{num_updates}; the checkpoint is saved: continue with --resume "
                            f"--out {out}",
                            signum,
                        )
        finally:
            checkpoints.close()
            for sink in sinks:
                sink.close()

        timing = {
            "compile_seconds": round(compile_seconds, 2),
            "train_seconds": round(time.perf_counter() - loop_start, 2),
            "steps_per_second": None if steps_per_second is None else round(steps_per_second, 1),
            "chunk_traces": program.traces,
        }
        barrier("rljax: metrics written")
        table = read_tables(_metric_files(out))
        summary = report.finish(program, out, table, timing, failures, say)
        if is_primary() and jax.process_count() > 1:
            write_table(out / "metrics.csv", table)  # the processes' shards, merged
        return summary


def _import_while_training() -> None:
    """Imports what a run's end needs (orbax for its checkpoint, matplotlib for its curve) on a
    thread while its chunks run: most programs keep about one core busy, so on a small CPU the
    imports (0.2-0.3 s) run beside training instead of after it. An import that fails here is
    raised again where it is needed."""

    def load():
        for module in (load_orbax, results.load_figure):
            with contextlib.suppress(Exception):
                module()

    threading.Thread(target=load, name="rljax-imports", daemon=True).start()


def _silent(*_) -> None:
    pass


def _metric_files(out: Path) -> list[Path]:
    """metrics.csv and the per-process shards of multi-process sessions, those that exist."""
    return [
        p for p in [out / "metrics.csv", *sorted(out.glob("metrics/process_*.csv"))] if p.exists()
    ]


def _own_metric_file(out: Path) -> Path:
    if jax.process_count() == 1:
        return out / "metrics.csv"
    (out / "metrics").mkdir(exist_ok=True)
    return out / "metrics" / f"process_{jax.process_index()}.csv"


def _sinks(out: Path, spec: RunSpec, tensorboard: bool, wandb_project: str | None) -> list:
    sinks = []
    if tensorboard:
        sinks.append(TensorBoardSink(out))
    if wandb_project:
        sinks.append(WandbSink(wandb_project, out, dataclasses.asdict(spec)))
    return sinks


def _guard(program: Program, failures: dict, found: dict, checkpoints, say) -> None:
    """Records members that newly diverged; raises Divergence once every member has."""
    for member, failure in found.items():
        if member not in failures:
            failures[member] = failure
            say(f"warning: {report.failure_text(program, member, failure)}; marked failed")
    if len(failures) == len(program.members):
        last = checkpoints.latest_step()
        kept = (
            "no checkpoint was written"
            if last is None
            else f"the last good checkpoint (update {last}) is kept"
        )
        raise Divergence(
            f"every member diverged: {report.failures_text(program, failures)}; {kept}"
        )


def _write_run_files(out: Path, program: Program, shapes: dict, dataset_sha256: str | None):
    """config.yaml (with the dataset's SHA-256) and the state's structure (of each phase) once;
    run_info.json gains one record per start."""
    saved = out / "config.yaml"
    if not saved.exists():
        record = {
            "run": dataclasses.asdict(program.spec),
            "resolved": config_lib.as_dict(program.base),
        }
        if dataset_sha256 is not None:
            record["dataset_sha256"] = dataset_sha256
        saved.write_text(yaml.safe_dump(record, sort_keys=False))
        for later, phase_shapes in shapes.items():
            structure = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), phase_shapes)
            (out / program.structure_file(later)).write_bytes(pickle.dumps(structure))
    info = out / "run_info.json"
    starts = json.loads(info.read_text())["starts"] if info.exists() else []
    info.write_text(json.dumps({"starts": [*starts, metadata.environment()]}, indent=2))
