"""Critic ensemble Value(cond (B,To,D), actions (B,Tp,A)) -> (K, B)."""

from collections.abc import Sequence

import torch
import torch.nn as nn

from utils.network_utils import mlp


class Value(nn.Module):
    """K independent MLP heads with LayerNorm on [flatten(cond), flatten(actions)]; returns (K, B) values."""

    def __init__(self, obs_steps: int, cond_dim: int, horizon: int, action_dim: int,
                 hidden_dims: Sequence[int] = (512, 512, 512, 512), num_qs: int = 2, layer_norm: bool = True):
        super().__init__()
        if num_qs < 1:
            raise ValueError(f'Value: num_qs must be >= 1, got {num_qs}')
        self.obs_steps, self.cond_dim = obs_steps, cond_dim
        self.horizon, self.action_dim = horizon, action_dim
        in_dim = obs_steps * cond_dim + horizon * action_dim
        self.heads = nn.ModuleList(
            [mlp(in_dim, hidden_dims, 1, layer_norm=layer_norm) for _ in range(num_qs)]
        )

    def forward(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, To, D), (B, Tp, A) -> (K, B)."""
        b = cond.shape[0]
        if cond.shape[1:] != (self.obs_steps, self.cond_dim):
            raise ValueError(f'Value: cond must be (B, {self.obs_steps}, {self.cond_dim}), '
                             f'got {tuple(cond.shape)}')
        if actions.shape != (b, self.horizon, self.action_dim):
            raise ValueError(
                f'Value: actions must be (B={b}, {self.horizon}, {self.action_dim}), '
                f'got {tuple(actions.shape)}'
            )
        h = torch.cat([cond.reshape(b, -1), actions.reshape(b, -1)], dim=-1)  # (B, To*D + Tp*A)
        return torch.stack([head(h)[:, 0] for head in self.heads], dim=0)  # (K, B)
