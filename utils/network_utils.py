"""Small building blocks shared by the networks: 1-D normalisation, resampling, MLPs, time handling."""

from collections.abc import Sequence

import torch
import torch.nn as nn


class GroupNorm1d(nn.GroupNorm):
    """GroupNorm over (B, C, T) with a clear error when C is not divisible by the number of groups."""

    def __init__(self, num_channels: int, num_groups: int = 8):
        if num_channels % num_groups != 0:
            raise ValueError(
                f'GroupNorm1d: {num_channels} channels are not divisible by {num_groups} groups '
                '(ChiUNet channel counts model_dim * dim_mult must be multiples of 8)'
            )
        super().__init__(num_groups, num_channels)


class Downsample1d(nn.Module):
    """Halves the sequence length with a stride-2 convolution: (B, C, T) -> (B, C, T/2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, ceil(T/2))."""
        return self.conv(x)


class Upsample1d(nn.Module):
    """Doubles the sequence length with a transposed convolution: (B, C, T) -> (B, C, 2T)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, kernel_size=4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, 2T)."""
        return self.conv(x)


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int | None, layer_norm: bool = False,
        activation: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation per hidden dim, then an optional final Linear to out_dim."""
    layers: list[nn.Module] = []
    prev = in_dim
    for h in hidden_dims:
        layers.append(nn.Linear(prev, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(activation())
        prev = h
    if out_dim is not None:
        layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


def zero_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A Linear layer with zero weight and bias (for the scalar heads)."""
    layer = nn.Linear(in_dim, out_dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def batch_times(t: torch.Tensor | float, batch_size: int, like: torch.Tensor) -> torch.Tensor:
    """Times given as a float, a 0-d tensor, (B,) or (B, 1) -> float tensor (B,) on like's device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.expand(batch_size)
    t = t.reshape(t.shape[0], -1)
    if t.shape != (batch_size, 1):
        raise ValueError(f'flow time must be a scalar, (B,) or (B, 1) with B={batch_size}; '
                         f'got {tuple(t.shape)}')
    return t[:, 0]


def check_inputs(x: torch.Tensor, cond: torch.Tensor, horizon: int, action_dim: int, obs_steps: int,
                 cond_dim: int, name: str) -> None:
    """Raise a ValueError naming the network when x or cond do not have the sizes it was built for."""
    if x.dim() != 3 or x.shape[2] != action_dim:
        raise ValueError(f'{name}: x must be (B, Tp, A={action_dim}), got {tuple(x.shape)}')
    if horizon is not None and x.shape[1] != horizon:
        raise ValueError(f'{name}: built for horizon_length Tp={horizon}, got x of shape {tuple(x.shape)}')
    if cond.dim() != 3 or cond.shape[1:] != (obs_steps, cond_dim) or cond.shape[0] != x.shape[0]:
        raise ValueError(
            f'{name}: cond must be (B={x.shape[0]}, To={obs_steps}, D={cond_dim}), got {tuple(cond.shape)}'
        )
