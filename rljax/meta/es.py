"""Meta-training by evolution strategy: OpenAI-ES (Salimans et al., arXiv 1703.03864) via evosax.

How LPO (Lu et al., NeurIPS 2022) and TA-LPO (Jackson et al., ICLR 2024) learn their drift
network: each population member is a candidate parameter pytree that trains a whole agent, and
its fitness is that agent's final return. ``fitness_fn(population, rng) -> (population_size,)``
scores a whole population in one call, so the caller jits it as one vmapped program. Fitness
is maximized here; evosax minimizes, so ``generation`` hands it the negation.

The defaults are groove's (Jackson et al.'s code, OpenES for TA-LPG): Adam with learning rate
1e-2 decaying by 0.999 per generation down to 1e-5, a constant sigma of 0.1, antithetic
sampling, z-scored fitness (DPO's shaping). evosax orders an antithetic population as
[mean + sigma z, mean - sigma z]: members i and i + population_size / 2 are a pair, and a
fitness_fn may give a pair the same seeds (common random numbers) to cut the noise in their
difference.
"""

from collections.abc import Callable

import jax
import numpy as np
import optax
from evosax.algorithms import Open_ES
from evosax.core.fitness_shaping import standardize_fitness_shaping_fn


def open_es(
    solution,
    population_size: int,
    lr: float = 1e-2,
    lr_decay: float = 0.999,
    lr_limit: float = 1e-5,
    sigma: float = 0.1,
) -> Open_ES:
    """OpenAI-ES over pytrees shaped like ``solution``, with Adam on z-scored fitness."""
    if population_size < 2 or population_size % 2:
        raise ValueError(
            f"population_size={population_size} must be even and >= 2 (antithetic pairs)"
        )
    schedule = optax.exponential_decay(lr, 1, lr_decay, end_value=lr_limit)
    return Open_ES(
        population_size,
        solution,
        optimizer=optax.adam(schedule),
        std_schedule=optax.constant_schedule(sigma),
        fitness_shaping_fn=standardize_fitness_shaping_fn,
    )


def init(strategy: Open_ES, mean, rng: jax.Array):
    """The ES state with its search distribution centred on the pytree ``mean``."""
    return strategy.init(rng, mean, strategy.default_params)


def generation(strategy: Open_ES, state, rng: jax.Array, fitness_fn: Callable):
    """Ask for a population, score it, tell the ES; returns (state, fitness), higher better."""
    ask_key, fitness_key, tell_key = jax.random.split(rng, 3)
    population, state = strategy.ask(ask_key, state, strategy.default_params)
    fitness = fitness_fn(population, fitness_key)
    state, _ = strategy.tell(tell_key, population, -fitness, state, strategy.default_params)
    return state, fitness


def evolve(
    fitness_fn: Callable,
    mean,
    rng: jax.Array,
    num_generations: int,
    population_size: int,
    callback: Callable | None = None,
    **es_kwargs,
):
    """Runs num_generations of OpenAI-ES from ``mean``; returns (final mean pytree, fitness of
    every member per generation as a (num_generations, population_size) array).
    ``callback(generation_index, fitness, mean)`` runs after each generation (to log)."""
    strategy = open_es(mean, population_size, **es_kwargs)
    init_key, rng = jax.random.split(rng)
    state = init(strategy, mean, init_key)
    history = []
    for i in range(num_generations):
        rng, key = jax.random.split(rng)
        state, fitness = generation(strategy, state, key, fitness_fn)
        history.append(np.asarray(fitness))
        if callback is not None:
            callback(i, history[-1], strategy.get_mean(state))
    return strategy.get_mean(state), np.stack(history) if history else np.zeros(
        (0, population_size)
    )
