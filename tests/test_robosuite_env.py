"""RobosuiteEnv against generated files: observations, replay, re-rendering, other conventions, specs."""

import json
import pickle

import h5py
import numpy as np
import pytest

from envs.env_utils import EnvFactory
from envs.hdf5_reader import list_obs_keys, read_env_meta, read_shape_meta
from envs.robosuite_env import RobosuiteEnv, build_env_kwargs, is_flat_controller_config
from envs.synthetic import lift_env_args
from utils.shape_meta import rgb_keys


def _env_from_file(path, max_steps=400, **kwargs):
    """Env built from a file's env_args, with every obs key of the file."""
    shape_meta = read_shape_meta(path, list_obs_keys(path))
    return RobosuiteEnv(read_env_meta(path), shape_meta, max_steps, **kwargs), shape_meta


@pytest.fixture(scope='module')
def image_env(lift_image_file):
    """One image env for this module (building one costs about a second)."""
    env, shape_meta = _env_from_file(lift_image_file)
    yield env, shape_meta
    env.close()


def test_file_records_cheap_render(lift_image_file):
    """The generator's render setting reaches the env through the reader's env_meta."""
    assert read_env_meta(lift_image_file)['render_quality'] == 'cheap'


def test_reset_matches_shape_meta(image_env):
    """reset() returns exactly shape_meta's keys with its shapes; images uint8 CHW, low-dim float32."""
    env, shape_meta = image_env
    obs = env.reset(seed=3)
    assert sorted(obs) == sorted(shape_meta['obs'])
    for key, meta in shape_meta['obs'].items():
        assert list(obs[key].shape) == list(meta['shape']), key
        assert obs[key].dtype == (np.uint8 if key in rgb_keys(shape_meta) else np.float32), key
    assert obs['agentview_image'].shape == (3, 84, 84)


def test_reset_seed_is_reproducible(image_env):
    """The same seed gives the same initial state; another seed a different one."""
    env, _ = image_env
    a = env.reset(seed=11)['object']
    b = env.reset(seed=11)['object']
    c = env.reset(seed=12)['object']
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_replay_reproduces_states_and_succeeds(image_env, lift_image_file):
    """Replaying a demo's actions from its first state succeeds and follows the recorded states."""
    env, _ = image_env
    with h5py.File(lift_image_file, 'r') as f:
        demo = f['data/demo_1']
        states, actions = demo['states'][()], demo['actions'][()]
    env.reset()
    env.reset_to(states[0])
    successes, errors = [], []
    for t, action in enumerate(actions):
        if t > 0:
            errors.append(np.abs(env.get_state()[1:] - states[t][1:]).max())
        _, _, done, info = env.step(action)
        successes.append(info['success'])
    assert max(errors) < 1e-3, f'replay drifted from the recorded states by {max(errors)}'
    assert successes[-1] and done


def test_reset_to_renders_stored_images(image_env, lift_image_file):
    """reset_to(states[k]) renders the images stored at step k (same cheap render setting)."""
    env, _ = image_env
    with h5py.File(lift_image_file, 'r') as f:
        demo = f['data/demo_0']
        states = demo['states'][()]
        steps = [0, len(states) // 2, len(states) - 1]
        stored = {k: demo[f'obs/{k}'][steps] for k in ('agentview_image', 'robot0_eye_in_hand_image')}
    env.reset()
    for i, t in enumerate(steps):
        obs = env.reset_to(states[t])
        for key, images in stored.items():
            diff = np.abs(obs[key].transpose(1, 2, 0).astype(np.int16) - images[i])
            assert diff.mean() < 0.5 and np.mean(diff > 8) < 0.01, (key, t, diff.mean())


def test_two_envs_in_one_process_render_their_own_frames(image_env, lift_image_file):
    """A second env with its own GL context must not corrupt the first env's frames."""
    env, _ = image_env
    other, _ = _env_from_file(lift_image_file)
    other.reset(seed=5)
    with h5py.File(lift_image_file, 'r') as f:
        state = f['data/demo_0/states'][0]
        stored = f['data/demo_0/obs/agentview_image'][0]
    obs = env.reset_to(state)
    other.close()
    diff = np.abs(obs['agentview_image'].transpose(1, 2, 0).astype(np.int16) - stored)
    assert diff.mean() < 0.5


def test_render_for_video(image_env):
    """render() gives an upright HWC uint8 frame of the asked size."""
    env, _ = image_env
    env.reset(seed=0)
    frame = env.render('agentview', 64, 96)
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8 and frame.std() > 1


def test_step_done_at_max_steps(lift_state_file):
    """done is True at max_episode_steps without success; info['success'] is reported."""
    env, _ = _env_from_file(lift_state_file, max_steps=3)
    env.reset(seed=0)
    dones = [env.step(np.zeros(7))[2] for _ in range(3)]
    _, _, _, info = env.step(np.zeros(7))
    env.close()
    assert dones == [False, False, True] and info['success'] is False


def test_env_factory_pickles_and_rebuilds(lift_state_file):
    """EnvFactory is a small picklable recipe; unpickled, it rebuilds an env with the same resets."""
    env, shape_meta = _env_from_file(lift_state_file)
    blob = pickle.dumps(EnvFactory(read_env_meta(lift_state_file), shape_meta, 400))
    assert len(blob) < 20_000
    clone = pickle.loads(blob)()
    np.testing.assert_array_equal(env.reset(seed=7)['object'], clone.reset(seed=7)['object'])
    env.close()
    clone.close()


def test_flat_14_controller_env_args_build_an_env(tmp_path):
    """1.4-style env_args from another tool (flat OSC_POSE config, 96x96 cameras) build a working env."""
    env_args = json.loads(json.dumps(lift_env_args('1.4', image_size=96)))
    assert is_flat_controller_config(env_args['env_kwargs']['controller_configs'])
    shape_meta = {'obs': {'agentview_image': {'shape': [3, 96, 96], 'type': 'rgb'},
                          'object': {'shape': [10], 'type': 'low_dim'},
                          'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'}},
                  'action': {'shape': [7]}}
    _, kwargs = build_env_kwargs(env_args, shape_meta)
    assert kwargs['controller_configs']['body_parts']['right']['type'] == 'OSC_POSE'
    env = RobosuiteEnv({'env_args': env_args, 'render_quality': 'cheap', 'source_file': 'other.hdf5'},
                       shape_meta, 10)
    obs = env.reset(seed=0)
    start = obs['robot0_eef_pos'].copy()
    for _ in range(5):
        obs, _, _, _ = env.step(np.array([0, 0, 1.0, 0, 0, 0, -1]))
    env.close()
    assert obs['agentview_image'].shape == (3, 96, 96)
    assert obs['robot0_eef_pos'][2] - start[2] > 0.02  # the delta OSC arm moved up


def test_missing_camera_is_refused(lift_state_file):
    """Asking for a camera that env_args does not render names the file and the camera."""
    env_meta = read_env_meta(lift_state_file)
    shape_meta = {'obs': {'sideview_image': {'shape': [3, 84, 84], 'type': 'rgb'}}, 'action': {'shape': [7]}}
    with pytest.raises(ValueError, match='sideview'):
        RobosuiteEnv(env_meta, shape_meta, 10)
