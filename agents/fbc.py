"""FBC: flow-matching behaviour cloning over action chunks (the shared machinery is agents/base.py's Agent).

Time runs from noise (t = 0) to data (t = 1): x_t = (1 - t) z + t a, v_cond = a - z (rectified flow / flow
matching, Lipman et al. 2023, Liu et al. 2023).
The network sees s = t in training and in sampling.
"""

import torch

from agents.base import Agent, _require, get_base_config


def get_config():
    """FBC hyperparameters: the shared fields of agents.base.get_base_config() plus the Euler sampler."""
    config = get_base_config()
    config.agent_name = 'fbc'  # registry key in agents.AGENTS
    config.flow_steps = 10  # Euler steps of the flow sampler
    return config


class BCAgent(Agent):
    """Flow-matching BC over action chunks: loss || net(x_t, t, t, c) - (a - z) ||^2, Euler sampler."""

    name = 'fbc'
    eval_fields = (*Agent.eval_fields, 'flow_steps')

    @classmethod
    def validate_config(cls, config):
        """The shared checks plus the sampler's steps."""
        super().validate_config(config)
        _require(int(config.flow_steps) >= 1, 'flow_steps', config.flow_steps, 'an integer >= 1')

    def flow_loss(self, net, cond, actions, valid=None):
        """Flow-matching loss at t ~ U(0, 1) with s = t. actions (B,Tp,A) normalized, cond (B,To,D);
        `valid` (B,Tp) optionally masks chunk positions (FQL)."""
        z = self.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device, generator=self.rng)  # (B,)
        tb = t[:, None, None]
        x_t = (1 - tb) * z + tb * actions
        pred, _ = net(x_t, t, t, cond)
        sq = (pred - (actions - z)).pow(2)  # (B, Tp, A)
        loss = sq.mean() if valid is None else (sq * valid[..., None]).mean()
        return loss, {'actor/bc_flow_loss': loss.detach()}

    def sample_chunk(self, model, features, z, generator):
        """Euler integration of the BC flow from noise z (B,Tp,A) at t = 0 to t = 1, then clip to [-1, 1]."""
        return euler_flow(model['actor'], features, z, int(self.config.flow_steps)).clamp(-1, 1)


def conditioned(net, cond):
    """net(x, s, t, cond) as a function of (x, s, t) for one fixed cond: the network's own `conditioned`
    when it has one (MLP computes cond's share of its first layer once), else a closure that turns float
    times into the (B,) tensors of the network contract."""
    if hasattr(net, 'conditioned'):
        return net.conditioned(cond)

    def call(x, s, t):
        """net(x, s, t, cond) with float s, t broadcast to (B,)."""
        s, t = (torch.full((x.shape[0],), v, device=x.device, dtype=x.dtype) if isinstance(v, float) else v
                for v in (s, t))
        return net(x, s, t, cond)

    return call


def euler_flow(net, cond, z, steps):
    """Integrate dx/dt = net(x, t, t, cond) from t = 0 to 1 with `steps` Euler steps. z (B,Tp,A)."""
    step = conditioned(net, cond)  # cond's work is done once, not once per step
    x, dt = z, 1.0 / steps
    for i in range(steps):
        x = x + dt * step(x, i * dt, i * dt)[0]  # float times: the same t for the whole batch
    return x
