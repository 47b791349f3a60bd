"""MFBC: MeanFlow behaviour cloning. Learns the average velocity u(x, s, t) of the flow map X_{s,t}.

Our convention (t = 0 noise, t = 1 data): u(x_s, s, t) = v(x_s, s) + (t - s) du/ds with
du/ds = d_s u + (d_x u) v, computed as a forward-mode JVP along the tangent (v, 1, 0)
(MeanFlow, Geng et al. 2025, arXiv 2505.13447).
By default the noise is N(0, Sigma) of the data's chunks (`noise_prior`, agents/base.py) and the network
outputs u, so the one-step sample z + u(z, 0, 1) keeps the noise's chunk-shaped structure.
"""

import functools

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from agents.base import Agent, _require
from agents.fbc import get_config as get_fbc_config

X_PRED_MIN_GAP = 0.05  # floor of 1 - s in u = (D - x) / (1 - s) (prediction 'x')


def get_config():
    """MFBC hyperparameters: FBC's plus MeanFlow time sampling, adaptive weighting and the sampler."""
    config = get_fbc_config()
    config.agent_name = 'mfbc'  # registry key in agents.AGENTS
    # The time fields below were screened on synthetic chunks (docs/MEANFLOW.md, bench/meanflow_screen.py).
    # fraction of the batch with t = s (plain flow matching at the earlier draw); MeanFlow 0.75, MP1 / DM1 /
    # iMF 0.5
    config.flow_ratio = 0.25
    # logit-normal mean and std of the two (s, t) draws, in our noise -> data convention; (0, 2) draws far
    # more large gaps (what one-step sampling evaluates) than MeanFlow's (0.4, 1)
    config.time_mu = 0.0
    config.time_sigma = 2.0
    # fraction of the batch, outside the flow-matching share, drawn at (s, t) = (0, 1): the pair that
    # one-step sampling evaluates
    config.one_step_ratio = 0.0
    # adaptive loss weight 1 / stopgrad(||err||^2 + c)^p; 0 disables it (MP1: p 0.5, c 1e-3; MeanFlow 1, 1e-2)
    config.adaptive_p = 0.5
    config.adaptive_c = 1e-3
    # the noise is shaped like the data's chunks (agents.base: N(0, Sigma), Sigma the covariance of the
    # normalized training chunks), so the one-step sample z + u(z, 0, 1) inherits their correlations and
    # roughness and u only moves the noise (docs/MEANFLOW.md: with N(0, I) the one-step chunks' mean squared
    # second difference was 14x the data's with 'u' and 16% of it with 'x'; with this prior and 'u', +7%)
    config.noise_prior = 'chunk_cov'
    # what the network outputs: 'u' the average velocity itself (MeanFlow), or 'x' the chunk at t = 1
    # reached from (x, s), with u = (net - x) / (1 - s) (see `average_velocity`). 'x' is the better choice
    # with N(0, I) noise (the network need not cancel z); with the chunk prior 'u' keeps z's fine structure
    config.prediction = 'u'
    # FBC's 1e-4 is Diffusion Policy's rate for its U-Net over long image runs; the one-step map of the MLP
    # learns far faster at 1e-3 (screen: 1e-3 beat 3e-4 at 2000 steps; scripted Lift 1.00 at 5k steps)
    config.lr = 1e-3
    config.sample_steps = 1  # flow-map steps at sampling time (1 = one-step generation)
    config.timestep_scale = 1.0  # unscaled times in the embeddings keep the JVP's du/ds well conditioned
    # how the two times reach net(x, s, t, cond): 'st' passes (s, t); 't_gap' passes (t, t - s) in the same
    # two slots (MeanFlow's ablation prefers the gap form)
    config.time_cond = 'st'
    return config


def _jvp(u_fn, x, s, t, dx):
    """torch.func.jvp of u_fn at (x, s, t) along (dx, 1, 0)."""
    return torch.func.jvp(u_fn, (x, s, t), (dx, torch.ones_like(s), torch.zeros_like(t)))


@functools.cache
def _compiled_jvp():
    """`_jvp` under torch.compile, built on first use (`compiled=True`; the agents do not use it, see
    `jvp_along_s`)."""
    return torch.compile(_jvp)


def full_precision(x):
    """x as float32 when it is bf16 / fp16 (autocast outputs); float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def jvp_along_s(u_fn, x, s, t, dx, compiled=False):
    """(u_fn(x, s, t), d/de u_fn(x + e dx, s + e, t)) via torch.func.jvp, using the math attention kernel
    (flash / memory-efficient attention have no forward-mode AD). x, dx (B,...), s, t (B,).

    `compiled` runs the whole JVP under torch.compile. The agents leave it off: with torch 2.14 on CPU it
    matched eager for the MLP (1e-7) but failed for ChiUNet (INTERNAL ASSERT in _make_dual while tracing);
    bench/gpu_check.py probes it on CUDA. With `config.compile` the network inside the eager JVP runs
    eagerly (dynamo cannot enter a transform it did not start), so MeanFlow training compiles its encoder
    and samples compiled, and its JVP gives the eager values.

    The JVP always runs in fp32, autocast off (u_fn must be fp32 inside: cast its captured features): under
    bf16 autocast torch.func.jvp fails for convolutions on CPU (input fp32, weight bf16) and is unverified on
    CUDA, and du/ds is a difference quotient that bf16 would round hardest. With `use_bf16` the encoders
    (and sampling) still run in bf16."""
    with sdpa_kernel(SDPBackend.MATH), torch.autocast(x.device.type, enabled=False):
        x, s, t, dx = (full_precision(a) for a in (x, s, t, dx))
        return (_compiled_jvp() if compiled else _jvp)(u_fn, x, s, t, dx)


def meanflow_target(u_fn, x, s, t, v, compiled=False):
    """MeanFlow regression target u_tgt = v + (t - s) * du/ds (no gradient) and the primal u_fn(x, s, t).

    u_fn(x, s, t) -> u, x (B, ...) the point at time s, v (B, ...) the velocity at (x, s) used as tangent.
    With the exact marginal velocity and the exact average velocity this returns u exactly.
    """
    u, du_ds = jvp_along_s(u_fn, x, s, t, v, compiled)
    gap = (t - s).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
    return u, (v + gap * du_ds).detach()


class MFBCAgent(Agent):
    """MeanFlow BC: regress u_theta(x_s, s, t) onto the JVP target; sample with `sample_steps` map steps."""

    name = 'mfbc'
    eval_fields = (*Agent.eval_fields, 'sample_steps')

    @classmethod
    def validate_config(cls, config):
        """FBC's checks plus the MeanFlow fields."""
        super().validate_config(config)
        c = config
        _require(0 <= c.flow_ratio <= 1, 'flow_ratio', c.flow_ratio, 'a float in [0, 1]')
        _require(c.time_sigma > 0, 'time_sigma', c.time_sigma, 'a positive float')
        _require(c.adaptive_p >= 0, 'adaptive_p', c.adaptive_p, 'a float >= 0 (0 = unweighted)')
        _require(c.adaptive_c > 0, 'adaptive_c', c.adaptive_c, 'a positive float')
        _require(0 <= c.one_step_ratio <= 1, 'one_step_ratio', c.one_step_ratio, 'a float in [0, 1]')
        _require(int(c.sample_steps) >= 1, 'sample_steps', c.sample_steps, 'an integer >= 1')
        _require(c.time_cond in ('st', 't_gap'), 'time_cond', c.time_cond, "'st' or 't_gap'")
        _require(c.prediction in ('u', 'x'), 'prediction', c.prediction, "'u' or 'x'")

    def average_velocity(self, net, cond):
        """u(x, s, t) -> (B,Tp,A) as a function of (x (B,Tp,A), s (B,), t (B,)).

        `time_cond` says which two times fill the network's (s, t) slots. With `prediction` 'x' the network
        outputs D, the chunk at t = 1, and u = (D - x) / (1 - s) (1 - s floored at X_PRED_MIN_GAP): the same
        function class, but the one-step map z + u(z, 0, 1) = D(z, 0, 1) no longer has to cancel z.
        """
        c = self.config
        times = (lambda s, t: (t, t - s)) if c.time_cond == 't_gap' else (lambda s, t: (s, t))
        if c.prediction == 'u':
            return lambda x, s, t: net(x, *times(s, t), cond)[0]

        def u_from_x(x, s, t):
            d = net(x, *times(s, t), cond)[0]
            return (d - x) / (1 - s).clamp(min=X_PRED_MIN_GAP).view(-1, *([1] * (x.dim() - 1)))
        return u_from_x

    def sample_times(self, batch_size, device):
        """(s, t) with s <= t from two logit-normal draws; t = s on a `flow_ratio` fraction, and (0, 1) on a
        `one_step_ratio` fraction of the rest. Each (B,).

        The flow-matching share keeps the earlier (noisier) draw, as MeanFlow's code does (its `r = t` in
        the reversed data -> noise convention): collapsing onto the later draw would leave almost no
        velocity training near t = 0, where every sampler starts.
        """
        c = self.config
        n = torch.randn((2, batch_size), device=device, generator=self.rng)
        tt = torch.sigmoid(c.time_mu + c.time_sigma * n)  # (2, B)
        s, t = tt.min(dim=0).values, tt.max(dim=0).values
        same = torch.rand(batch_size, device=device, generator=self.rng) < c.flow_ratio
        t = torch.where(same, s, t)
        ends = (torch.rand(batch_size, device=device, generator=self.rng) < c.one_step_ratio) & ~same
        return torch.where(ends, 0.0, s), torch.where(ends, 1.0, t)

    def weighted_mean(self, err):
        """Mean of per-sample squared errors err (B,) with the adaptive weight 1 / stopgrad(err + c)^p."""
        p, c = self.config.adaptive_p, self.config.adaptive_c
        if p == 0:
            return err.mean()
        return (err / (err.detach() + c).pow(p)).mean()

    def draw_points(self, actions):
        """(s, t, x_s, v_cond): times from `sample_times`, the interpolant at s, the conditional velocity."""
        s, t = self.sample_times(actions.shape[0], actions.device)
        z = self.randn_like(actions)
        sb = s[:, None, None]
        return s, t, (1 - sb) * z + sb * actions, actions - z

    def flow_loss(self, net, cond, actions):
        """MeanFlow loss || u_theta(x_s, s, t) - sg(v_cond + (t - s) du/ds) ||^2, tangent (v_cond, 1, 0)."""
        s, t, x_s, v = self.draw_points(actions)
        cond = full_precision(cond)  # bf16 under autocast; the JVP runs in fp32 (jvp_along_s)
        u, target = meanflow_target(self.average_velocity(net, cond), x_s, s, t, v)
        err = (u - target).pow(2).flatten(1).sum(1)  # (B,): summed over the chunk
        loss = self.weighted_mean(err)
        return loss, {'actor/meanflow_loss': loss.detach(), 'actor/meanflow_mse': err.detach().mean()}

    def sample_chunk(self, model, cond, z, generator):
        """Apply the learned flow map X_{s,t}(x) = x + (t - s) u(x, s, t) on a uniform grid from 0 to 1."""
        u_fn, steps = self.average_velocity(model['actor'], cond), int(self.config.sample_steps)
        x = z
        for i in range(steps):
            s = torch.full((z.shape[0],), i / steps, device=z.device, dtype=z.dtype)
            t = torch.full((z.shape[0],), (i + 1) / steps, device=z.device, dtype=z.dtype)
            x = x + (1.0 / steps) * u_fn(x, s, t)
        return x.clamp(-1, 1)
