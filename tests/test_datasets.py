"""Sequence windows, RL fields, storage modes and replay appends of utils.datasets (synthetic files)."""

import pickle

import numpy as np
import pytest

from envs.hdf5_reader import RobomimicFileError
from envs.robomimic_utils import load_datasets
from envs.synthetic import encode, write_robomimic_file
from utils.shape_meta import rgb_keys

LENGTHS = (5, 2, 9, 1, 6)
DEMO_IDS = (4, 11, 12, 30, 7)   # non-contiguous; sorted order: 4, 7, 11, 12, 30


@pytest.fixture(scope='module')
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('data') / 'image.hdf5'
    return write_robomimic_file(path, lengths=LENGTHS, demo_ids=DEMO_IDS, image_size=10, success_steps=2)


def _steps_in_order():
    """(demo id, demo length, step) of every dataset step, episodes in demo-suffix order."""
    return [(demo_id, n, t) for demo_id, n in sorted(zip(DEMO_IDS, LENGTHS, strict=True)) for t in range(n)]


def test_windows_exact_and_edge_padded(image_file):
    train, valid = load_datasets(image_file, 'image', valid_fraction=0.0)
    assert valid is None and train.num_episodes == 5 and len(train) == sum(LENGTHS)
    obs_steps, horizon = 3, 4
    batch = train.sample_sequence(len(train), horizon, obs_steps=obs_steps, idxs=np.arange(len(train)))
    steps = _steps_in_order()
    for b, (demo_id, n, t) in enumerate(steps):
        clip = lambda s, n=n: min(max(s, 0), n - 1)   # noqa: E731  edge padding inside one episode
        obs_t = [clip(t + k) for k in range(1 - obs_steps, 1)]
        act_t = [clip(t + k) for k in range(horizon)]
        next_t = [clip(t + horizon + k) for k in range(1 - obs_steps, 1)]
        np.testing.assert_array_equal(batch['observations']['robot0_eef_pos'][b, :, 0],
                                      [encode(demo_id, s) for s in obs_t])
        np.testing.assert_array_equal(batch['observations']['robot0_eef_quat'][b, :, 3],
                                      [encode(demo_id, s) + 3 / 8 for s in obs_t])
        np.testing.assert_array_equal(batch['actions'][b, :, 0], [encode(demo_id, s) for s in act_t])
        np.testing.assert_array_equal(batch['actions'][b, :, 6], [encode(demo_id, s) + 6 / 8 for s in act_t])
        np.testing.assert_array_equal(batch['valid'][b], [float(t + k < n) for k in range(horizon)])
        np.testing.assert_array_equal(batch['next_observations']['robot0_gripper_qpos'][b, :, 1],
                                      [encode(demo_id, s) + 1 / 8 for s in next_t])
        for cam_index, cam in enumerate(('agentview_image', 'robot0_eye_in_hand_image')):
            image = batch['observations'][cam][b]                     # (To, 3, H, W) uint8
            assert image.dtype == np.uint8 and image.shape == (obs_steps, 3, 10, 10)
            np.testing.assert_array_equal(image[:, 0, 4, 7], obs_t)   # channel 0 = step
            np.testing.assert_array_equal(image[:, 1], demo_id)       # channel 1 = demo id: never mixed
            np.testing.assert_array_equal(image[:, 2], cam_index)
            np.testing.assert_array_equal(batch['next_observations'][cam][b][:, 0, 0, 0], next_t)
    assert batch['actions'].dtype == np.float32
    assert batch['observations']['robot0_eef_pos'].dtype == np.float32


def test_action_chunks_are_the_windows_actions(image_file):
    """Dataset.action_chunks(Tp): the action windows of every step, edge padded; a capped count takes evenly
    spaced steps."""
    train, _ = load_datasets(image_file, 'image', valid_fraction=0.0)
    every = train.action_chunks(4)
    windows = train.sample_sequence(len(train), 4, idxs=np.arange(len(train)))['actions']
    np.testing.assert_array_equal(every, windows)
    few = train.action_chunks(4, max_chunks=3)
    np.testing.assert_array_equal(few, windows[[0, (len(train) - 1) // 2, len(train) - 1]])
    with pytest.raises(ValueError, match='horizon=0'):
        train.action_chunks(0)


def test_rl_fields_hand_computed(tmp_path):
    # One demo of 4 steps, rewards [0, 0, 1, 1], dones [0, 0, 1, 1].
    path = write_robomimic_file(tmp_path / 'rl.hdf5', lengths=(4,), cameras=(), success_steps=2)
    train, _ = load_datasets(path, 'state', valid_fraction=0.0)
    b = train.sample_sequence(4, 3, discount=0.9, idxs=[0, 1, 2, 3])
    # i=0: -1 - 0.9 + 0            i=1: -1 + 0 + 0      i=2: 0 + 0 + 0 (pad)      i=3: all padded, 0
    np.testing.assert_allclose(b['rewards'], [-1.9, -1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(b['masks'], [0, 0, 0, 0])   # every chunk reaches the success step 2
    np.testing.assert_array_equal(b['valid'], [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    b = train.sample_sequence(2, 2, discount=0.5, idxs=[0, 1])
    np.testing.assert_allclose(b['rewards'], [-1.5, -1.0], atol=1e-6)   # -1 - 0.5;  -1 + 0.5 * 0
    np.testing.assert_array_equal(b['masks'], [1, 0])
    # A failed demo (no reward, no done): padded steps repeat the last real step's reward -1.
    path = write_robomimic_file(tmp_path / 'fail.hdf5', lengths=(2,), cameras=(), success_steps=0)
    train, _ = load_datasets(path, 'state', valid_fraction=0.0)
    b = train.sample_sequence(1, 3, discount=0.5, idxs=[1])
    np.testing.assert_allclose(b['rewards'], [-1.75], atol=1e-6)
    np.testing.assert_array_equal(b['masks'], [1])
    assert b['rewards'].dtype == np.float32 and b['masks'].dtype == np.float32


def test_ram_and_cache_give_identical_batches(image_file):
    ram, _ = load_datasets(image_file, 'image', storage='ram', seed=3, valid_fraction=0.4)
    cache, _ = load_datasets(image_file, 'image', storage='cache', seed=3, valid_fraction=0.4)
    assert ram.storage_mode == 'ram' and cache.storage_mode == 'cache'
    for _ in range(5):
        a = ram.sample_sequence(16, 4, obs_steps=2)
        b = cache.sample_sequence(16, 4, obs_steps=2)
        for key in ('observations', 'next_observations'):
            for k in a[key]:
                np.testing.assert_array_equal(a[key][k], b[key][k])
        for key in ('actions', 'rewards', 'masks', 'valid'):
            np.testing.assert_array_equal(a[key], b[key])
    auto, _ = load_datasets(image_file, 'image', ram_budget_gb=1e-6)   # over budget -> cache
    assert auto.storage_mode == 'cache'
    clone = pickle.loads(pickle.dumps(cache._storage.obs['agentview_image']))   # worker processes
    rows = np.array([0, 3])
    np.testing.assert_array_equal(clone[rows], cache._storage.obs['agentview_image'][rows])


def test_cache_is_reused_rebuilt_when_stale_and_never_touches_user_files(tmp_path):
    path = write_robomimic_file(tmp_path / 'f.hdf5', lengths=(3, 4), image_size=6)
    original = path.read_bytes()
    load_datasets(path, 'image', storage='cache')
    cache = tmp_path / 'f.hdf5.cache'
    npy = cache / 'agentview_image.npy'
    first = npy.stat().st_mtime_ns
    load_datasets(path, 'image', storage='cache')
    assert npy.stat().st_mtime_ns == first                      # reused, not rebuilt
    assert path.read_bytes() == original                        # the hdf5 itself is never written
    write_robomimic_file(path, lengths=(3, 4, 2), image_size=6)  # the user replaces the file: cache is stale
    train, _ = load_datasets(path, 'image', storage='cache', valid_fraction=0.0)
    assert train._storage.obs['agentview_image'].shape == (9, 3, 6, 6)
    foreign = tmp_path / 'g.hdf5'
    write_robomimic_file(foreign, lengths=(3,), image_size=6)
    (tmp_path / 'g.hdf5.cache').mkdir()
    (tmp_path / 'g.hdf5.cache' / 'notes.txt').write_text('mine')
    with pytest.raises(RobomimicFileError, match='not ours'):
        load_datasets(foreign, 'image', storage='cache')
    assert (tmp_path / 'g.hdf5.cache' / 'notes.txt').read_text() == 'mine'


def test_normalizer_stats_and_split_datasets(image_file):
    train, valid = load_datasets(image_file, 'state', valid_fraction=0.4, seed=0)
    assert train.num_episodes == 3 and valid.num_episodes == 2
    stats = train.normalizer_stats()
    assert sorted(stats) == ['actions', 'object', 'robot0_eef_pos', 'robot0_eef_quat', 'robot0_gripper_qpos']
    batch = train.sample_sequence(len(train), 1, idxs=np.arange(len(train)))
    codes = batch['actions'][:, 0, 0]
    np.testing.assert_array_equal(stats['actions']['min'], codes.min() + np.arange(7) / 8)
    np.testing.assert_array_equal(stats['actions']['max'], codes.max() + np.arange(7) / 8)
    train_ids = set((codes // 1000).astype(int))
    valid_codes = valid.sample_sequence(len(valid), 1, idxs=np.arange(len(valid)))['actions'][:, 0, 0]
    assert train_ids.isdisjoint((valid_codes // 1000).astype(int))   # split by episode
    assert train_ids | set((valid_codes // 1000).astype(int)) == set(DEMO_IDS)


def test_seeded_rng_and_state(image_file):
    a, _ = load_datasets(image_file, 'state', seed=5)
    b, _ = load_datasets(image_file, 'state', seed=5)
    np.testing.assert_array_equal(a.sample_sequence(8, 2)['actions'], b.sample_sequence(8, 2)['actions'])
    state = a.rng_state()
    first = a.sample_sequence(8, 2)['actions']
    a.set_rng_state(state)
    np.testing.assert_array_equal(a.sample_sequence(8, 2)['actions'], first)


def test_add_episode(image_file):
    train, valid = load_datasets(image_file, 'image', storage='ram', valid_fraction=0.4)
    n_valid = len(valid)
    steps = 3
    obs = {k: (np.full((steps, *m['shape']), 200, np.uint8) if k in rgb_keys(train.shape_meta)
               else np.full((steps, *m['shape']), -5.0)) for k, m in train.shape_meta['obs'].items()}
    train.add_episode(obs, np.full((steps, 7), -7.0), rewards=[0, 0, 1], dones=[0, 0, 1])
    assert train.num_episodes == 4 and len(valid) == n_valid
    b = train.sample_sequence(1, 4, obs_steps=2, idxs=[len(train) - 2])   # step 1 of the new episode
    np.testing.assert_array_equal(b['actions'][0, :, 0], -7.0)
    np.testing.assert_array_equal(b['valid'][0], [1, 1, 0, 0])
    assert (b['observations']['agentview_image'] == 200).all() and b['masks'][0] == 0
    assert train.normalizer_stats()['actions']['min'][0] == -7.0
    with pytest.raises(ValueError, match='robot0_eef_pos'):
        bad = dict(obs, robot0_eef_pos=np.zeros((steps, 4)))
        train.add_episode(bad, np.zeros((steps, 7)), [0] * steps, [0] * steps)
    cached, _ = load_datasets(image_file, 'image', storage='cache')
    with pytest.raises(ValueError, match='RAM storage'):
        cached.add_episode(obs, np.zeros((steps, 7)), [0] * steps, [0] * steps)


def test_returns_to_go_against_the_closed_form(tmp_path):
    """Dataset.returns_to_go: per step, episode by episode, -(1 - g ** (n - 1 - i)) / (1 - g) for a success
    on the last step; the same sum as sample_sequence's reward of a window that reaches the episode's end."""
    path = write_robomimic_file(tmp_path / 'rtg.hdf5', lengths=(4, 3, 6), cameras=(), success_steps=1)
    train, _ = load_datasets(path, 'state', valid_fraction=0.0)
    g = 0.9
    rtg = train.returns_to_go(g)
    expected = [-(1 - g ** (n - 1 - i)) / (1 - g) for n in (4, 3, 6) for i in range(n)]
    np.testing.assert_allclose(rtg, expected, atol=1e-9)
    windows = train.sample_sequence(len(train), 6, discount=g, idxs=np.arange(len(train)))['rewards']
    np.testing.assert_allclose(rtg, windows, atol=1e-5)
    # a failed demo (no reward): every step counts -1 to the end, nothing bootstrapped after it
    path = write_robomimic_file(tmp_path / 'fail.hdf5', lengths=(3,), cameras=(), success_steps=0)
    failed, _ = load_datasets(path, 'state', valid_fraction=0.0)
    np.testing.assert_allclose(failed.returns_to_go(0.5), [-1.75, -1.5, -1.0], atol=1e-9)
