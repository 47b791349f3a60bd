"""Hand-written shape_meta and random observations for the network and encoder tests (not a test module)."""

import torch

from utils.shape_meta import rgb_keys


def shape_meta(image_hw=None, cams=('agentview_image', 'robot0_eye_in_hand_image')):
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
    return {'obs': dict(sorted(obs.items())), 'action': {'shape': [7]}}


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
