"""Quaternion observations: rotation-matrix features equal for q and -q, the shape_meta field, the layouts."""

import math

import numpy as np
import pytest
import torch

from agents import AGENTS
from envs.env_utils import preview_shape_meta
from envs.obs_layout import annotate_quaternions
from tests.helpers import shrink
from utils.encoders import IdentityEncoder, quaternion_to_rot6d
from utils.shape_meta import low_dim_feature_dim, quaternion_identity_stats, validate_shape_meta

SQUARE_META = {'obs': {'object': {'shape': [14], 'type': 'low_dim', 'quaternions': [3, 10]},
                       'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'}},
               'action': {'shape': [7]}}


def test_rot6d_is_the_rotation_matrix_and_sign_free():
    """90 degrees about z: R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]], columns (0, 1, 0) and (-1, 0, 0)."""
    h = math.sqrt(0.5)
    q = torch.tensor([0.0, 0.0, h, h])  # xyzw
    torch.testing.assert_close(quaternion_to_rot6d(q), torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.0]))
    torch.testing.assert_close(quaternion_to_rot6d(torch.tensor([0.0, 0.0, 0.0, 1.0])),
                               torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
    qs = torch.nn.functional.normalize(torch.randn(100, 4), dim=-1)
    torch.testing.assert_close(quaternion_to_rot6d(qs), quaternion_to_rot6d(-qs))
    cols = quaternion_to_rot6d(qs).view(100, 2, 3)  # orthonormal columns
    torch.testing.assert_close(cols.norm(dim=-1), torch.ones(100, 2))
    torch.testing.assert_close((cols[:, 0] * cols[:, 1]).sum(-1), torch.zeros(100), atol=1e-6, rtol=0)


def test_encoder_feeds_rot6d_in_place_of_each_quaternion():
    enc = IdentityEncoder(SQUARE_META)
    assert enc.output_dim == 14 + 4 + 3 == low_dim_feature_dim(SQUARE_META['obs']['object']) + 3
    obj = torch.randn(2, 1, 14)
    out = enc({'object': obj, 'robot0_eef_pos': torch.zeros(2, 1, 3)})
    torch.testing.assert_close(out[..., :3], obj[..., :3])
    torch.testing.assert_close(out[..., 3:9], quaternion_to_rot6d(obj[..., 3:7]))
    torch.testing.assert_close(out[..., 9:12], obj[..., 7:10])
    torch.testing.assert_close(out[..., 12:18], quaternion_to_rot6d(obj[..., 10:14]))


@pytest.mark.parametrize('name', ['fbc', 'mfbc', 'fql'])
def test_agents_act_the_same_on_either_sign(name):
    """The normalizer leaves quaternion dims unscaled and the encoders drop the sign: flipping every
    quaternion of the observation leaves the sampled chunk unchanged (FQL: its critic encoder too)."""
    rng = np.random.default_rng(0)
    stats = {'actions': {'min': -np.ones(7), 'max': np.ones(7)},
             'object': {'min': rng.uniform(-2, -1, 14), 'max': rng.uniform(1, 2, 14)},
             'robot0_eef_pos': {'min': -np.ones(3), 'max': np.ones(3)}}
    config = shrink(AGENTS[name].get_config())
    agent = AGENTS[name].create(SQUARE_META, config, normalizer_stats=stats, seed=0)
    assert np.all(agent.normalizer.stats['object']['min'][3:7] == -1)
    to = int(config.obs_steps)
    obs = {'object': rng.standard_normal((3, to, 14)).astype(np.float32),
           'robot0_eef_pos': rng.standard_normal((3, to, 3)).astype(np.float32)}
    flipped = {k: v.copy() for k, v in obs.items()}
    flipped['object'][..., 3:7] *= -1
    flipped['object'][..., 10:14] *= -1
    a, b = agent.sample_actions(obs, seed=1), agent.sample_actions(flipped, seed=1)
    torch.testing.assert_close(a, b)
    other = {k: v.copy() for k, v in obs.items()}
    other['object'][..., 0] += 1.0  # a position change does change the chunk: the test can fail
    assert not torch.allclose(a, agent.sample_actions(other, seed=1))


def test_quaternion_identity_stats_only_touch_quaternion_dims():
    stats = {'object': {'min': np.full(14, -3.0), 'max': np.full(14, 5.0)}}
    out = quaternion_identity_stats(stats, SQUARE_META)['object']
    assert list(out['min'][[3, 6, 10, 13]]) == [-1.0] * 4 and list(out['max'][[3, 6, 10, 13]]) == [1.0] * 4
    assert list(out['min'][[0, 2, 7, 9]]) == [-3.0] * 4
    assert stats['object']['min'][3] == -3.0  # the caller's stats are left as they were


@pytest.mark.parametrize('offsets', [[12], [3, 5], [-1], [1.5]])
def test_bad_quaternion_offsets_are_rejected(offsets):
    meta = {'obs': {'object': {'shape': [14], 'type': 'low_dim', 'quaternions': offsets}},
            'action': {'shape': [7]}}
    with pytest.raises(ValueError, match='quaternions'):
        validate_shape_meta(meta)


def test_robosuite_layouts():
    """Lift marks its cube quaternion, Can and Square object and relative quaternions; unknown envs and other
    lengths stay unmarked, and the generator's layout (no file yet) gets the same marks as a file."""
    meta = {'obs': {'object': {'shape': [14], 'type': 'low_dim'}}, 'action': {'shape': [7]}}
    assert annotate_quaternions(meta, 'NutAssemblySquare')['obs']['object']['quaternions'] == [3, 10]
    assert annotate_quaternions(meta, 'PickPlaceCan')['obs']['object']['quaternions'] == [3, 10]
    assert 'quaternions' not in annotate_quaternions(meta, 'Lift')['obs']['object']  # Lift's object is 10-D
    assert annotate_quaternions(meta, 'Unknown') is meta
    assert 'quaternions' not in meta['obs']['object']


def test_generator_layout_is_marked(tmp_path, monkeypatch):
    monkeypatch.setenv('ROBOMIMIC_DATA_DIR', str(tmp_path))  # no file: the generator's layout
    assert preview_shape_meta('square-scripted-low_dim')['obs']['object']['quaternions'] == [3, 10]
    assert preview_shape_meta('lift-scripted-low_dim')['obs']['object']['quaternions'] == [3]
