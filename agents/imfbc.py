"""IMFBC: improved MeanFlow BC (iMF, Geng et al., arXiv 2512.02012) in our noise -> data convention.

What the code does, per sample: v_theta(x_s, s) = u_theta(x_s, s, s), the average velocity at zero gap (the
same network, no second head), is trained on every sample by `velocity_loss_weight` * || v_theta - v_cond ||^2
and used, without gradient, as the JVP tangent: du/ds = d/de u_theta(x_s + e v_theta, s + e, t). The main
loss regresses the compound V_theta = u_theta(x_s, s, t) - (t - s) stopgrad(du/ds) onto v_cond = a - z.
Both terms take MFBC's adaptive weight; the time draws, the noise prior (N(0, Sigma) of the data's chunks),
`prediction` ('u') and the sampler are MFBC's. The official iMF code trains v_theta as an auxiliary output
head with weight 1; here it is u(x, s, s) of the same network. That head, measured on the same screen
(`bench.meanflow_screen` settings imf_vhead_w1 / imf_vhead_w0.5, seeds 0 and 1), was not better: it missed
the correlation bound on seed 0 (+0.062, +0.079) and was rougher (d2 +13 to +18% against +7 to +11%).

Default weight 1 (iMF's). On the smooth synthetic chunks of bench/meanflow_screen.py (docs/MEANFLOW.md; Tp 8,
MLP 3 x 256, 5000 steps, adaptive_p 0, lr 1e-3, seed 0, the default prior and prediction), weights 0, 0.5
and 1 all meet the five one-step bounds, within one seed's spread of each other (mean error 0.03 / 0.05 /
0.07 std, std +3 / -2 / -2%, corr -0.017 / +0.016 / +0.030, roughness +8 / +6 / +7%); with the previous
N(0, I) noise and prediction 'x' weight 1 did not (mean 0.22 std, corr +0.16, roughness -81%).
"""

import torch

from agents.base import _require
from agents.mfbc import MFBCAgent, full_precision, jvp_along_s
from agents.mfbc import get_config as get_mfbc_config


def get_config():
    """IMFBC hyperparameters: MFBC's plus the weight of the optional extra velocity loss."""
    config = get_mfbc_config()
    config.agent_name = 'imfbc'  # registry key in agents.AGENTS
    # weight of || u(x_s, s, s) - v_cond ||^2 on every sample (iMF's auxiliary velocity loss, 1 in its code);
    # 0 = the velocity is learned only where s = t, through the compound loss (see the module docstring)
    config.velocity_loss_weight = 1.0
    return config


class IMFBCAgent(MFBCAgent):
    """Improved MeanFlow BC: compound-velocity loss with the model's own velocity as JVP tangent."""

    name = 'imfbc'

    @classmethod
    def validate_config(cls, config):
        """MFBC's checks plus the velocity loss weight."""
        super().validate_config(config)
        w = config.velocity_loss_weight
        _require(w >= 0, 'velocity_loss_weight', w, 'a float >= 0 (0 = no extra velocity loss)')

    def velocities(self, net, u_fn, cond, x_s, s, t):
        """(JVP tangent without gradient, the velocity the extra loss trains): both the instantaneous
        velocity v_theta(x_s, s) = u(x_s, s, s), with gradient only when the loss uses it."""
        with torch.set_grad_enabled(self.config.velocity_loss_weight > 0 and torch.is_grad_enabled()):
            v_pred = u_fn(x_s, s, s)
        return v_pred.detach(), v_pred

    def flow_loss(self, net, cond, actions):
        """Compound loss || V - v_cond ||^2 [+ w || u(x_s, s, s) - v_cond ||^2]; JVP tangent (sg(v), 1, 0)."""
        s, t, x_s, v_cond = self.draw_points(actions)
        cond = full_precision(cond)  # bf16 under autocast; the JVP runs in fp32 (jvp_along_s)
        w = self.config.velocity_loss_weight
        u_fn = self.average_velocity(net, cond)
        tangent, v_pred = self.velocities(net, u_fn, cond, x_s, s, t)
        u, du_ds = jvp_along_s(u_fn, x_s, s, t, tangent)
        compound = u - (t - s)[:, None, None] * du_ds.detach()  # estimate of v(x_s, s)
        err_u = (compound - v_cond).pow(2).flatten(1).sum(1)  # (B,)
        err_v = (v_pred - v_cond).pow(2).flatten(1).sum(1)  # (B,)
        loss = self.weighted_mean(err_u)
        if w > 0:
            loss = loss + w * self.weighted_mean(err_v)
        return loss, {'actor/imf_u_loss': err_u.detach().mean(), 'actor/imf_v_loss': err_v.detach().mean(),
                      'actor/loss': loss.detach()}
