"""A corrupted copy of an offline dataset, as RIQL's ``attack.py`` makes it: ``rljax data corrupt``.

Yang et al., "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption", ICLR
2024 (YangRui2015/RIQL, ``attack.py``). One field is corrupted, in a ``rate`` fraction of the
transitions, with ``eps = range`` and ``sigma`` each feature's standard deviation over the whole
field (``np.std(x, axis=0)``):

* which transitions: ``u_i ~ U[0, 1)``, transition ``i`` is corrupted where ``u_i < rate`` (the
  authors' rule: about, not exactly, ``rate * N``; none at rate 0, all at rate 1).
* random ``observations``, ``actions``, ``next_observations``: ``x + U(-eps, eps) * sigma``.
* random ``rewards``: replaced by ``U(-eps, eps) * 30`` (not scaled by sigma; attack.py's rule).
* adversarial ``rewards``: ``-eps * r`` (no critic).
* adversarial ``observations``, ``actions``, ``next_observations``: a gradient attack against a
  trained EDAC critic, in ``rljax.generate.corrupt`` (it needs a run directory, a layer above);
  it is passed here as ``attack`` (``rljax.generate.corrupt.attack_dataset`` is the entry point
  for every mode), so that the indices and the bookkeeping are these.

Draws come from ``np.random.RandomState(seed)``, in attack.py's order (the ``u_i``, then the
noise), so for the same transitions, in the same order, and the same seed, the random mode
corrupts the same transitions with the same noise as the authors' code. One departure:
corrupted actions of a dataset whose actions lie in [-1, 1] (the D4RL convention) are clipped
to it, as the env would clip them and as every offline agent here requires of its data;
attack.py leaves them outside, where a tanh policy cannot follow anyway.

The copy is written in the source's layout (``rljax.data.convert.write``), or in the one OUT's
suffix names (``.hdf5``, ``.npz``). Those layouts end an episode wherever a next observation is
not the following row's observation, so around a corrupted observation (the transition before
it) or next observation (its own transition) the episode ends and reads back with ``timeouts =
1``; terminals, and every value, read back as they were written.

Defaults: RIQL's README and ``TrainConfig`` use range 1.0 and rate 0.3 (``DEFAULT_RANGE``,
``DEFAULT_RATE``); its ``RIQL.py`` argparse defaults are range 0.3 and rate 0.1, which is what a
run without the flags gets. The seed is RIQL's ``train_seed`` (default 0).
"""

import base64
import numbers
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rljax.data import convert, files, minari
from rljax.data.dataset import DatasetError, DatasetExists

TARGETS = ("observations", "actions", "rewards", "next_observations")
MODES = ("random", "adversarial")
DEFAULT_RATE = 0.3
DEFAULT_RANGE = 1.0
REWARD_SCALE = 30.0  # attack.py: random rewards are U(-range, range) * 30
# More corrupted transitions than this are recorded as a bit mask, not a list.
MAX_LISTED = 10_000

# attack(transitions, indices, sigma) -> the corrupted values of its field at ``indices``.
Attack = Callable[[dict, np.ndarray, np.ndarray], np.ndarray]


class CorruptionError(DatasetError):
    """A corruption that cannot be made; the message says why and what would do."""


class UnknownCorruption(CorruptionError):
    """A field (--what) or mode (--mode) not in ``TARGETS`` / ``MODES``; lists the valid ones."""


class RateOutOfRange(CorruptionError):
    """A corruption rate outside [0, 1]."""


class RangeNotPositive(CorruptionError):
    """A corruption range that is not a finite number > 0."""


class CriticRequired(CorruptionError):
    """An adversarial attack on observations, actions or next observations without a critic run
    (--critic RUN_DIR, an edac run), or a critic given where none is used."""


def check_request(what: str, mode: str, rate: float, range_: float, seed: int = 0) -> None:
    """Raises the named error for an unknown field or mode, a rate outside [0, 1], a range that
    is not > 0, or a seed that ``np.random.RandomState`` refuses."""
    if what not in TARGETS:
        raise UnknownCorruption(
            f"unknown field {what!r} to corrupt; choose one of {', '.join(TARGETS)}"
        )
    if mode not in MODES:
        raise UnknownCorruption(
            f"unknown corruption mode {mode!r}; choose one of {', '.join(MODES)}"
        )
    if not _real(rate) or not 0 <= rate <= 1:
        raise RateOutOfRange(f"corruption rate={rate!r} must be in [0, 1]: a share of transitions")
    if not _real(range_) or not 0 < range_ < np.inf:
        raise RangeNotPositive(
            f"corruption range={range_!r} must be a finite number > 0 (noise of range * std)"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**32:
        raise CorruptionError(f"seed={seed!r} must be an integer in [0, 2**32)")


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def needs_critic(what: str, mode: str) -> bool:
    """Whether the corruption is a gradient attack against a critic."""
    return mode == "adversarial" and what != "rewards"


def check_attack(what: str, mode: str, given: bool) -> None:
    """CriticRequired for a gradient attack without a critic, or a critic where none is used."""
    if needs_critic(what, mode) and not given:
        raise CriticRequired(
            f"an adversarial attack on {what} is a gradient attack against a trained edac "
            "critic: pass --critic RUN_DIR (rljax.generate.corrupt)"
        )
    if given and not needs_critic(what, mode):
        raise CriticRequired(f"a {mode} corruption of {what} uses no critic; leave out --critic")


def feature_std(x: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation over the transitions, (1, *feature_shape), as attack.py
    computes it (population std, in the array's own dtype)."""
    return np.std(x, axis=0, keepdims=True)


def corrupt(
    transitions: dict,
    what: str,
    mode: str = "random",
    rate: float = DEFAULT_RATE,
    range_: float = DEFAULT_RANGE,
    seed: int = 0,
    attack: Attack | None = None,
) -> tuple[dict, np.ndarray]:
    """The six arrays (numpy) with ``what`` corrupted (module docstring), and the corrupted
    indices, sorted. The input is not modified. ``attack`` is the gradient attack of
    ``rljax.generate.corrupt``, required for (and only for) an adversarial observation, action
    or next-observation corruption."""
    check_request(what, mode, rate, range_, seed)
    check_attack(what, mode, attack is not None)
    x = np.asarray(transitions[what])
    if not np.issubdtype(x.dtype, np.floating):
        raise CorruptionError(
            f"{what} hold {x.dtype} values (discrete); noise on them has no meaning here"
        )
    rng = np.random.RandomState(seed)
    indices = np.flatnonzero(rng.random(len(x)) < rate)
    original = x[indices]
    if what == "rewards":
        values = (
            rng.uniform(-range_, range_, size=original.shape) * REWARD_SCALE
            if mode == "random"
            else original * -range_
        )
    else:
        sigma = feature_std(x)
        if mode == "random":
            values = original + rng.uniform(-range_, range_, size=original.shape) * sigma
        else:
            values = np.asarray(attack(transitions, indices, sigma))
            if values.shape != original.shape:
                raise CorruptionError(
                    f"the attack returned {what} of shape {values.shape}; expected {original.shape}"
                )
    if what == "actions" and np.abs(x).max() <= 1:  # the D4RL convention: see the docstring
        values = np.clip(values, -1, 1)
    corrupted = {k: np.array(v, copy=True) for k, v in transitions.items()}
    corrupted[what][indices] = values
    if not np.isfinite(corrupted[what]).all():
        raise CorruptionError(f"the corrupted {what} hold NaN or inf (a diverged attack?)")
    return corrupted, indices


def record_indices(indices: np.ndarray, n: int) -> dict:
    """The metadata's form of the corrupted indices: ``indices`` (a list) up to ``MAX_LISTED``,
    else ``indices_mask``, a bit per transition (``np.packbits``, big-endian bit order), base64;
    ``count`` and ``transitions`` always."""
    found = {"count": int(len(indices)), "transitions": int(n)}
    if len(indices) <= MAX_LISTED:
        return found | {"indices": [int(i) for i in indices]}
    mask = np.zeros(n, bool)
    mask[indices] = True
    return found | {"indices_mask": base64.b64encode(np.packbits(mask)).decode("ascii")}


def corrupted_indices(metadata: dict) -> np.ndarray:
    """The corrupted transitions' indices recorded in a corrupted dataset's ``metadata`` (or in
    its ``corruption`` entry), in either form (``record_indices``)."""
    record = metadata.get("corruption", metadata)
    if "indices" in record:
        return np.asarray(record["indices"], np.int64)
    if "indices_mask" in record:
        bits = np.frombuffer(base64.b64decode(record["indices_mask"]), np.uint8)
        return np.flatnonzero(np.unpackbits(bits, count=record["transitions"]))
    raise DatasetError("the metadata records no corrupted indices (not a corrupted dataset?)")


def source_layout(path: Path) -> str:
    """The layout ``rljax.data.load`` reads ``path`` in: a directory is Minari's, ``.npz``
    OGBench's, any other file D4RL's."""
    return "minari" if path.is_dir() else "ogbench" if path.suffix == ".npz" else "d4rl"


def output_layout(source: Path, out, layout: str | None = None) -> tuple[str, str]:
    """The output and its layout: ``layout`` if given, else the one OUT's suffix names
    (``.hdf5``, ``.npz``), else the source's. A file layout's suffix is added to an OUT without
    it (``x`` -> ``x.hdf5``), so that the copy reads back in its layout."""
    out = str(out)
    if layout is None:
        named = Path(out).suffix in (".hdf5", ".npz")
        layout = convert.layout_of(out) if named else source_layout(source)
    if layout not in convert.LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(convert.LAYOUTS)}")
    suffix = {"d4rl": ".hdf5", "ogbench": ".npz"}.get(layout)
    if suffix and Path(out).suffix != suffix:
        out += suffix
    return out, layout


def check_output(source: Path, out, layout: str, force: bool = False) -> None:
    """Before any work: refuses to write over the source (even with ``force``) and an existing
    output without ``force`` (DatasetExists); a file layout's directory must be writable."""
    target = Path(out).expanduser()
    if layout == "minari":
        target = Path(minari.dataset_root()).expanduser() / target
    if target.exists() and target.resolve() == source.resolve():
        raise CorruptionError(f"{out} is the source dataset; write the corrupted copy elsewhere")
    if layout == "minari":
        if target.exists() and not force:
            raise DatasetExists(
                f"{target} already exists; pass --force (force=True) to replace it, or choose "
                "another --out"
            )
    else:
        files.prepare_outputs([target], force)


def corrupt_dataset(
    source,
    out,
    what: str,
    mode: str = "random",
    rate: float = DEFAULT_RATE,
    range_: float = DEFAULT_RANGE,
    seed: int = 0,
    *,
    layout: str | None = None,
    force: bool = False,
    attack: Attack | None = None,
    critic: dict | None = None,
) -> Path:
    """Writes dataset ``source`` (a path or name) at ``out`` with ``what`` corrupted
    (``corrupt``) and returns the path written. The metadata is the source's (less its
    checksum and id) with ``corruption``: what, mode, rate, range, seed, the indices
    (``record_indices``), the source's path and ``critic`` (what the attack ran against), and
    under ``previous`` the source's own ``corruption`` when it was itself corrupted."""
    check_request(what, mode, rate, range_, seed)
    check_attack(what, mode, attack is not None)
    path = files.resolve(source)
    out, layout = output_layout(path, out, layout)
    check_output(path, out, layout, force)
    dataset, metadata = files.load(path)
    transitions = dataset.to_numpy()
    corrupted, indices = corrupt(transitions, what, mode, rate, range_, seed, attack)
    metadata = {k: v for k, v in metadata.items() if k not in ("rljax_sha256", "dataset_id")}
    record = {"what": what, "mode": mode, "rate": float(rate), "range": float(range_)}
    record |= {"seed": int(seed)} | record_indices(indices, len(transitions["rewards"]))
    record |= {"source": str(path)} | ({"critic": critic} if critic else {})
    if "corruption" in metadata:
        record["previous"] = metadata["corruption"]
    return convert.write(out, corrupted, metadata | {"corruption": record}, layout, force)
