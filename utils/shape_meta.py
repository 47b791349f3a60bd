"""Helpers over `shape_meta` (observation keys and shapes, action shape; docs/ARCHITECTURE.md)."""

import numpy as np


def random_obs(shape_meta, batch_size, obs_steps, rng):
    """Raw observations (B, To, ...) as the rollout wrapper passes them (uint8 images)."""
    out = {}
    for key, meta in shape_meta['obs'].items():
        shape = (batch_size, obs_steps, *meta['shape'])
        if meta['type'] == 'rgb':
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.uniform(-1, 1, shape).astype(np.float32)
    return out
