"""Generates every dataset kind for one recipe (default Pendulum-v1) and prints what it holds.

Per kind: transitions, whole episodes, their mean return, the data's D4RL normalized score
(100 * (return - random) / (expert - random), with the references stored in the file), and
the time spent training the behaviour agent (shared by all kinds) and rolling out the kind.

    python experiments/generate_datasets.py [--env Pendulum-v1] [--out DIR] [--seed 0]
"""

import argparse
import tempfile

import jax

from rljax.data import normalized_score
from rljax.generate.d4rl import KINDS, generate_all


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--out", default=None, help="where to write (default: a temporary dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="rljax-datasets-")

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    written = generate_all(args.env, out, KINDS, args.seed)
    some = next(iter(written.values()))[1]
    random, expert = some["ref_min_score"], some["ref_max_score"]
    print(f"\nreferences: random {random:.1f}, expert {expert:.1f}")
    print(f"behaviour training: {some['seconds']['behaviour']:.1f} s")
    header = f"{'dataset':<28} {'transitions':>11} {'episodes':>8} {'return':>8} {'score':>6}"
    print(header + f" {'rollout s':>9}")
    for path, metadata in written.values():
        mean = metadata["returns"]["mean"]
        score = float(normalized_score(mean, random, expert)) if mean is not None else float("nan")
        print(
            f"{path.name:<28} {metadata['transitions']:>11d} {metadata['episodes']:>8d} "
            f"{mean if mean is not None else float('nan'):>8.1f} {score:>6.1f} "
            f"{metadata['seconds']['rollout']:>9.1f}"
        )


if __name__ == "__main__":
    main()
