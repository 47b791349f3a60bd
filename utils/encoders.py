"""Observation encoders: a dict of (B, To, ...) tensors -> (B, To, D); every encoder exposes `output_dim` (D).

Low-dim inputs arrive already normalized by the agent and are concatenated in sorted key order.
Images arrive as uint8 (B, To, C, H, W); the image encoder moves them to its device, converts them to
float and scales them to [-1, 1] exactly once.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn

from utils.network_utils import mlp


def rgb_keys(shape_meta: dict) -> list[str]:
    """Sorted observation keys of type 'rgb'."""
    return sorted(k for k, v in shape_meta['obs'].items() if v.get('type', 'low_dim') == 'rgb')


def low_dim_keys(shape_meta: dict) -> list[str]:
    """Sorted observation keys of type 'low_dim'."""
    return sorted(k for k, v in shape_meta['obs'].items() if v.get('type', 'low_dim') == 'low_dim')


def validate_shape_meta(shape_meta) -> None:
    """Raise a ValueError naming the key when shape_meta is not of the form in docs/ARCHITECTURE.md."""
    if not isinstance(shape_meta, dict) and not hasattr(shape_meta, 'keys'):
        raise ValueError(f'shape_meta must be a dict with keys "obs" and "action", got {type(shape_meta)}')
    if 'obs' not in shape_meta or 'action' not in shape_meta:
        raise ValueError(f'shape_meta must have keys "obs" and "action", got {sorted(shape_meta.keys())}'
                         ' (config.shape_meta is filled from the dataset)')
    if len(shape_meta['obs']) == 0:
        raise ValueError('shape_meta["obs"] is empty: no observation keys selected')
    for key, meta in shape_meta['obs'].items():
        kind = meta.get('type', 'low_dim')
        shape = tuple(meta['shape'])
        if kind == 'rgb' and (len(shape) != 3 or shape[0] != 3):
            raise ValueError(f'shape_meta["obs"]["{key}"]: rgb shape must be [3, H, W], got {list(shape)}')
        if kind == 'low_dim' and len(shape) != 1:
            raise ValueError(f'shape_meta["obs"]["{key}"]: low_dim shape must be [D], got {list(shape)}')
        if kind not in ('rgb', 'low_dim'):
            raise ValueError(f'shape_meta["obs"]["{key}"]: type must be "rgb" or "low_dim", got {kind!r}')
    if len(tuple(shape_meta['action']['shape'])) != 1:
        raise ValueError(f'shape_meta["action"]["shape"] must be [A], got {shape_meta["action"]["shape"]}')


def _module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter or buffer (cpu when it has none)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device('cpu')


def _low_dim_features(obs: dict, keys: Sequence[str], shape_meta: dict, device) -> torch.Tensor:
    """Concatenate low-dim keys: dict of (B, To, Dk) -> (B, To, sum Dk) float32 on device."""
    parts = []
    for k in keys:
        if k not in obs:
            raise KeyError(f'observation key {k!r} (from shape_meta) is missing; got keys {sorted(obs)}')
        v = torch.as_tensor(obs[k]).to(device=device, dtype=torch.float32)
        if v.dim() != 3 or v.shape[-1] != shape_meta['obs'][k]['shape'][0]:
            raise ValueError(f'observation {k!r} must be (B, To, {shape_meta["obs"][k]["shape"][0]}), '
                             f'got {tuple(v.shape)}')
        parts.append(v)
    return torch.cat(parts, dim=-1)


class IdentityEncoder(nn.Module):
    """Concatenates the low-dim keys (optionally with dropout): (B, To, sum Dk)."""

    def __init__(self, shape_meta: dict, dropout: float = 0.0):
        super().__init__()
        validate_shape_meta(shape_meta)
        if rgb_keys(shape_meta):
            raise ValueError(f'encoder "identity" cannot encode rgb keys {rgb_keys(shape_meta)}; '
                             'use an image encoder (resnet18, resnet34, resnet50, impala)')
        self.shape_meta = shape_meta
        self.keys = low_dim_keys(shape_meta)
        self.output_dim = sum(shape_meta['obs'][k]['shape'][0] for k in self.keys)
        self.dropout = nn.Dropout(dropout)

    def forward(self, obs: dict) -> torch.Tensor:
        """dict of (B, To, Dk) -> (B, To, D)."""
        return self.dropout(_low_dim_features(obs, self.keys, self.shape_meta, _module_device(self)))


class MLPEncoder(nn.Module):
    """Per-step MLP over the concatenated low-dim keys: (B, To, sum Dk) -> (B, To, hidden_dims[-1])."""

    def __init__(self, shape_meta: dict, hidden_dims: Sequence[int] = (256, 256), dropout: float = 0.0):
        super().__init__()
        validate_shape_meta(shape_meta)
        if rgb_keys(shape_meta):
            raise ValueError(f'encoder "mlp" cannot encode rgb keys {rgb_keys(shape_meta)}; '
                             'use an image encoder (resnet18, resnet34, resnet50, impala)')
        if len(hidden_dims) == 0:
            raise ValueError('MLPEncoder: encoder_hidden_dims must have at least one entry')
        self.shape_meta = shape_meta
        self.keys = low_dim_keys(shape_meta)
        in_dim = sum(shape_meta['obs'][k]['shape'][0] for k in self.keys)
        self.net = mlp(in_dim, hidden_dims[:-1], hidden_dims[-1])
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden_dims[-1]

    def forward(self, obs: dict) -> torch.Tensor:
        """dict of (B, To, Dk) -> (B, To, D)."""
        h = _low_dim_features(obs, self.keys, self.shape_meta, _module_device(self))
        return self.dropout(self.net(h))
