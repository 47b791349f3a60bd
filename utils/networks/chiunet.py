"""ChiUNet: Diffusion Policy's conditional 1-D U-Net over the action chunk, conditioned on s, t and obs.

Any horizon Tp works: the chunk is zero-padded at the end to the next multiple of 2^(levels - 1)
(levels = len(dim_mult); e.g. Q-chunking's Tp=5 runs at length 8 with dim_mult (1, 2, 2)), and the
output is cropped back to Tp. Padded positions only ever hold zeros at the input.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.embeddings import TimePairEmbedding
from utils.network_utils import Downsample1d, GroupNorm1d, Upsample1d, batch_times, check_inputs, zero_linear


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish on (B, C, T)."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2),
            GroupNorm1d(out_dim, n_groups),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) -> (B, C_out, T)."""
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM (scale and bias, or bias only) from a condition vector, plus a residual."""

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, kernel_size: int, n_groups: int = 8,
                 cond_predict_scale: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([
            Conv1dBlock(in_dim, out_dim, kernel_size, n_groups),
            Conv1dBlock(out_dim, out_dim, kernel_size, n_groups),
        ])
        self.out_dim = out_dim
        self.cond_predict_scale = cond_predict_scale
        film_out = out_dim * (2 if cond_predict_scale else 1)
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_out))
        self.residual = nn.Conv1d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T), cond (B, cond_dim) -> (B, C_out, T)."""
        out = self.blocks[0](x)
        film = self.cond_encoder(cond)[:, :, None]  # (B, C_out or 2 C_out, 1)
        if self.cond_predict_scale:
            scale, bias = film[:, :self.out_dim], film[:, self.out_dim:]
            out = scale * out + bias
        else:
            out = out + film
        out = self.blocks[1](out)
        return out + self.residual(x)


class ChiUNet(nn.Module):
    """net(x (B,Tp,A), s (B,), t (B,), cond (B,To,D)) -> (y (B,Tp,A), scalar (B,1)) with a FiLM 1-D U-Net.

    Global conditioning (obs_as_global_cond=True): FiLM input = [time MLP([emb(s), emb(t)]), flatten(cond)].
    Local conditioning (False): FiLM sees only the time features; flatten(cond) is broadcast to every
    position, encoded by two residual blocks and added after the first block of the first down level and
    after the last up level (Diffusion Policy's local-cond path). The scalar head reads the mean-pooled
    bottleneck features and starts at zero.
    """

    def __init__(self, action_dim: int, horizon: int, obs_steps: int, cond_dim: int, emb_dim: int = 256,
                 timestep_embedding: str = 'sinusoidal', timestep_scale: float | None = None,
                 model_dim: int = 128,
                 dim_mult: Sequence[int] = (1, 2, 2), kernel_size: int = 5, n_groups: int = 8,
                 cond_predict_scale: bool = True, obs_as_global_cond: bool = True):
        super().__init__()
        if len(dim_mult) < 1:
            raise ValueError('ChiUNet: dim_mult needs at least one level')
        if kernel_size % 2 != 1:
            raise ValueError(f'ChiUNet: kernel_size must be odd, got {kernel_size}')
        self.action_dim, self.horizon = action_dim, horizon
        self.obs_steps, self.cond_dim = obs_steps, cond_dim
        self.obs_as_global_cond = obs_as_global_cond
        self.multiple = 2 ** (len(dim_mult) - 1)  # sequence length must be divisible by this
        dims = [action_dim] + [model_dim * m for m in dim_mult]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))

        self.time_emb = TimePairEmbedding(timestep_embedding, emb_dim, timestep_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_emb.output_dim, 4 * emb_dim), nn.Mish(), nn.Linear(4 * emb_dim, emb_dim)
        )
        film_dim = emb_dim + (obs_steps * cond_dim if obs_as_global_cond else 0)

        def block(i, o):
            return ConditionalResidualBlock1D(i, o, film_dim, kernel_size, n_groups, cond_predict_scale)

        self.local_encoder = None
        if not obs_as_global_cond:
            local_dim = obs_steps * cond_dim
            self.local_encoder = nn.ModuleList([block(local_dim, dims[1]), block(local_dim, dims[1])])

        self.down = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down.append(nn.ModuleList([
                block(d_in, d_out), block(d_out, d_out), Downsample1d(d_out) if not last else nn.Identity()
            ]))
        mid = dims[-1]
        self.mid = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):  # every up level doubles the length back
            self.up.append(nn.ModuleList([block(d_out * 2, d_in), block(d_in, d_in), Upsample1d(d_in)]))
        self.final = nn.Sequential(
            Conv1dBlock(dims[1], dims[1], kernel_size, n_groups), nn.Conv1d(dims[1], action_dim, 1)
        )
        self.scalar_head = zero_linear(mid, 1)

    def forward(self, x, s, t, cond):
        """Predict (B, Tp, A) and a (B, 1) scalar."""
        check_inputs(x, cond, None, self.action_dim, self.obs_steps, self.cond_dim, 'ChiUNet')
        b, tp = x.shape[:2]
        s, t = batch_times(s, b, x), batch_times(t, b, x)
        padded = -(-tp // self.multiple) * self.multiple
        h = F.pad(x.transpose(1, 2), (0, padded - tp))  # (B, A, T_pad)
        film = self.time_mlp(self.time_emb(s, t))  # (B, emb_dim)
        local = None
        if self.obs_as_global_cond:
            film = torch.cat([film, cond.reshape(b, -1)], dim=-1)  # (B, emb_dim + To*D)
        else:
            local = cond.reshape(b, -1, 1).expand(-1, -1, padded)  # (B, To*D, T_pad)
            local = [enc(local, film) for enc in self.local_encoder]

        skips = []
        for i, (res1, res2, down) in enumerate(self.down):
            h = res1(h, film)
            if i == 0 and local is not None:
                h = h + local[0]
            h = res2(h, film)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, film)
        scalar = self.scalar_head(h.mean(dim=-1))  # (B, 1) from the pooled bottleneck
        for res1, res2, up in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, 2C, T_level)
            h = up(res2(res1(h, film), film))
        if local is not None:
            h = h + local[1]  # (B, dims[1], T_pad)
        y = self.final(h)[:, :, :tp].transpose(1, 2)  # (B, Tp, A)
        return y, scalar
