"""Rollout wrapper and evaluation: history padding, action queue, seeds, workers, a real robosuite rollout."""

import numpy as np
import pytest

from envs.evaluation import evaluate
from envs.wrappers import ChunkedRollout


class CounterEnv:
    """Deterministic toy env: obs 'x' = [seed, t, last action]; succeeds when an action of 1 is taken."""

    def __init__(self, max_episode_steps=50):
        self.max_episode_steps = max_episode_steps
        self.actions = []

    def reset(self, seed=None):
        self.seed, self.t = seed, 0
        return self._obs(0.0)

    def _obs(self, a):
        return {'x': np.array([self.seed, self.t, a], dtype=np.float32),
                'cam_image': np.full((3, 4, 4), self.t, dtype=np.uint8)}

    def step(self, action):
        self.t += 1
        self.actions.append(float(action[0]))
        success = action[0] == 1.0
        return self._obs(float(action[0])), float(success), success or self.t >= self.max_episode_steps, \
            {'success': success}


def make_counter_env():
    """Module-level factory so spawned workers can unpickle it."""
    return CounterEnv()


def test_history_is_padded_with_first_obs_and_rolls():
    roll = ChunkedRollout(CounterEnv(), obs_steps=3, action_steps=2)
    obs = roll.reset(seed=7)
    assert obs['x'].shape == (3, 3) and obs['cam_image'].shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(obs['x'][:, 1], [0, 0, 0])  # padded by repeating the first observation
    obs, _, done = roll.step_chunk(np.array([[0.1], [0.2], [0.3], [0.4]]))
    assert not done
    np.testing.assert_array_equal(obs['x'][:, 1], [0, 1, 2])  # oldest first, newest last
    np.testing.assert_allclose(obs['x'][:, 2], [0.0, 0.1, 0.2])


def test_action_queue_executes_first_ta_actions_only():
    env = CounterEnv()
    roll = ChunkedRollout(env, obs_steps=1, action_steps=3)
    roll.reset(seed=0)
    roll.step_chunk(np.array([[0.1], [0.2], [0.3], [0.4], [0.5]]))
    roll.step_chunk(np.array([[0.6], [0.7], [0.8], [0.9], [1.0]]))
    np.testing.assert_allclose(env.actions, [0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert roll.num_steps == 6


def test_chunk_stops_at_success_and_at_max_steps():
    env = CounterEnv()
    roll = ChunkedRollout(env, obs_steps=1, action_steps=4)
    roll.reset(seed=0)
    _, _, done = roll.step_chunk(np.array([[0.0], [1.0], [0.0], [0.0]]))
    assert done and roll.success and roll.num_steps == 2
    roll = ChunkedRollout(CounterEnv(), obs_steps=1, action_steps=4, max_steps=6)
    roll.reset(seed=0)
    roll.step_chunk(np.zeros((4, 1)))
    _, _, done = roll.step_chunk(np.zeros((4, 1)))
    assert done and not roll.success and roll.num_steps == 6


def test_bad_chunk_shape_is_refused():
    roll = ChunkedRollout(CounterEnv(), obs_steps=1, action_steps=4)
    roll.reset(seed=0)
    with pytest.raises(ValueError, match='action chunk'):
        roll.step_chunk(np.zeros((2, 1)))


def seed_policy(obs):
    """Succeed at step 3 on even seeds, never on odd ones. obs['x'] (B, To, 3) -> (B, 4, 1)."""
    seeds = obs['x'][:, -1, 0]
    t = obs['x'][:, -1, 1]
    fire = (seeds % 2 == 0) & (t >= 2)
    return np.broadcast_to(fire[:, None, None].astype(np.float32), (len(seeds), 4, 1)).copy()


@pytest.mark.parametrize('num_workers', [1, 2])
def test_evaluate_fixed_seeds_success_rate_and_length(num_workers):
    stats, videos = evaluate(seed_policy, make_counter_env, num_episodes=4, obs_steps=2, action_steps=2,
                             max_steps=10, seed=10, num_workers=num_workers, video_episodes=1)
    # Seeds 10..13. Queries happen at t = 0, 2, 4, ... (Ta = 2); on even seeds the query at t = 2 returns 1s,
    # so the 3rd step succeeds; odd seeds run to the limit of 10.
    assert stats['success_rate'] == 0.5
    assert stats['episode_length'] == (3 + 10 + 3 + 10) / 4
    assert stats['num_episodes'] == 4
    assert len(videos) == 1 and videos[0].shape == (4, 4, 4, 3) and videos[0].dtype == np.uint8


def test_policy_is_batched_across_workers():
    batch_sizes = []

    def policy(obs):
        batch_sizes.append(len(obs['x']))
        return np.zeros((len(obs['x']), 4, 1), dtype=np.float32)

    evaluate(policy, make_counter_env, num_episodes=2, obs_steps=1, action_steps=4, max_steps=8,
             num_workers=2)
    assert batch_sizes == [2, 2]


def make_broken_env():
    """An env factory that fails inside the worker process."""
    raise OSError('cannot open the simulator')


def test_worker_and_policy_errors_are_reported():
    with pytest.raises(RuntimeError, match='cannot open the simulator'):
        evaluate(seed_policy, make_broken_env, num_episodes=2, obs_steps=1, action_steps=2, num_workers=2)
    with pytest.raises(ValueError, match='policy must return'):
        evaluate(lambda obs: np.zeros((1, 4)), make_counter_env, num_episodes=2, obs_steps=1, action_steps=2,
                 num_workers=2)


@pytest.mark.slow
def test_full_length_state_rollout(lift_state_file):
    """A real Lift rollout with a do-nothing policy runs the full step limit and reports no success."""
    from envs.env_utils import make_env_and_datasets

    env, _, train, _ = make_env_and_datasets('lift-scripted-low_dim', dataset_path=lift_state_file,
                                             max_episode_steps=400)
    env.close()
    from envs.env_utils import EnvFactory

    factory = EnvFactory(train.env_meta, train.shape_meta, max_episode_steps=400)
    action_dim = train.shape_meta['action']['shape'][0]

    def still(obs):
        first = next(iter(obs.values()))
        for key, meta in train.shape_meta['obs'].items():
            assert obs[key].shape == (len(first), 2, *meta['shape'])
        return np.zeros((len(first), 16, action_dim), dtype=np.float32)

    stats, _ = evaluate(still, factory, num_episodes=1, obs_steps=2, action_steps=8, max_steps=400)
    assert stats['success_rate'] == 0.0
    assert stats['episode_length'] == 400
