"""The tests' one hand-written shape_meta, one set of tiny sizes, random observations (not a test module)."""

import torch

from utils.shape_meta import rgb_keys


def shape_meta(image_hw=None, cams=('agentview_image', 'robot0_eye_in_hand_image'), action_dim=7):
    """Hand-written shape_meta in the ARCHITECTURE.md form; image_hw=None gives a state-only one."""
    obs = {
        'object': {'shape': [10], 'type': 'low_dim'},
        'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
        'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'},
    }
    if image_hw is not None:
        del obs['object']
        for cam in cams:
            obs[cam] = {'shape': [3, *image_hw], 'type': 'rgb'}
    return {'obs': dict(sorted(obs.items())), 'action': {'shape': [action_dim]}}


def shrink(config, **overrides):
    """Set every network, encoder and critic size of a config (agent or network config) to a tiny value, then
    `overrides`; returns the config. The one set of test sizes: a few thousand parameters per module."""
    config.emb_dim = 8
    config.mlp_hidden_dims = (32, 32)
    config.model_dim, config.dim_mult, config.kernel_size = 8, (1, 2), 3
    config.d_model, config.n_heads, config.num_layers = 16, 2, 1
    config.encoder_hidden_dims = (16, 8)
    config.impala_channels, config.impala_out_dim, config.impala_res_blocks = (4, 8), 16, 1
    config.value_hidden_dims = (16, 16)
    config.update(overrides)
    return config


def make_obs(meta, batch, to, seed=0):
    """Random observations matching shape_meta: uint8 images, float low-dim."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, m in meta['obs'].items():
        if key in rgb_keys(meta):
            obs[key] = torch.randint(0, 256, (batch, to, *m['shape']), dtype=torch.uint8, generator=g)
        else:
            obs[key] = torch.randn(batch, to, *m['shape'], generator=g)
    return obs
