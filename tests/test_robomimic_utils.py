"""Env names, file lookup, and reading / refusing robomimic hdf5 files (no simulator)."""

import json
import os

import h5py
import numpy as np
import pytest

from envs.hdf5_reader import RobomimicFileError, read_env_meta, read_robomimic
from envs.robomimic_utils import (
    EnvName,
    candidate_paths,
    default_obs_keys,
    get_dataset_path,
    load_datasets,
    max_episode_steps,
    parse_env_name,
    resolve_obs_type,
    scripted_dataset_path,
)
from envs.synthetic import encode, lift_env_args, write_robomimic_file


def test_parse_env_name():
    assert parse_env_name('lift-ph-image') == EnvName('lift', 'ph', 'image')
    assert parse_env_name('tool_hang-mh-low_dim') == EnvName('tool_hang', 'mh', 'low_dim')
    assert parse_env_name('can-scripted-image').is_image
    assert str(parse_env_name('square-mg-low_dim')) == 'square-mg-low_dim'
    for bad in ('lift-ph', 'lift-xx-image', 'stack-ph-image', 'lift-ph-rgb', 'Lift-ph-image', ''):
        with pytest.raises(ValueError, match='lift-ph-image'):   # the message shows what is valid
            parse_env_name(bad)


def test_max_episode_steps():
    assert max_episode_steps('lift-ph-image') == 400
    assert max_episode_steps('can-mh-low_dim') == 500
    assert max_episode_steps('square-scripted-image') == 400
    assert max_episode_steps('square-mg-low_dim') == 400
    assert max_episode_steps('transport-ph-image') == 700
    assert max_episode_steps('tool_hang-ph-low_dim') == 700


def test_default_obs_keys():
    keys = ['agentview_image', 'object', 'robot0_eef_pos', 'robot0_eef_quat', 'robot0_gripper_qpos',
            'robot0_joint_pos', 'robot1_eef_pos', 'robot0_eye_in_hand_image']
    assert default_obs_keys('state', keys) == ['object', 'robot0_eef_pos', 'robot0_eef_quat',
                                               'robot0_gripper_qpos', 'robot1_eef_pos']
    assert default_obs_keys('image', keys) == ['agentview_image', 'robot0_eef_pos', 'robot0_eef_quat',
                                               'robot0_eye_in_hand_image', 'robot0_gripper_qpos',
                                               'robot1_eef_pos']
    with pytest.raises(ValueError, match='obs_type'):
        default_obs_keys('pixels', keys)
    assert default_obs_keys('low_dim', keys) == default_obs_keys('state', keys)  # the one alias


def test_obs_type_follows_the_data():
    """One rule: obs_keys when given, else the env name; a contradicting value names both."""
    assert resolve_obs_type('lift-ph-low_dim') == 'state'
    assert resolve_obs_type('lift-ph-image') == 'image'
    assert resolve_obs_type('lift-ph-image', 'image') == 'image'
    assert resolve_obs_type('lift-ph-low_dim', 'low_dim') == 'state'
    assert resolve_obs_type('lift-ph-image', obs_keys=['object', 'robot0_eef_pos']) == 'state'
    assert resolve_obs_type('lift-ph-low_dim', 'image', obs_keys=['agentview_image']) == 'image'
    with pytest.raises(ValueError, match=r"obs_type='image'.*'lift-ph-low_dim' gives 'state'"):
        resolve_obs_type('lift-ph-low_dim', 'image')
    with pytest.raises(ValueError, match=r"obs_type='state'.*obs_keys=\['agentview_image'\] gives 'image'"):
        resolve_obs_type('lift-ph-low_dim', 'state', obs_keys=['agentview_image'])


def test_get_dataset_path(tmp_path, monkeypatch):
    monkeypatch.setenv('ROBOMIMIC_DATA_DIR', str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        get_dataset_path('lift-ph-image')
    message = str(info.value)
    for path in candidate_paths('lift-ph-image'):
        assert str(path) in message
    assert 'envs.generate_demos --task lift --obs image' in message
    assert 'envs.convert_states_to_obs' in message
    folder = tmp_path / 'lift' / 'ph'
    folder.mkdir(parents=True)
    (folder / 'image.hdf5').write_bytes(b'')
    assert get_dataset_path('lift-ph-image') == folder / 'image.hdf5'
    (folder / 'image_v141.hdf5').write_bytes(b'')
    assert get_dataset_path('lift-ph-image') == folder / 'image_v141.hdf5'   # v141 tried before plain
    assert scripted_dataset_path('can', 'low_dim') == tmp_path / 'can' / 'scripted' / 'low_dim.hdf5'
    assert candidate_paths('can-scripted-low_dim') == [tmp_path / 'can' / 'scripted' / 'low_dim.hdf5']
    other = tmp_path / 'mine.hdf5'
    other.write_bytes(b'')
    assert get_dataset_path('lift-ph-image', dataset_path=other) == other
    with pytest.raises(FileNotFoundError, match='nope.hdf5'):
        get_dataset_path('lift-ph-image', dataset_path=tmp_path / 'nope.hdf5')


def test_another_tools_file(tmp_path):
    """Non-contiguous demo names, no next_obs, gzip, extra keys, 96x96 images, robosuite 1.4 env_args."""
    env_args = lift_env_args('1.4', image_size=96)
    path = write_robomimic_file(tmp_path / 'other.hdf5', lengths=(6, 4, 9, 5), demo_ids=(3, 17, 4, 120),
                                image_size=96, compression='gzip', next_obs=False, extra_keys=True,
                                env_args=env_args)
    with h5py.File(path, 'r') as f:   # the file really has the conventions this test is about
        assert f['data/demo_3/obs/agentview_image'].compression == 'gzip'
        assert 'next_obs' not in f['data/demo_3']
    train, valid = load_datasets(path, 'image', valid_fraction=0.25, seed=0)
    assert train.shape_meta == {
        'obs': {
            'agentview_image': {'shape': [3, 96, 96], 'type': 'rgb'},
            'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
            'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
            'robot0_eye_in_hand_image': {'shape': [3, 96, 96], 'type': 'rgb'},
            'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'},
        },
        'action': {'shape': [7]},
    }
    assert train.num_episodes + valid.num_episodes == 4 and valid.num_episodes == 1
    assert len(train) + len(valid) == 6 + 4 + 9 + 5
    assert train.env_meta['env_args'] == env_args
    assert train.env_meta['env_args']['env_kwargs']['controller_configs']['type'] == 'OSC_POSE'
    assert train.env_meta['render_quality'] == 'default'
    state_train, _ = load_datasets(path, 'state', valid_fraction=0.25)
    assert sorted(state_train.shape_meta['obs']) == ['object', 'robot0_eef_pos', 'robot0_eef_quat',
                                                     'robot0_gripper_qpos']
    data = read_robomimic(path, ['robot0_joint_pos'], action_key='actions_abs')
    assert data.demo_names == ['demo_3', 'demo_4', 'demo_17', 'demo_120']   # sorted by integer suffix
    assert data.lengths.tolist() == [6, 9, 4, 5]
    assert data.shape_meta == {'obs': {'robot0_joint_pos': {'shape': [7], 'type': 'low_dim'}},
                               'action': {'shape': [7]}}
    np.testing.assert_array_equal(data.actions, 0.0)   # the actions_abs key was read, not actions
    np.testing.assert_array_equal(data.obs['robot0_joint_pos'][6:9, 0], [encode(4, t) for t in range(3)])


def test_env_meta_render_quality(tmp_path):
    path = write_robomimic_file(tmp_path / 'cheap.hdf5', lengths=(3,), cameras=(), render_quality='cheap')
    meta = read_env_meta(path)
    assert meta == {'env_args': lift_env_args(camera_names=()), 'render_quality': 'cheap',
                    'source_file': str(path.resolve())}


def test_mask_split_and_seeded_split(tmp_path):
    masked = write_robomimic_file(tmp_path / 'masked.hdf5', lengths=(2, 3, 4, 5), demo_ids=(1, 2, 5, 9),
                                  masks={'train': [1, 5, 9], 'valid': [2]}, cameras=())
    data = read_robomimic(masked, ['object'])
    assert data.train_episodes.tolist() == [0, 2, 3] and data.valid_episodes.tolist() == [1]
    plain = write_robomimic_file(tmp_path / 'plain.hdf5', lengths=[3] * 20, cameras=())
    a = read_robomimic(plain, ['object'], valid_fraction=0.1, seed=0)
    b = read_robomimic(plain, ['object'], valid_fraction=0.1, seed=0)
    c = read_robomimic(plain, ['object'], valid_fraction=0.1, seed=1)
    assert len(a.valid_episodes) == 2 and len(a.train_episodes) == 18
    assert a.valid_episodes.tolist() == b.valid_episodes.tolist()
    assert a.valid_episodes.tolist() != c.valid_episodes.tolist()
    assert sorted(a.train_episodes.tolist() + a.valid_episodes.tolist()) == list(range(20))
    one = write_robomimic_file(tmp_path / 'one.hdf5', lengths=(3,), cameras=())
    single = read_robomimic(one, ['object'], valid_fraction=0.5)
    assert single.train_episodes.tolist() == [0] and single.valid_episodes.tolist() == []
    _, valid = load_datasets(one, 'state', valid_fraction=0.5)
    assert valid is None


def _edit(path, fn):
    with h5py.File(path, 'a') as f:
        fn(f)
    return path


@pytest.mark.parametrize('case, match', [
    ('no_data', "no 'data' group"),
    ('missing_obs_key', "has no key 'robot0_eef_pos'"),
    ('missing_actions', "has no 'actions' dataset"),
    ('missing_rewards', "has no 'rewards' dataset"),
    ('empty_demo', 'empty demo'),
    ('float_image', 'agentview_image has dtype float32'),
    ('rgba_image', r'agentview_image has shape \(3, 8, 8, 4\)'),
    ('length_mismatch', 'robot0_eef_pos has 2 steps'),
    ('bad_env_args', 'env_args'),
    ('truncated', 'truncated'),
    ('not_hdf5', 'cannot open as hdf5'),
])
def test_bad_files_are_refused(tmp_path, case, match):
    path = write_robomimic_file(tmp_path / f'{case}.hdf5', lengths=(3, 3), image_size=8)
    if case == 'no_data':
        _edit(path, lambda f: f.move('data', 'not_data'))
    elif case == 'missing_obs_key':
        _edit(path, lambda f: f.__delitem__('data/demo_1/obs/robot0_eef_pos'))
    elif case == 'missing_actions':
        _edit(path, lambda f: f.__delitem__('data/demo_0/actions'))
    elif case == 'missing_rewards':
        _edit(path, lambda f: f.__delitem__('data/demo_0/rewards'))
    elif case == 'empty_demo':
        def empty(f):   # every key present, zero steps
            demo = f['data'].create_group('demo_7')
            for key, shape in (('actions', (0, 7)), ('rewards', (0,)), ('dones', (0,))):
                demo.create_dataset(key, data=np.zeros(shape))
            for key, value in f['data/demo_0/obs'].items():
                demo.create_dataset(f'obs/{key}', data=value[:0])
        _edit(path, empty)
    elif case in ('float_image', 'rgba_image', 'length_mismatch'):
        def replace(f):
            key = 'robot0_eef_pos' if case == 'length_mismatch' else 'agentview_image'
            del f[f'data/demo_1/obs/{key}']
            value = {'float_image': np.zeros((3, 8, 8, 3), np.float32),
                     'rgba_image': np.zeros((3, 8, 8, 4), np.uint8),
                     'length_mismatch': np.zeros((2, 3))}[case]
            f.create_dataset(f'data/demo_1/obs/{key}', data=value)
        _edit(path, replace)
    elif case == 'bad_env_args':
        _edit(path, lambda f: f['data'].attrs.__setitem__('env_args', '{not json'))
    elif case == 'truncated':
        size = os.path.getsize(path)
        with open(path, 'r+b') as fh:
            fh.truncate(size // 2)
    elif case == 'not_hdf5':
        path.write_text('hello')
    with pytest.raises(RobomimicFileError, match=match) as info:
        load_datasets(path, 'image')
    assert str(path) in str(info.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.hdf5'):
        load_datasets(tmp_path / 'missing.hdf5', 'image')


def test_image_request_on_states_only_file(tmp_path):
    path = write_robomimic_file(tmp_path / 'lowdim.hdf5', lengths=(3,), cameras=())
    with pytest.raises(ValueError, match='no \\*_image keys'):
        load_datasets(path, 'image')


def test_explicit_obs_keys_and_json_shape_meta(tmp_path):
    path = write_robomimic_file(tmp_path / 'f.hdf5', lengths=(3, 4), cameras=('agentview',), image_size=12)
    train, _ = load_datasets(path, 'image', obs_keys=['agentview_image', 'object'], valid_fraction=0.0)
    assert list(train.shape_meta['obs']) == ['agentview_image', 'object']
    assert json.loads(json.dumps(train.shape_meta)) == train.shape_meta   # plain JSON-able


def test_mixed_env_names_resolve_like_scripted(tmp_path, monkeypatch):
    """`{task}-mixed-{obs}` parses, lives in <data_dir>/<task>/mixed/, has scripted's step limit, recipe."""
    from envs.task_defaults import task_defaults

    monkeypatch.setenv('ROBOMIMIC_DATA_DIR', str(tmp_path))
    parsed = parse_env_name('can-mixed-low_dim')
    assert parsed == EnvName('can', 'mixed', 'low_dim') and parsed.is_generated
    assert not parse_env_name('can-mh-low_dim').is_generated
    assert candidate_paths('can-mixed-low_dim') == [tmp_path / 'can' / 'mixed' / 'low_dim.hdf5']
    assert scripted_dataset_path('lift', 'image', 'mixed') == tmp_path / 'lift' / 'mixed' / 'image.hdf5'
    with pytest.raises(ValueError, match="'mh' is not generated"):
        scripted_dataset_path('lift', 'image', 'mh')
    assert max_episode_steps('can-mixed-low_dim') == max_episode_steps('can-scripted-low_dim') == 400
    for task in ('lift', 'can', 'square'):   # the recipe is keyed by task and obs type, not by data type
        scripted = parse_env_name(f'{task}-scripted-low_dim')
        for kind in ('mixed', 'careless'):
            other = parse_env_name(f'{task}-{kind}-low_dim')
            assert task_defaults(other.task, other.obs_type, 'fbc') == task_defaults(scripted.task,
                                                                                     scripted.obs_type, 'fbc')
    with pytest.raises(FileNotFoundError, match='--mixed'):   # the hint names the generator's flag
        get_dataset_path('can-mixed-low_dim')
    assert candidate_paths('can-careless-low_dim') == [tmp_path / 'can' / 'careless' / 'low_dim.hdf5']
    assert parse_env_name('square-careless-image').is_generated
    assert max_episode_steps('can-careless-low_dim') == 400
    with pytest.raises(FileNotFoundError, match='--careless'):
        get_dataset_path('can-careless-low_dim')


def test_every_generated_type_has_a_recipe():
    from envs.generate_demos import GENERATED_DATA
    from envs.robomimic_utils import GENERATED_TYPES

    assert sorted(GENERATED_DATA) == sorted(GENERATED_TYPES)


def _grouped_file(tmp_path, extra_masks=None):
    """8 synthetic demos (ids 0..7): better 0-3, worse 4-7; train/valid split 1 valid per group."""
    masks = {'train': [0, 1, 2, 4, 5, 6], 'valid': [3, 7], 'better': [0, 1, 2, 3], 'worse': [4, 5, 6, 7],
             **(extra_masks or {})}
    return write_robomimic_file(tmp_path / 'grouped.hdf5', lengths=[3] * 8, cameras=(), masks=masks)


def test_filter_key_selects_exactly_the_masks_demos(tmp_path):
    """--filter_key=K: train = K's demos in mask/train, valid = K's in mask/valid; none from elsewhere."""
    from envs.hdf5_reader import list_masks

    path = _grouped_file(tmp_path)
    assert list_masks(path) == ['better', 'train', 'valid', 'worse']
    for key, train, valid in (('better', [0, 1, 2], [3]), ('worse', [4, 5, 6], [7])):
        data = read_robomimic(path, ['object'], filter_key=key)
        assert data.train_episodes.tolist() == train and data.valid_episodes.tolist() == valid
        train_ds, valid_ds = load_datasets(path, 'state', filter_key=key)
        assert (train_ds.num_episodes, valid_ds.num_episodes) == (3, 1)
        # the sampled windows come from the mask's demos only (observations encode the demo id)
        batch = train_ds.sample_sequence(256, 2)
        ids = set((batch['observations']['object'][:, 0, 0] // 1000).astype(int).tolist())
        assert ids == set(train)
        # the normalizer is fitted on the selected demos only
        assert train_ds.normalizer_stats()['object']['min'][0] == encode(train[0], 0)
    whole = read_robomimic(path, ['object'])
    assert whole.train_episodes.tolist() == [0, 1, 2, 4, 5, 6]


def test_filter_key_prefers_its_own_train_valid_masks(tmp_path):
    """A file with mask/<key>_train and mask/<key>_valid (robomimic's MH files) uses those for the split."""
    path = _grouped_file(tmp_path, {'better_train': [1, 2, 3], 'better_valid': [0]})
    data = read_robomimic(path, ['object'], filter_key='better')
    assert data.train_episodes.tolist() == [1, 2, 3] and data.valid_episodes.tolist() == [0]


def test_bad_filter_key_names_the_files_masks(tmp_path):
    from envs.hdf5_reader import check_filter_key

    path = _grouped_file(tmp_path)
    with pytest.raises(RobomimicFileError, match=r"filter_key='best' .* masks: better, train, valid, worse"):
        read_robomimic(path, ['object'], filter_key='best')
    with pytest.raises(RobomimicFileError, match='masks: better'):
        check_filter_key(path, 'okay')
    check_filter_key(path, 'worse')  # a mask of the file passes
    bare = write_robomimic_file(tmp_path / 'bare.hdf5', lengths=(3, 3), cameras=())
    with pytest.raises(RobomimicFileError, match='masks: none'):
        load_datasets(bare, 'state', filter_key='better')
    (tmp_path / 'lonely').mkdir()
    empty_train = _grouped_file(tmp_path / 'lonely', {'lonely': [3]})
    with pytest.raises(RobomimicFileError, match='leaves no training demos'):
        read_robomimic(empty_train, ['object'], filter_key='lonely')   # its only demo is a valid one
