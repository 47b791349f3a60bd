"""IMFBC: improved MeanFlow BC (iMF, arXiv 2512.02012) in our noise -> data convention (REFERENCE §1).

Two changes to MFBC: the JVP tangent is the model's own velocity v_theta(x_s, s) = u_theta(x_s, s, s)
(no gradient) instead of v_cond, and the loss regresses V_theta = u_theta(x_s, s, t) - (t - s) stopgrad(du/ds)
onto v_cond, plus the velocity loss || v_theta(x_s, s) - v_cond ||^2. Sampling is MFBC's.
"""

from agents.mfbc import MFBCAgent, jvp_along_s
from agents.mfbc import get_config as get_mfbc_config


def get_config():
    """IMFBC hyperparameters: MFBC's, with its own registry name."""
    config = get_mfbc_config()
    config.agent_name = 'imfbc'  # registry key in agents.AGENTS
    return config


class IMFBCAgent(MFBCAgent):
    """Improved MeanFlow BC: compound-velocity loss with the model's own velocity as JVP tangent."""

    name = 'imfbc'

    def flow_loss(self, net, cond, actions):
        """|| u - (t - s) sg(du/ds) - v_cond ||^2 + || u(x_s, s, s) - v_cond ||^2 at tangent (sg(v), 1, 0)."""
        s, t = self.sample_times(actions.shape[0], actions.device)
        z = self.randn_like(actions)
        sb = s[:, None, None]
        x_s = (1 - sb) * z + sb * actions
        v_cond = actions - z
        v_pred = net(x_s, s, s, cond)[0]  # instantaneous velocity v_theta(x_s, s), with gradient
        u, du_ds = jvp_along_s(lambda x_, s_, t_: net(x_, s_, t_, cond)[0], x_s, s, t, v_pred.detach())
        compound = u - (t - s)[:, None, None] * du_ds.detach()  # estimate of v(x_s, s)
        err_u = (compound - v_cond).pow(2).flatten(1).sum(1)  # (B,)
        err_v = (v_pred - v_cond).pow(2).flatten(1).sum(1)  # (B,)
        loss = self.weighted_mean(err_u) + self.weighted_mean(err_v)
        return loss, {'actor/imf_u_loss': err_u.detach().mean(), 'actor/imf_v_loss': err_v.detach().mean(),
                      'actor/loss': loss.detach()}
