"""Scripted demo generator and states-to-obs converter: robomimic layout, determinism, safety, experts."""

import hashlib
import json

import h5py
import numpy as np
import pytest

from envs.convert_states_to_obs import convert_states_to_obs
from envs.generate_demos import env_spec, generate_demos, run_episode
from envs.robosuite_env import RobosuiteEnv, is_flat_controller_config
from tests.helpers import hdf5_contents

IMAGE_CAMERAS = ('agentview', 'robot0_eye_in_hand')
IMAGE_KEYS = tuple(f'{c}_image' for c in IMAGE_CAMERAS)
LOW_DIM = {'robot0_eef_pos': 3, 'robot0_eef_quat': 4, 'robot0_gripper_qpos': 2, 'object': 10}


def _digest(path):
    """sha256 of a file's bytes."""
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()




def test_image_file_has_robomimic_layout(lift_image_file):
    """The generator's file reads back with h5py in robomimic layout."""
    with h5py.File(lift_image_file, 'r') as f:
        data = f['data']
        env_args = json.loads(data.attrs['env_args'])
        assert env_args['env_name'] == 'Lift'
        controller = env_args['env_kwargs']['controller_configs']
        assert not is_flat_controller_config(controller)
        assert controller['body_parts']['right']['type'] == 'OSC_POSE'
        assert json.loads(data.attrs['acfql_render']) == {'quality': 'cheap'}
        names = sorted(data.keys())
        assert names == ['demo_0', 'demo_1', 'demo_2']
        total = 0
        for name in names:
            demo = data[name]
            n = int(demo.attrs['num_samples'])
            total += n
            assert demo['actions'].shape == (n, 7) and demo['states'].shape[0] == n
            assert np.abs(demo['actions'][()]).max() <= 1.0
            assert demo['rewards'].shape == (n,) and demo['dones'].shape == (n,)
            assert demo['rewards'][-1] == 1 and demo['dones'][-1] == 1 and demo['dones'][:-1].sum() == 0
            for key in IMAGE_KEYS:
                assert demo[f'obs/{key}'].shape == (n, 84, 84, 3) and demo[f'obs/{key}'].dtype == np.uint8
            for key, dim in LOW_DIM.items():
                assert demo[f'obs/{key}'].shape == (n, dim)
        assert data.attrs['total'] == total
        train = {x.decode() for x in f['mask/train'][()]}
        valid = {x.decode() for x in f['mask/valid'][()]}
        assert train | valid == set(names) and not train & valid and valid


def test_images_are_upright(lift_image_file):
    """agentview looks at the table from the front: the table (bright) fills the bottom half, not the top."""
    with h5py.File(lift_image_file, 'r') as f:
        img = f['data/demo_0/obs/agentview_image'][0].astype(float)
    assert img[60:].mean() > img[:20].mean()


def test_refuses_to_overwrite(lift_state_file, tmp_path):
    """An existing file is never replaced unless overwrite=True; nothing is left behind on refusal."""
    before = _digest(lift_state_file)
    with pytest.raises(FileExistsError, match=str(lift_state_file)):
        generate_demos('lift', 1, 'low_dim', lift_state_file, progress=False)
    assert _digest(lift_state_file) == before
    assert sorted(p.name for p in lift_state_file.parent.iterdir()) == [lift_state_file.name]


def test_bad_arguments_are_refused(tmp_path):
    """Unknown task / obs type give a clear error naming the bad value."""
    with pytest.raises(ValueError, match='transport'):
        generate_demos('transport', 1, 'low_dim', tmp_path / 'x.hdf5', progress=False)
    with pytest.raises(ValueError, match='pixels'):
        generate_demos('lift', 1, 'pixels', tmp_path / 'x.hdf5', progress=False)


@pytest.mark.slow
def test_deterministic_across_worker_counts(lift_state_file, tmp_path):
    """Same seed, 1 or 2 worker processes: the same file content."""
    path = generate_demos('lift', 3, 'low_dim', tmp_path / 'w2.hdf5', seed=0, workers=2, progress=False)
    a, b = hdf5_contents(lift_state_file), hdf5_contents(path)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.slow
def test_multimodal_draws_two_distinct_strategies(tmp_path):
    """--multimodal: both strategies occur, and they approach the cube from opposite sides."""
    path = generate_demos('lift', 6, 'low_dim', tmp_path / 'mm.hdf5', seed=1, multimodal=True, progress=False)
    side = {}
    with h5py.File(path, 'r') as f:
        for name in f['data']:
            demo = f[f'data/{name}']
            rel_y = demo['obs/robot0_eef_pos'][:, 1] - demo['obs/object'][:, 1]  # eef y - cube y
            side.setdefault(int(demo.attrs['strategy']), []).append(rel_y[:15].max() + rel_y[:15].min())
    assert set(side) == {0, 1}
    assert min(side[0]) > 0.02 and max(side[1]) < -0.02


@pytest.mark.slow
@pytest.mark.parametrize('task,episodes,threshold',
                         [('lift', 20, 0.95), ('can', 10, 0.8), ('square', 20, 0.95)])
def test_expert_success_rate(task, episodes, threshold):
    """Scripted experts succeed on random initial states (Lift >= 19/20, Can >= 8/10, Square >= 19/20)."""
    env = RobosuiteEnv(**env_spec(task, 'low_dim'))
    rng = np.random.default_rng(123)
    seeds = rng.integers(2**31 - 1, size=episodes)
    successes = [run_episode(env, task, int(seed), strategy=k % 2)[0] for k, seed in enumerate(seeds)]
    env.close()
    assert np.mean(successes) >= threshold, successes


def _strip_images(src, dst):
    """Copy a generated file without its image observations and with cameras off in env_args."""
    with h5py.File(src, 'r') as fin, h5py.File(dst, 'w') as fout:
        for name in fin:
            if name != 'data':
                fin.copy(fin[name], fout, name=name)
        data = fout.create_group('data')
        for k, v in fin['data'].attrs.items():
            data.attrs[k] = v
        env_args = json.loads(fin['data'].attrs['env_args'])
        env_args['env_kwargs'].update(use_camera_obs=False, has_offscreen_renderer=False)
        data.attrs['env_args'] = json.dumps(env_args)
        del data.attrs['acfql_render']
        for demo in fin['data']:
            g = data.create_group(demo)
            for k, v in fin['data'][demo].attrs.items():
                g.attrs[k] = v
            for k in fin['data'][demo]:
                if k != 'obs':
                    fin.copy(fin['data'][demo][k], g, name=k)
            for k in fin['data'][demo]['obs']:
                if k not in IMAGE_KEYS:
                    fin.copy(fin['data'][demo]['obs'][k], g, name=f'obs/{k}')


def test_converter_round_trip(lift_image_file, tmp_path):
    """Strip the images from a generated file, render them back with the converter, compare."""
    states_only = tmp_path / 'states_only.hdf5'
    _strip_images(lift_image_file, states_only)
    before = _digest(states_only)
    out = convert_states_to_obs(states_only, tmp_path / 'image.hdf5', camera_names=IMAGE_CAMERAS,
                                render_quality='cheap', num_demos=2, progress=False)
    assert _digest(states_only) == before  # the input is only read
    with h5py.File(lift_image_file, 'r') as f0, h5py.File(out, 'r') as f1:
        assert json.loads(f1['data'].attrs['acfql_render']) == {'quality': 'cheap'}
        assert sorted(f1['data']) == ['demo_0', 'demo_1']
        assert f1['data'].attrs['total'] == sum(f0[f'data/demo_{i}'].attrs['num_samples'] for i in range(2))
        assert {x.decode() for x in f1['mask/train'][()]} <= {'demo_0', 'demo_1'}
        for demo in ('demo_0', 'demo_1'):
            for key in IMAGE_KEYS:
                a = f0[f'data/{demo}/obs/{key}'][()].astype(np.int16)
                b = f1[f'data/{demo}/obs/{key}'][()]
                assert a.shape == b.shape and b.dtype == np.uint8
                diff = np.abs(a - b)
                assert diff.mean() < 0.5 and np.mean(diff > 8) < 0.01, (demo, key, diff.mean())
            for key in ('states', 'actions', 'obs/object'):
                np.testing.assert_array_equal(f0[f'data/{demo}/{key}'][()], f1[f'data/{demo}/{key}'][()])


def test_converter_refuses_unsafe_outputs(lift_state_file, tmp_path):
    """The converter never writes over its input, nor over an existing file without overwrite."""
    with pytest.raises(ValueError, match='differ'):
        convert_states_to_obs(lift_state_file, lift_state_file, progress=False)
    existing = tmp_path / 'existing.hdf5'
    existing.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='existing.hdf5'):
        convert_states_to_obs(lift_state_file, existing, progress=False)
    assert existing.read_bytes() == b'keep me'


def test_files_record_the_expert_version_and_old_ones_are_flagged(lift_state_file, tmp_path):
    import json
    import shutil

    import h5py

    from envs.experts import EXPERT_VERSION
    from envs.generate_demos import stale_expert_version

    with h5py.File(lift_state_file, 'r') as f:
        assert json.loads(f['data'].attrs['acfql_generator'])['expert_version'] == EXPERT_VERSION
    assert stale_expert_version(lift_state_file) is None
    old = tmp_path / 'old.hdf5'
    shutil.copy(lift_state_file, old)
    with h5py.File(old, 'r+') as f:
        info = json.loads(f['data'].attrs['acfql_generator'])
        del info['expert_version']  # a file written before versions were recorded
        f['data'].attrs['acfql_generator'] = json.dumps(info)
    assert stale_expert_version(old) == 0
