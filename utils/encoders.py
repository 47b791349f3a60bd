"""Observation encoders: a dict of (B, To, ...) tensors -> (B, To, D); every encoder exposes `output_dim` (D).

Low-dim inputs arrive already normalized by the agent and are concatenated in sorted key order.
Images arrive as uint8 (B, To, C, H, W); the image encoder moves them to its device as uint8, crops them
there (random crop in training) and only then converts the crops to float in [-1, 1], exactly once.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.network_utils import mlp
from utils.shape_meta import (
    low_dim_feature_dim,
    low_dim_keys,
    quaternion_offsets,
    rgb_keys,
    validate_shape_meta,
)


def _module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter or buffer (cpu when it has none)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device('cpu')


def _get_obs(obs: dict, key: str):
    """obs[key], or a KeyError naming the missing key and the keys present."""
    if key not in obs:
        raise KeyError(f'observation key {key!r} (from shape_meta) is missing; got keys {sorted(obs)}')
    return obs[key]


def quaternion_to_rot6d(q: torch.Tensor) -> torch.Tensor:
    """xyzw quaternions (..., 4) -> the first two columns of their rotation matrices (..., 6); q and -q give
    the same six numbers (every entry is quadratic in q). q is normalized first."""
    x, y, z, w = F.normalize(q, dim=-1).unbind(-1)
    col0 = (1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w))
    col1 = (2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w))
    return torch.stack(col0 + col1, dim=-1)


def _low_dim_features(obs: dict, keys: Sequence[str], shape_meta: dict, device) -> torch.Tensor:
    """Concatenate low-dim keys: dict of (B, To, Dk) -> (B, To, sum of low_dim_feature_dim) float32 on device;
    the quaternions a key lists (utils.shape_meta.QUATERNIONS) become rotation-matrix columns."""
    parts = []
    for k in keys:
        meta = shape_meta['obs'][k]
        v = torch.as_tensor(_get_obs(obs, k)).to(device=device, dtype=torch.float32)
        if v.dim() != 3 or v.shape[-1] != meta['shape'][0]:
            raise ValueError(f'observation {k!r} must be (B, To, {meta["shape"][0]}), got {tuple(v.shape)}')
        start = 0
        for o in quaternion_offsets(meta):  # (B, To, D) -> pieces around each (B, To, 4) quaternion
            parts += [v[..., start:o], quaternion_to_rot6d(v[..., o:o + 4])]
            start = o + 4
        parts.append(v[..., start:])
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
        self.output_dim = sum(low_dim_feature_dim(shape_meta['obs'][k]) for k in self.keys)
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
        in_dim = sum(low_dim_feature_dim(shape_meta['obs'][k]) for k in self.keys)
        self.net = mlp(in_dim, hidden_dims[:-1], hidden_dims[-1])
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden_dims[-1]

    def forward(self, obs: dict) -> torch.Tensor:
        """dict of (B, To, Dk) -> (B, To, D)."""
        h = _low_dim_features(obs, self.keys, self.shape_meta, _module_device(self))
        return self.dropout(self.net(h))


def replace_batchnorm_with_groupnorm(module: nn.Module, channels_per_group: int = 16) -> nn.Module:
    """Replace every BatchNorm2d in `module` (in place) by GroupNorm(C / channels_per_group, C)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(max(1, c // channels_per_group), c))
        else:
            replace_batchnorm_with_groupnorm(child, channels_per_group)
    return module


class _ImpalaResidual(nn.Module):
    """IMPALA residual block: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ImpalaCNN(nn.Module):
    """Small IMPALA-style CNN for CPU runs: per stage a stride-2 conv and residual blocks; then a Linear.

    IMPALA uses conv + 3x3 max-pool per stage; a stride-2 conv does the same downsampling at a
    fraction of the CPU cost (max-pool and its backward took a third of the time).
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (16, 32, 32),
                 out_dim: int = 256, res_blocks: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        prev = input_shape[0]
        for c in channels:
            layers.append(nn.Conv2d(prev, c, 3, stride=2, padding=1))
            layers += [_ImpalaResidual(c) for _ in range(res_blocks)]
            prev = c
        self.stages = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.stages(torch.zeros(1, *input_shape)).numel()
        self.head = nn.Linear(flat, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float -> (N, out_dim)."""
        h = F.relu(self.stages(x)).flatten(1)  # (N, C' * H' * W')
        return F.relu(self.head(h))


def random_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An independent random (h, w) window of every image: (N, C, H, W) -> (N, C, h, w)."""
    n, c, height, width = images.shape
    h, w = size
    dev = images.device
    top = torch.randint(0, height - h + 1, (n,), device=dev)
    left = torch.randint(0, width - w + 1, (n,), device=dev)
    rows = (top[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]  # (N, 1, h, 1)
    cols = (left[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]  # (N, 1, 1, w)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return images[batch, chan, rows, cols]  # (N, C, h, w)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1.0


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central (h, w) window of every image: (N, C, H, W) -> (N, C, h, w)."""
    height, width = images.shape[-2:]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return images[..., top:top + size[0], left:left + size[1]]


class MultiImageObsEncoder(nn.Module):
    """Encodes rgb cameras with a CNN backbone each (or one shared) plus the low-dim keys: -> (B, To, D).

    Per camera: uint8 (B, To, 3, H, W) -> device (still uint8) -> random crop (train; each of the B*To
    frames its own) / center crop (eval) -> float in [-1, 1] (the only normalisation) -> backbone features.
    With `resize_shape` the images become float first, then are resized and cropped. `channels_last` keeps
    the backbones' weights and their inputs in channels_last memory layout (faster convolutions on GPUs).
    D is the sum of the per-camera feature sizes plus the low-dim sizes; dropout is
    applied to the concatenation.
    `make_backbone((C, h, w))` returns a module mapping (N, C, h, w) to (N, F).
    """

    def __init__(self, shape_meta: dict, make_backbone: Callable[[tuple], nn.Module],
                 share_backbone: bool = False, resize_shape: Sequence[int] | None = None,
                 crop_shape: Sequence[int] | None = None, random_crop: bool = True, dropout: float = 0.0,
                 use_group_norm: bool = True, channels_last: bool = False):
        super().__init__()
        validate_shape_meta(shape_meta)
        self.shape_meta = shape_meta
        self.rgb_keys = rgb_keys(shape_meta)
        self.low_dim_keys = low_dim_keys(shape_meta)
        if not self.rgb_keys:
            raise ValueError('an image encoder needs at least one rgb key in shape_meta; '
                             'use encoder "identity" or "mlp" for low-dim observations')
        self.resize_shape = tuple(resize_shape) if resize_shape is not None else None
        if self.resize_shape is not None and len(self.resize_shape) != 2:
            raise ValueError(f'resize_shape must be (H, W), got {resize_shape}')
        self.crop_shapes = {}
        for key in self.rgb_keys:
            height, width = self.resize_shape or tuple(shape_meta['obs'][key]['shape'][1:])
            crop = tuple(crop_shape) if crop_shape is not None else (round(0.9 * height), round(0.9 * width))
            if len(crop) != 2 or not (0 < crop[0] <= height and 0 < crop[1] <= width):
                raise ValueError(f'crop_shape {crop} does not fit inside the {height}x{width} images '
                                 f'of {key!r}')
            self.crop_shapes[key] = crop
        self.random_crop = random_crop
        self.share_backbone = share_backbone
        if share_backbone and len(set(self.crop_shapes.values())) > 1:
            raise ValueError('share_backbone=True needs equal crop sizes for all cameras, '
                             f'got {self.crop_shapes}')

        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        def build(key):
            net = make_backbone((3, *self.crop_shapes[key]))
            net = replace_batchnorm_with_groupnorm(net) if use_group_norm else net
            return net.to(memory_format=self.memory_format)

        if share_backbone:
            self.backbone = build(self.rgb_keys[0])
        else:
            self.backbones = nn.ModuleDict({k: build(k) for k in self.rgb_keys})
        self.dropout = nn.Dropout(dropout)
        self.feature_dims = {}
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for k in self.rgb_keys:
                probe = torch.zeros(1, 3, *self.crop_shapes[k]).contiguous(memory_format=self.memory_format)
                self.feature_dims[k] = self._backbone(k)(probe).shape[-1]
        self.train(was_training)
        low = sum(low_dim_feature_dim(shape_meta['obs'][k]) for k in self.low_dim_keys)
        self.output_dim = sum(self.feature_dims.values()) + low

    def _backbone(self, key: str) -> nn.Module:
        """The backbone used for camera `key`."""
        return self.backbone if self.share_backbone else self.backbones[key]

    def preprocess(self, images: torch.Tensor, key: str) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float (N, 3, h, w) in [-1, 1], cropped (and resized first if asked).

        Without a resize the crop is taken from the uint8 images, so only the crop is converted to float
        (the same values as converting first: the conversion is per pixel)."""
        if images.dtype != torch.uint8:
            raise TypeError(f'image {key!r} must arrive as uint8 (the encoder normalises it once), '
                            f'got {images.dtype}')
        x = images
        if self.resize_shape is not None:
            x = F.interpolate(to_unit_range(x), size=self.resize_shape, mode='bilinear', align_corners=False,
                              antialias=True)
        crop = self.crop_shapes[key]
        x = random_crop(x, crop) if self.training and self.random_crop else center_crop(x, crop)
        x = to_unit_range(x) if x.dtype == torch.uint8 else x
        return x.contiguous(memory_format=self.memory_format)

    def forward(self, obs: dict) -> torch.Tensor:
        """dict of (B, To, 3, H, W) uint8 and (B, To, Dk) float -> (B, To, D)."""
        device = _module_device(self)
        b, to = _get_obs(obs, self.rgb_keys[0]).shape[:2]
        images = {}
        for key in self.rgb_keys:
            img = torch.as_tensor(_get_obs(obs, key))
            expected = (b, to, *self.shape_meta['obs'][key]['shape'])
            if tuple(img.shape) != expected:
                raise ValueError(f'observation {key!r} must be {expected} (B, To, C, H, W), '
                                 f'got {tuple(img.shape)}')
            img = img.to(device).reshape(b * to, *expected[2:])  # (B*To, 3, H, W)
            images[key] = self.preprocess(img, key)
        if self.share_backbone:
            stacked = torch.cat([images[k] for k in self.rgb_keys], dim=0)  # (K*B*To, 3, h, w)
            feats = list(self.backbone(stacked).split(b * to, dim=0))  # K x (B*To, F)
        else:
            feats = [self.backbones[k](images[k]) for k in self.rgb_keys]  # K x (B*To, F)
        if self.low_dim_keys:
            low = _low_dim_features(obs, self.low_dim_keys, self.shape_meta, device)  # (B, To, L)
            feats.append(low.reshape(b * to, -1))
        h = self.dropout(torch.cat(feats, dim=-1))  # (B*To, D)
        return h.reshape(b, to, -1)  # (B, To, D)
