"""MLP policy network: flattens the chunk, both time embeddings and all observation steps."""

from collections.abc import Sequence

import torch
import torch.nn as nn

from utils.embeddings import TimePairEmbedding
from utils.network_utils import batch_times, check_inputs, mlp, zero_linear


class MLP(nn.Module):
    """net(x (B,Tp,A), s (B,), t (B,), cond (B,To,D)) -> (y (B,Tp,A), scalar (B,1)) with a plain MLP."""

    def __init__(self, action_dim: int, horizon: int, obs_steps: int, cond_dim: int,
                 hidden_dims: Sequence[int] = (512, 512, 512, 512), emb_dim: int = 128,
                 timestep_embedding: str = 'sinusoidal', timestep_scale: float | None = None,
                 layer_norm: bool = False):
        super().__init__()
        if len(hidden_dims) == 0:
            raise ValueError('MLP: mlp_hidden_dims must name at least one hidden layer')
        self.action_dim, self.horizon = action_dim, horizon
        self.obs_steps, self.cond_dim = obs_steps, cond_dim
        self.time_emb = TimePairEmbedding(timestep_embedding, emb_dim, timestep_scale)
        in_dim = horizon * action_dim + self.time_emb.output_dim + obs_steps * cond_dim
        self.trunk = mlp(in_dim, hidden_dims, None, layer_norm=layer_norm)
        self.out = nn.Linear(hidden_dims[-1], horizon * action_dim)
        self.scalar_head = zero_linear(hidden_dims[-1], 1)

    def features(self, x, s, t, cond):
        """The trunk's last hidden layer (B, H), which the output heads read."""
        check_inputs(x, cond, self.horizon, self.action_dim, self.obs_steps, self.cond_dim, 'MLP')
        b = x.shape[0]
        s, t = batch_times(s, b, x), batch_times(t, b, x)
        h = torch.cat([x.reshape(b, -1), self.time_emb(s, t), cond.reshape(b, -1)], dim=-1)  # (B, in_dim)
        return self.trunk(h)

    def forward(self, x, s, t, cond):
        """Predict (B, Tp, A) and a (B, 1) scalar."""
        h = self.features(x, s, t, cond)
        y = self.out(h).reshape(x.shape[0], self.horizon, self.action_dim)  # (B, Tp, A)
        return y, self.scalar_head(h)

    def conditioned(self, cond):
        """net(x, s, t, cond) as a function of (x, s, t) for one fixed cond (B,To,D), computing cond's share
        of the first layer once; float s, t are embedded once for the whole batch. Same math as forward
        (Linear of a concatenation = sum of its column blocks), for repeated calls: Euler steps, the
        one-step policy at s = 0, t = 1."""
        b = cond.shape[0]
        nx = self.horizon * self.action_dim
        first = self.trunk[0]
        w_x, w_e, w_c = first.weight.split([nx, self.time_emb.output_dim, self.obs_steps * self.cond_dim], 1)
        check_inputs(cond.new_zeros(b, self.horizon, self.action_dim), cond, self.horizon, self.action_dim,
                     self.obs_steps, self.cond_dim, 'MLP')
        cond_term = torch.addmm(first.bias, cond.reshape(b, -1), w_c.T)  # (B, H), bias included

        def net(x, s, t):
            """(y (B,Tp,A), scalar (B,1)) = forward(x, s, t, cond)."""
            if x.shape != (b, self.horizon, self.action_dim):
                raise ValueError(f'MLP: x must be (B={b}, Tp={self.horizon}, A={self.action_dim}), '
                                 f'got {tuple(x.shape)}')
            rows = 1 if isinstance(s, float) and isinstance(t, float) else b  # one embedding row or B
            s, t = batch_times(s, rows, x), batch_times(t, rows, x)
            h = torch.addmm(cond_term, x.reshape(b, -1), w_x.T) + self.time_emb(s, t) @ w_e.T
            h = self.trunk[1:](h)
            return self.out(h).reshape(b, self.horizon, self.action_dim), self.scalar_head(h)

        return net
