"""FQL with action chunking (ACFQL; Park et al. 2025, Li et al. 2025 "Q-chunking") in our time convention.

Modules: BC flow policy v_theta (the FBC network), one-step policy mu(o, z), critic ensemble Q_k(o, chunk)
with a Polyak target. Rewards, masks and valid come from the dataset batch
(chunk length Tp, bootstrap with discount ** Tp), as in Q-chunking.

The one-step policy reads the noise z through the policy network net(z, 0, 1, cond(o)) (so any of the three
networks serves); `onestep_prediction` says what its output D is: 'u' (default) a velocity, mu = z + D (one
Euler step of a flow); 'x' the chunk itself, mu = D, as ACFQL's actor_onestep_flow MLP(o, z) returns the
action. The default noise is the chunk prior N(0, Sigma) of the data's chunks (`noise_prior`, agents/base.py),
for the BC flow, its distillation target and the one-step policy alike: z then already looks like a chunk,
and z + D only has to correct it. With N(0, I) noise, 'u' makes the network cancel z exactly and what it
leaves shows as jitter (README "ACFQL's defaults"); with the chunk prior 'u' is the better form on mixed Can
(0.77 over 3 seeds at 10k steps, against 0.48 for N(0, I) and 'x', one seed; README "ACFQL on mixed Can").
"""

import contextlib
import copy
from typing import NamedTuple

import torch
from torch import nn

from agents.base import _require
from agents.fbc import BCAgent, conditioned, euler_flow
from agents.fbc import get_config as get_fbc_config
from utils.network_factory import get_encoder, get_network, get_value
from utils.training import polyak_update


def get_config():
    """ACFQL hyperparameters (Q-chunking's horizons and critic; the base optimizer; network fields from
    get_network_config())."""
    config = get_fbc_config()
    config.agent_name = 'fql'  # registry key in agents.AGENTS
    config.obs_steps = 1  # To (Q-chunking uses the current observation only)
    config.horizon_length = 5  # Tp = h: chunk length of the actor, the critic and the reward sum
    config.action_steps = 5  # Ta: executed actions per chunk (Q-chunking executes the whole chunk)
    # The optimizer is the base one (AdamW betas (0.95, 0.999), wd 1e-6, cosine with 500 warmup steps, EMA
    # weights for sampling) at the MLP's lr 1e-3, as in FBC's state recipe; not Q-chunking's (lr 3e-4
    # constant, betas (0.9, 0.999), no EMA). Mixed Can (state, seed 0, 5k steps, 50 episodes): Q-chunking's
    # optimizer 0.02 with and without the Q term, this one 0.20 and 0.18; FBC with ACFQL's horizons drops
    # from 0.80 to 0.20 on Q-chunking's optimizer. Scripted Lift: 0.98 -> 1.00 (README "ACFQL's defaults").
    config.lr = 1e-3
    # weight of the one-step distillation term. Q-chunking's 100 assumes |Q| near 1; our robomimic rewards
    # (-1 per step until success, gamma 0.99) give Q of -15 to -28, and at 100 the Q term (12-19 in the loss)
    # outweighs the distillation (100 x 0.013-0.033): scripted Lift, one seed, 5k steps, 50 episodes:
    # alpha 100 0.52, 1000 0.98, Q term off 0.94 (README "ACFQL's defaults").
    config.alpha = 1000.0
    config.q_agg = 'mean'  # aggregation of the target ensemble: 'mean' or 'min'
    config.normalize_q_loss = False  # scale the Q term by stopgrad(1 / mean |Q|)
    config.use_q_loss = True  # False switches the Q term off (pure BC + distillation)
    # Noise from the chunks' covariance and the one-step policy mu = z + net(z, 0, 1, c) (module docstring):
    # mixed Can, 10k steps, 3 seeds: 0.767 +- 0.046, against 0.48 (one seed) for N(0, I) and 'x'; scripted
    # Lift, 5k steps, 3 seeds: 1.00 as before (README "ACFQL on mixed Can").
    config.noise_prior = 'chunk_cov'
    config.onestep_prediction = 'u'  # one-step output: 'u' a velocity, mu = z + out; 'x' the chunk (ACFQL's)
    config.sample_policy = 'onestep'  # what acts: 'onestep' mu(o, z); 'flow' the BC flow's Euler chunk
    config.best_of_n = 0  # N > 1: QC variant, best of N BC-flow chunks under the critic (no one-step)
    config.tau = 0.005  # Polyak rate of the target critic
    config.share_encoder = False  # True: the critic uses the actor's encoder; False: its own encoder
    return config


class FQLFeatures(NamedTuple):
    """What FQL's `encode` gives its `sample_chunk`: policy features (B,To,D), critic features or None."""

    policy: torch.Tensor
    critic: torch.Tensor | None


@contextlib.contextmanager
def frozen(module):
    """Turn off requires_grad of `module`'s parameters inside the block (explicit critic freeze)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class FQLAgent(BCAgent):
    """ACFQL: BC flow + one-step policy distilled toward the clipped Euler flow and pushed up the critic."""

    name = 'fql'
    eval_fields = (*BCAgent.eval_fields, 'sample_policy', 'best_of_n')

    def __init__(self, shape_meta, config, normalizer, seed, device):
        super().__init__(shape_meta, config, normalizer, seed, device)
        # Polyak target of the critic and its encoder; eval mode (center crop, no dropout) on o'.
        self.target = copy.deepcopy(self.critic_modules(self.model)).requires_grad_(False).eval()

    @classmethod
    def validate_config(cls, config):
        """FBC's checks plus the RL fields."""
        super().validate_config(config)
        c = config
        _require(c.alpha >= 0, 'alpha', c.alpha, 'a float >= 0')
        _require(c.q_agg in ('mean', 'min'), 'q_agg', c.q_agg, "'mean' or 'min'")
        _require(int(c.best_of_n) >= 0, 'best_of_n', c.best_of_n, 'an integer >= 0 (0, 1 = one-step policy)')
        # at temperature 0 the N candidates are one chunk, and best-of-N is the BC flow from z = 0 in disguise
        _require(int(c.best_of_n) <= 1 or float(c.sample_temperature) > 0, 'best_of_n', c.best_of_n,
                 f'0 or 1 with sample_temperature={c.sample_temperature} (its N chunks would all be the '
                 'one from z = 0); give --agent.sample_temperature > 0 (1: the prior) with best_of_n > 1')
        _require(0 < c.tau <= 1, 'tau', c.tau, 'a float in (0, 1]')
        policy = c.get('sample_policy', 'onestep')  # absent in checkpoints older than the field
        _require(policy in ('onestep', 'flow'), 'sample_policy', policy,
                 "'onestep' (the one-step policy) or 'flow' (the BC flow's flow_steps Euler steps)")
        _require(c.onestep_prediction in ('x', 'u'), 'onestep_prediction', c.onestep_prediction,
                 "'x' (the network outputs the chunk) or 'u' (mu = z + output)")

    def build_modules(self, config):
        """Encoder, BC flow, one-step policy, critic (and its own encoder unless shared)."""
        encoder = get_encoder(config)
        modules = {'encoder': encoder, 'actor': get_network(config, encoder.output_dim),
                   'onestep': get_network(config, encoder.output_dim)}
        critic_encoder = encoder
        if not config.share_encoder:
            critic_encoder = modules['critic_encoder'] = get_encoder(config)
        modules['critic'] = get_value(config, critic_encoder.output_dim)
        return modules

    @staticmethod
    def critic_modules(model):
        """The critic and the encoder it reads, as one module (what the target network copies)."""
        encoder = model['critic_encoder'] if 'critic_encoder' in model else model['encoder']
        return nn.ModuleDict({'encoder': encoder, 'critic': model['critic']})

    # ----------------------------------------------------------------- policies
    def onestep_chunk(self, model, cond, z):
        """Unclipped one-step chunk mu(o, z) (B,Tp,A): net(z, 0, 1, cond), plus z for prediction 'u'."""
        out = conditioned(model['onestep'], cond)(z, 0.0, 1.0)[0]
        return z + out if self.config.onestep_prediction == 'u' else out

    def onestep_policy(self, model, cond, z):
        """mu(o, z) clipped to [-1, 1]. z (B,Tp,A)."""
        return self.onestep_chunk(model, cond, z).clamp(-1, 1)

    def best_of_n_policy(self, model, cond, critic_cond, generator, temperature):
        """Draw N chunks from the BC flow per observation, from `temperature` times the prior's noise, and
        keep the one with the highest mean Q."""
        n, b = int(self.config.best_of_n), cond.shape[0]
        rep = lambda x: x.repeat_interleave(n, dim=0)  # (B, ...) -> (B*N, ...)
        shape = (b * n, int(self.config.horizon_length), self.action_dim)
        z = self.noise(shape, generator, cond.dtype) * float(temperature)
        chunks = euler_flow(model['actor'], rep(cond), z, int(self.config.flow_steps)).clamp(-1, 1)
        q = model['critic'](rep(critic_cond), chunks).mean(0).view(b, n)  # (B, N)
        best = q.argmax(dim=1)  # (B,)
        return chunks.view(b, n, *shape[1:])[torch.arange(b, device=cond.device), best]

    def encode(self, model, obs):
        """FQLFeatures(policy, critic or None); the critic encoder runs only for best-of-N."""
        cond = model['encoder'](obs)
        if int(self.config.best_of_n) > 1:
            return FQLFeatures(cond, self.critic_modules(model)['encoder'](obs))
        return FQLFeatures(cond, None)

    def sample_chunk(self, model, features, z, generator):
        """The best of N BC-flow chunks under the critic; else the BC flow's chunk or the one-step policy's,
        as sample_policy says."""
        if int(self.config.best_of_n) > 1:
            return self.best_of_n_policy(model, features.policy, features.critic, generator,
                                         self.config.sample_temperature)
        if self.config.get('sample_policy', 'onestep') == 'flow':  # absent in older checkpoints
            return euler_flow(model['actor'], features.policy, z, int(self.config.flow_steps)).clamp(-1, 1)
        return self.onestep_policy(model, features.policy, z)

    # ----------------------------------------------------------------- losses
    def aggregate(self, q):
        """Aggregate ensemble values (K, B) -> (B,) with config.q_agg."""
        return q.mean(0) if self.config.q_agg == 'mean' else q.min(0).values

    def critic_loss(self, batch, critic_cond=None):
        """TD loss toward R + gamma^Tp * mask * agg_k Qbar_k(o', clip(mu(o', z))), masked by valid[:, -1]."""
        critic = self.critic_modules(self.model)
        if critic_cond is None:
            critic_cond = critic['encoder'](batch['observations'])
        with torch.no_grad():
            next_obs = batch['next_observations']
            next_cond = self.model['encoder'](next_obs)
            if int(self.config.best_of_n) > 1:
                next_critic_cond = critic['encoder'](next_obs)
                # the prior's own noise: training does not depend on how the trained agent samples
                next_actions = self.best_of_n_policy(self.model, next_cond, next_critic_cond, self.rng, 1.0)
            else:
                next_actions = self.onestep_policy(self.model, next_cond, self.randn_like(batch['actions']))
            next_q = self.target['critic'](self.target['encoder'](next_obs), next_actions)  # (K, B)
            next_q = self.aggregate(next_q)  # (B,)
            gamma_h = self.config.discount ** int(self.config.horizon_length)
            target_q = batch['rewards'] + gamma_h * batch['masks'] * next_q  # (B,)
        q = critic['critic'](critic_cond, batch['actions'])  # (K, B)
        weight = batch['valid'][:, -1]  # chunks that run past an episode end are masked out
        loss = ((q - target_q).pow(2) * weight).mean()
        return loss, {'critic/critic_loss': loss.detach(), 'critic/q_mean': q.detach().mean(),
                      'critic/q_max': q.detach().max(), 'critic/q_min': q.detach().min(),
                      'critic/target_q_mean': target_q.mean()}

    def actor_loss(self, batch, critic_cond=None):
        """BC flow + alpha * distillation - Q(o, clip(mu(o, z))) with the critic frozen."""
        valid = batch['valid']
        cond = self.model['encoder'](batch['observations'])  # (B, To, D)
        bc_loss, info = self.flow_loss(self.model['actor'], cond, batch['actions'], valid)
        if int(self.config.best_of_n) > 1:
            return bc_loss, dict(info, **{'actor/actor_loss': bc_loss.detach()})
        z = self.randn_like(batch['actions'])
        with torch.no_grad():
            target = euler_flow(self.model['actor'], cond, z, int(self.config.flow_steps)).clamp(-1, 1)
        mu = self.onestep_chunk(self.model, cond, z)  # (B,Tp,A), unclipped
        distill_loss = (mu - target).pow(2).mean()
        loss = bc_loss + self.config.alpha * distill_loss
        info.update({'actor/distill_loss': distill_loss.detach()})
        if self.config.use_q_loss:
            critic = self.critic_modules(self.model)
            if critic_cond is None:
                critic_cond = critic['encoder'](batch['observations'])
            with frozen(critic):
                q = critic['critic'](critic_cond.detach(), mu.clamp(-1, 1)).mean(0)  # (B,)
            q_loss = -q.mean()
            if self.config.normalize_q_loss:
                q_loss = q_loss / q.abs().mean().detach().clamp_min(1e-6)
            loss = loss + q_loss
            info.update({'actor/q_loss': q_loss.detach(), 'actor/q': q.detach().mean()})
        info['actor/actor_loss'] = loss.detach()
        return loss, info

    def total_loss(self, batch):
        """Critic loss + actor loss; the critic encoder runs once for both."""
        for key in ('next_observations', 'rewards', 'masks', 'valid'):
            if key not in batch:
                raise KeyError(f'FQL needs batch[{key!r}] from Dataset.sample_sequence; '
                               f'got keys {sorted(batch)}')
        critic_cond = self.critic_modules(self.model)['encoder'](batch['observations'])
        c_loss, c_info = self.critic_loss(batch, critic_cond)
        a_loss, a_info = self.actor_loss(batch, critic_cond)
        return c_loss + a_loss, {**c_info, **a_info}

    def after_step(self):
        """Polyak update of the target critic (and its encoder)."""
        polyak_update(self.target, self.critic_modules(self.model), self.config.tau)

    def extra_state(self):
        """The target critic."""
        return {'target': self.target.state_dict()}

    def load_extra_state(self, state):
        """Restore the target critic."""
        self.target.load_state_dict(state['target'])
