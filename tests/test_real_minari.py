"""rljax.data against the real minari package (0.5.3): datasets that minari's DataCollector
writes load here by id and by path, and the ones rljax writes load and list in minari."""

import json

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.namespace import list_local_namespaces
from minari.serialization import serialize_space

from rljax import cli, data
from rljax.runner.config import ConfigError
from rljax.runner.spec import RunSpec, resolve_spec

# minari asks for an author email, a description, an evaluation env...
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:minari.utils")


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def _collect(dataset_id: str, env_id: str, max_steps: int, episodes: int, push=None):
    """Episodes recorded by minari's own DataCollector: random actions, or ``push`` (a fixed
    action) in the even episodes, so CartPole both terminates and reaches its time limit."""
    env = minari.DataCollector(gym.make(env_id, max_episode_steps=max_steps))
    env.action_space.seed(0)
    for episode in range(episodes):
        env.reset(seed=episode)
        done = False
        while not done:
            fixed = push is not None and episode % 2 == 0
            _, _, terminated, truncated, _ = env.step(push if fixed else env.action_space.sample())
            done = terminated or truncated
    return env.create_dataset(dataset_id, algorithm_name="random", author="rljax tests")


def _minari_transitions(dataset) -> dict[str, np.ndarray]:
    """minari's episodes, flattened by hand as rljax.data.episodes_to_arrays documents."""
    episodes = list(dataset.iterate_episodes())
    cat = np.concatenate
    return {
        "observations": cat([e.observations[:-1] for e in episodes]),
        "next_observations": cat([e.observations[1:] for e in episodes]),
        "actions": cat([e.actions for e in episodes]),
        "rewards": cat([e.rewards for e in episodes]),
        "terminals": cat([e.terminations for e in episodes]),
        "timeouts": cat([e.truncations & ~e.terminations for e in episodes]),
    }


@pytest.mark.parametrize(
    "env_id, max_steps, push", [("Pendulum-v1", 8, None), ("CartPole-v1", 12, 1)]
)
def test_datasets_minari_writes_load_by_id_and_path(minari_root, env_id, max_steps, push):
    dataset_id = f"test/{env_id.split('-')[0].lower()}/random-v0"
    theirs = _minari_transitions(_collect(dataset_id, env_id, max_steps, 4, push))
    if push is not None:  # both ends occur: the test would miss a swapped flag otherwise
        assert theirs["terminals"].any() and theirs["timeouts"].any()
    for name in (dataset_id, minari_root / dataset_id):
        ours, metadata = data.load(name)
        got = ours.to_numpy()
        for key, value in theirs.items():  # as Dataset holds them: float32, or JAX's int
            assert (got[key].dtype.kind == "i") == (value.dtype.kind in "iu"), key
            want = value.astype(got[key].dtype)
            np.testing.assert_array_equal(got[key], want, err_msg=f"{name}: {key}")
        assert metadata["dataset_id"] == dataset_id
    assert data.source_env(metadata) == {"name": env_id}
    assert data.read_metadata(dataset_id) == metadata  # the metadata alone, without the arrays
    if env_id == "Pendulum-v1":  # the env's action bounds travel in minari's serialization
        space = json.loads(metadata["action_space"])
        assert (space["type"], space["low"], space["high"]) == ("Box", [-2.0], [2.0])
        assert resolve_spec(RunSpec(algo="bc", dataset=dataset_id)).env == {"name": env_id}


def _episodes(rng, continuous: bool) -> list[dict]:
    episodes = []
    for steps, terminated in ((5, False), (3, True)):
        last, none = np.arange(steps) == steps - 1, np.zeros(steps, bool)
        actions = (
            rng.uniform(-2, 2, (steps, 1)).astype(np.float32)
            if continuous
            else rng.integers(0, 2, steps)
        )
        episodes.append(
            {
                "observations": rng.normal(size=(steps + 1, 3)).astype(np.float32),
                "actions": actions,
                "rewards": rng.normal(size=steps),
                "terminations": last if terminated else none,
                "truncations": none if terminated else last,
                "seed": len(episodes),
            }
        )
    return episodes


def test_datasets_rljax_writes_load_and_list_in_minari(minari_root):
    rng = np.random.default_rng(0)
    pendulum = gym.spec("Pendulum-v1")
    spaces = {
        "observation_space": serialize_space(gym.make(pendulum).observation_space),
        "action_space": serialize_space(gym.make(pendulum).action_space),
        "env_spec": pendulum.to_json(),
    }
    written = {
        "rljax/pendulum/random-v0": (_episodes(rng, continuous=True), spaces),
        "rljax/discrete-v1": (_episodes(rng, continuous=False), {}),  # spaces inferred
    }
    for dataset_id, (episodes, metadata) in written.items():
        data.write_minari(dataset_id, episodes, {**metadata, "kind": "random"})
        theirs = minari.load_dataset(dataset_id)
        assert theirs.spec.dataset_id == dataset_id and theirs.total_steps == 8
        for mine, their in zip(episodes, theirs.iterate_episodes(), strict=True):
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                np.testing.assert_array_equal(getattr(their, key), mine[key], strict=True)
    assert sorted(minari.list_local_datasets()) == sorted(written)
    assert list_local_namespaces() == ["rljax", "rljax/pendulum"]
    recovered = minari.load_dataset("rljax/pendulum/random-v0").recover_environment()
    assert recovered.spec.id == "Pendulum-v1"


def test_an_env_rljax_cannot_make_is_named(minari_root):
    episodes = _episodes(np.random.default_rng(1), continuous=True)
    data.write_minari(
        "test/hopper/expert-v0", episodes, {"env_spec": gym.spec("Hopper-v5").to_json()}
    )
    assert data.source_env(data.read_metadata("test/hopper/expert-v0")) == {"name": "Hopper-v5"}
    spec = RunSpec(algo="bc", dataset="test/hopper/expert-v0")
    with pytest.raises(ConfigError, match=r"recorded on env 'Hopper-v5', which rljax cannot make"):
        resolve_spec(spec)
    with pytest.raises(ConfigError, match=r"--env NAME .* \(close: brax/hopper\); `rljax envs`"):
        resolve_spec(spec)
    spec.env = {"name": "brax/hopper"}
    assert resolve_spec(spec).env == {"name": "brax/hopper"}


def test_cli_trains_on_a_minari_dataset_without_env(minari_root, tmp_path):
    """gymnasium's MountainCarContinuous-v0 (actions in [-1, 1]) is made by its gymnax twin."""
    _collect("test/mountaincar/random-v0", "MountainCarContinuous-v0", 20, 3)
    out = tmp_path / "run"
    argv = ["train", "bc", "--dataset", "test/mountaincar/random-v0", "--total-steps", "200"]
    argv += ["--out", str(out), "--eval-episodes", "1", "--chunk-updates", "200"]
    argv += ["--set", "hidden_sizes=[16,16]", "--set", "batch_size=32"]
    assert cli.main(argv) == 0
    assert RunSpec.load(out / "config.yaml").env == {"name": "MountainCarContinuous-v0"}


def test_raw_torques_are_rescaled_then_trained_and_acted_in_torques(
    minari_root, tmp_path, monkeypatch, capsys
):
    """Pendulum-v1 recorded by minari in its own units (torques in [-2, 2]) is refused with the
    command that fixes it; converted, it trains with no --env, and the policy acts in torques."""
    import jax

    from rljax import load_policy
    from rljax.agents import bc
    from rljax.runner.policy import restore

    _collect("test/pendulum/random-v0", "Pendulum-v1", 20, 4)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "bc", "--total-steps", "200", "--eval-episodes", "1", "--chunk-updates"]
    argv += ["200", "--set", "hidden_sizes=[16,16]", "--set", "batch_size=32"]
    assert cli.main([*argv, "--dataset", "test/pendulum/random-v0", "--out", "raw"]) == 2
    assert "data convert test/pendulum/random-v0 OUT --rescale-actions" in capsys.readouterr().err
    convert = ["data", "convert", "test/pendulum/random-v0", "./unit", "--rescale-actions"]
    assert cli.main(convert) == 0
    unit, metadata = data.load(tmp_path / "unit")
    raw, _ = data.load("test/pendulum/random-v0")
    np.testing.assert_allclose(unit.actions, raw.actions / 2, atol=1e-6)
    assert metadata["env"] == {"name": "Pendulum-v1", "unit_actions": True}
    assert cli.main([*argv, "--dataset", str(tmp_path / "unit"), "--out", "run"]) == 0
    policy = load_policy(tmp_path / "run", deterministic=True)
    program, state, _ = restore(tmp_path / "run")
    obs = raw.observations[:16]
    params = jax.tree.map(lambda x: x[0], state.params)
    unit_actions = bc.act(program.configs[0], params, obs, jax.random.PRNGKey(0), True)
    torques = policy(obs, jax.random.PRNGKey(0))
    np.testing.assert_allclose(torques, 2 * np.clip(unit_actions, -1, 1), rtol=1e-5)
