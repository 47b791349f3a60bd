"""Embeddings of flow times s, t in [0, 1] (floats), each mapping (B,) -> (B, dim)."""

import math

import torch
import torch.nn as nn


def _check_dim(name: str, dim: int) -> None:
    """Raise a ValueError unless dim is a positive even integer."""
    if dim <= 0 or dim % 2 != 0:
        raise ValueError(f'{name}: embedding dim must be a positive even integer, got {dim}')


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos of `scale * t` at geometric frequencies (Diffusion Policy's SinusoidalPosEmb)."""

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        _check_dim('SinusoidalEmbedding', dim)
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer('freqs', freqs, persistent=False)
        self.scale = scale
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B, dim)."""
        args = self.scale * t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class FourierEmbedding(nn.Module):
    """Random Fourier features: sin/cos of 2*pi*w*t with w ~ N(0, std^2) drawn once (saved in state_dict)."""

    def __init__(self, dim: int, std: float = 16.0, scale: float = 1.0):
        super().__init__()
        _check_dim('FourierEmbedding', dim)
        self.register_buffer('weights', torch.randn(dim // 2) * std)
        self.scale = scale
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B, dim)."""
        t = self.scale * t.to(self.weights.dtype)
        args = 2 * math.pi * t[:, None] * self.weights[None, :]  # (B, dim/2)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class PositionalEmbedding(nn.Module):
    """Learnable sin/cos: frequencies and phases are parameters, initialised as in SinusoidalEmbedding."""

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        _check_dim('PositionalEmbedding', dim)
        half = dim // 2
        freqs = scale * torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.freqs = nn.Parameter(freqs)
        self.phases = nn.Parameter(torch.zeros(half))
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B, dim)."""
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :] + self.phases[None, :]  # (B, dim/2)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


SUPPORTED_TIMESTEP_EMBEDDING = {
    'sinusoidal': SinusoidalEmbedding,
    'fourier': FourierEmbedding,
    'positional': PositionalEmbedding,
}


def get_timestep_embedding(name: str, dim: int, scale: float | None = None) -> nn.Module:
    """Build the timestep embedding registered under `name` with output size `dim`.

    `scale` multiplies t before embedding; None keeps the embedding's default (1000 for 'sinusoidal' and
    'positional', as Diffusion Policy's integer timesteps; 1 for 'fourier').
    """
    if name not in SUPPORTED_TIMESTEP_EMBEDDING:
        raise ValueError(
            f'timestep_embedding={name!r} is unknown; valid names: {sorted(SUPPORTED_TIMESTEP_EMBEDDING)}'
        )
    kwargs = {} if scale is None else {'scale': float(scale)}
    return SUPPORTED_TIMESTEP_EMBEDDING[name](dim, **kwargs)


class TimePairEmbedding(nn.Module):
    """Embeds both flow times: (s (B,), t (B,)) -> [emb(s), emb(t)] of shape (B, 2 * dim)."""

    def __init__(self, name: str, dim: int, scale: float | None = None):
        super().__init__()
        self.emb_s = get_timestep_embedding(name, dim, scale)
        self.emb_t = get_timestep_embedding(name, dim, scale)
        self.output_dim = 2 * dim

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B,), (B,) -> (B, 2 * dim)."""
        return torch.cat([self.emb_s(s), self.emb_t(t)], dim=-1)
