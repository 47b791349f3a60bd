"""Observation encoders: output shapes, crop behaviour in train / eval, dtype and key checks."""

import pytest
import torch

from tests.helpers import make_obs, shape_meta, shrink
from utils.encoders import IdentityEncoder, MLPEncoder, center_crop
from utils.network_factory import get_encoder, get_network_config


def tiny_config(meta, encoder, **overrides):
    """Network config with small image backbones settings for fast tests."""
    config = get_network_config()
    config.shape_meta = meta
    config.obs_steps, config.horizon_length = 2, 4
    config.encoder = encoder
    return shrink(config, **overrides)


@pytest.mark.parametrize('name', ['identity', 'mlp', None])
def test_low_dim_encoders_shape(name):
    meta = shape_meta()
    enc = get_encoder(tiny_config(meta, name))
    out = enc(make_obs(meta, 3, 2))
    assert out.shape == (3, 2, enc.output_dim)
    assert enc.output_dim == (15 if name in ('identity', None) else 8)


def test_identity_concatenates_in_sorted_key_order():
    meta = shape_meta()
    obs = make_obs(meta, 2, 1)
    out = IdentityEncoder(meta)(obs)
    expected = torch.cat([obs['object'], obs['robot0_eef_pos'], obs['robot0_gripper_qpos']], dim=-1)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('name, share', [('resnet18', False), ('resnet18', True), ('resnet34', True),
                                         ('resnet50', True), ('impala', False), ('impala', True)])
def test_image_encoder_shapes(name, share):
    meta = shape_meta((20, 20))
    enc = get_encoder(tiny_config(meta, name, share_backbone=share))
    out = enc(make_obs(meta, 2, 2))
    feat = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048, 'impala': 16}[name]
    assert enc.output_dim == 2 * feat + 5  # two cameras plus 3 + 2 low-dim
    assert out.shape == (2, 2, enc.output_dim)
    n_backbones = 1 if share else 2
    assert sum(1 for m in enc.modules() if type(m).__name__ in ('ResNet', 'ImpalaCNN')) == n_backbones


def test_default_encoder_picks_resnet18_for_images_and_groupnorm_replaces_batchnorm():
    meta = shape_meta((20, 20))
    enc = get_encoder(tiny_config(meta, None))
    assert enc.output_dim == 2 * 512 + 5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in enc.modules())


def test_default_crop_is_76_from_84_and_resize_is_applied_first():
    enc = get_encoder(tiny_config(shape_meta((84, 84)), 'impala'))
    assert set(enc.crop_shapes.values()) == {(76, 76)}
    enc = get_encoder(tiny_config(shape_meta((84, 84)), 'impala', resize_shape=(40, 40)))
    assert set(enc.crop_shapes.values()) == {(36, 36)}
    out = enc.preprocess(torch.zeros(2, 3, 84, 84, dtype=torch.uint8), 'agentview_image')
    assert out.shape == (2, 3, 36, 36)


def test_random_crop_in_train_center_crop_in_eval():
    meta = shape_meta((16, 16))
    enc = get_encoder(tiny_config(meta, 'impala', crop_shape=(10, 10)))
    img = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    enc.train()
    torch.manual_seed(0)
    crops = [enc.preprocess(img, 'agentview_image') for _ in range(4)]
    assert crops[0].shape == (4, 3, 10, 10)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    # every random crop is a window of the image scaled to [-1, 1]
    scaled = img.float() / 127.5 - 1.0
    windows = scaled.unfold(2, 10, 1).unfold(3, 10, 1)  # (N, 3, 7, 7, 10, 10)
    for n in range(4):
        assert (windows[n] == crops[0][n][:, None, None]).flatten(3).all(-1).all(0).any()
    enc.eval()
    a, b = enc.preprocess(img, 'agentview_image'), enc.preprocess(img, 'agentview_image')
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, scaled[:, :, 3:13, 3:13])
    torch.testing.assert_close(center_crop(scaled, (10, 10)), a)


def test_random_crop_off_uses_center_crop_in_train():
    meta = shape_meta((16, 16))
    enc = get_encoder(tiny_config(meta, 'impala', crop_shape=(10, 10), random_crop=False)).train()
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    expected = img.float()[:, :, 3:13, 3:13] / 127.5 - 1
    torch.testing.assert_close(enc.preprocess(img, 'agentview_image'), expected)


def test_images_are_normalized_once_to_minus_one_one():
    enc = get_encoder(tiny_config(shape_meta((12, 12)), 'impala', crop_shape=(12, 12))).eval()
    img = torch.tensor([0, 255], dtype=torch.uint8).repeat(1, 3, 12, 6)
    out = enc.preprocess(img, 'agentview_image')
    assert out.min() == -1.0 and out.max() == 1.0


def test_encoder_dropout_only_in_train():
    meta = shape_meta((12, 12))
    enc = get_encoder(tiny_config(meta, 'impala', encoder_dropout=0.5))
    obs = make_obs(meta, 2, 2)
    enc.train()
    assert (enc(obs) == 0).float().mean() > 0.2
    enc.eval()
    torch.testing.assert_close(enc(obs), enc(obs))


def test_bad_inputs_give_clear_errors():
    meta = shape_meta((12, 12))
    enc = get_encoder(tiny_config(meta, 'impala'))
    obs = make_obs(meta, 2, 2)
    with pytest.raises(TypeError, match='uint8'):
        enc({**obs, 'agentview_image': obs['agentview_image'].float()})
    with pytest.raises(KeyError, match='robot0_eef_pos'):
        enc({k: v for k, v in obs.items() if k != 'robot0_eef_pos'})
    with pytest.raises(ValueError, match='agentview_image'):
        enc({**obs, 'agentview_image': obs['agentview_image'][:, :, :, :10]})
    with pytest.raises(ValueError, match='cannot encode rgb'):
        IdentityEncoder(meta)
    with pytest.raises(ValueError, match='cannot encode rgb'):
        MLPEncoder(meta)
    with pytest.raises(ValueError, match='does not fit'):
        get_encoder(tiny_config(meta, 'impala', crop_shape=(13, 13)))
    with pytest.raises(ValueError, match='at least one rgb key'):
        get_encoder(tiny_config(shape_meta(), 'resnet18'))
    with pytest.raises(ValueError, match=r'\[3, H, W\]'):
        get_encoder(tiny_config({'obs': {'a_image': {'shape': [12, 12, 3], 'type': 'rgb'}},
                                 'action': {'shape': [7]}}, None))
    with pytest.raises(ValueError, match='share_backbone'):
        two_sizes = {'a_image': {'shape': [3, 12, 12], 'type': 'rgb'},
                     'b_image': {'shape': [3, 16, 16], 'type': 'rgb'}}
        get_encoder(tiny_config({'obs': two_sizes, 'action': {'shape': [7]}}, 'impala', share_backbone=True))
    with pytest.raises(FileNotFoundError, match='never downloaded'):
        get_encoder(tiny_config(meta, 'resnet18', pretrained_path='/nonexistent/resnet18.pth'))
