"""ChiTransformer: a decoder-only transformer over action tokens with cross-attention to condition tokens.

Condition tokens: one time token from [emb(s), emb(t)] plus one token per observation step, each with a
learned position, passed through a small MLP. Action tokens: Linear(A -> d) plus learned positions, then
`num_layers` pre-norm layers of causal self-attention, cross-attention (every action token sees every
condition token) and an MLP. Causality: output k depends on action tokens 0..k only.

Forward-mode AD (torch.func.jvp, MeanFlow): torch's fused attention kernels have no forward-mode
derivative. Build with attention_impl='math' (explicit softmax(QK^T/sqrt(d))V), or keep 'sdpa' and run the
JVP inside `with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.embeddings import TimePairEmbedding
from utils.network_utils import batch_times, check_inputs, zero_linear

ATTENTION_IMPLS = ('sdpa', 'math')


class Attention(nn.Module):
    """Multi-head attention of queries x (B, Tq, d) over memory m (B, Tk, d), optionally causal."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, impl: str):
        super().__init__()
        self.n_heads, self.dropout, self.impl = n_heads, dropout, impl
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, H, T, d / H)."""
        b, t, d = x.shape
        return x.reshape(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, m: torch.Tensor, causal: bool) -> torch.Tensor:
        """(B, Tq, d), (B, Tk, d) -> (B, Tq, d)."""
        q = self._heads(self.q(x))
        k, v = (self._heads(z) for z in self.kv(m).chunk(2, dim=-1))
        p = self.dropout if self.training else 0.0
        if self.impl == 'sdpa':
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
            if causal:
                future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(future, float('-inf'))
            h = F.dropout(scores.softmax(dim=-1), p) @ v  # (B, H, Tq, d / H)
        b, _, tq, _ = h.shape
        return self.out(h.transpose(1, 2).reshape(b, tq, -1))  # (B, Tq, d)


class DecoderLayer(nn.Module):
    """Pre-norm layer: causal self-attention, cross-attention to the condition tokens, GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, impl: str):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, n_heads, dropout, impl)
        self.cross_attn = Attention(d_model, n_heads, dropout, impl)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, Tp, d), (B, 1 + To, d) -> (B, Tp, d)."""
        h = self.ln1(x)
        x = x + self.drop(self.self_attn(h, h, causal=True))
        x = x + self.drop(self.cross_attn(self.ln2(x), memory, causal=False))
        return x + self.drop(self.mlp(self.ln3(x)))


class ChiTransformer(nn.Module):
    """net(x (B,Tp,A), s (B,), t (B,), cond (B,To,D)) -> (y (B,Tp,A), scalar (B,1)) with a causal transformer.

    Built for one horizon Tp (learned positions). The scalar head reads the mean of the final action
    tokens and starts at zero.
    """

    def __init__(self, action_dim: int, horizon: int, obs_steps: int, cond_dim: int, emb_dim: int = 256,
                 timestep_embedding: str = 'sinusoidal', timestep_scale: float | None = None,
                 d_model: int = 384, n_heads: int = 6,
                 num_layers: int = 8, dropout: float = 0.0, attention_impl: str = 'sdpa'):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f'ChiTransformer: d_model={d_model} must be divisible by n_heads={n_heads}')
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f'ChiTransformer: attention_impl={attention_impl!r} is unknown; '
                             f'valid: {list(ATTENTION_IMPLS)}')
        self.action_dim, self.horizon = action_dim, horizon
        self.obs_steps, self.cond_dim = obs_steps, cond_dim
        self.time_emb = TimePairEmbedding(timestep_embedding, emb_dim, timestep_scale)
        self.time_token = nn.Linear(self.time_emb.output_dim, d_model)
        self.obs_token = nn.Linear(cond_dim, d_model)
        self.cond_pos = nn.Parameter(0.02 * torch.randn(1, 1 + obs_steps, d_model))
        self.cond_mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.Mish(), nn.Linear(4 * d_model, d_model)
        )
        self.action_token = nn.Linear(action_dim, d_model)
        self.action_pos = nn.Parameter(0.02 * torch.randn(1, horizon, d_model))
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [DecoderLayer(d_model, n_heads, dropout, attention_impl) for _ in range(num_layers)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, action_dim)
        self.scalar_head = zero_linear(d_model, 1)

    def forward(self, x, s, t, cond):
        """Predict (B, Tp, A) and a (B, 1) scalar."""
        check_inputs(x, cond, self.horizon, self.action_dim, self.obs_steps, self.cond_dim, 'ChiTransformer')
        b = x.shape[0]
        s, t = batch_times(s, b, x), batch_times(t, b, x)
        time_tok = self.time_token(self.time_emb(s, t))[:, None]  # (B, 1, d)
        memory = torch.cat([time_tok, self.obs_token(cond)], dim=1) + self.cond_pos  # (B, 1 + To, d)
        memory = self.cond_mlp(self.drop(memory))
        h = self.drop(self.action_token(x) + self.action_pos)  # (B, Tp, d)
        for layer in self.layers:
            h = layer(h, memory)
        h = self.ln_f(h)
        return self.head(h), self.scalar_head(h.mean(dim=1))
