"""FQL's update against a reference written the straightforward way (plain network calls, (B,) times,
one network call per Euler step): same losses, same gradients and same weights up to float round-off."""

import types

import numpy as np
import pytest
import torch

from agents import AGENTS
from agents.fbc import euler_flow
from agents.fql import FQLFeatures, frozen
from tests.agent_contract import SHAPE_METAS, action_chunks, normalizer_stats, raw_batch, tiny_config


def reference_total_loss(agent, batch):
    """ACFQL's critic + actor loss as first written (the math the faster code must keep), drawing the
    agent's noise in the same order: next-action noise, BC-flow noise and time, one-step noise."""
    model, config = agent.model, agent.config
    critic = agent.critic_modules(model)
    critic_cond = critic['encoder'](batch['observations'])
    b = batch['actions'].shape[0]

    def onestep(out, z):  # 'x': the output is the chunk; 'u': z + output
        return out if config.onestep_prediction == 'x' else z + out
    zeros, ones = batch['actions'].new_zeros(b), batch['actions'].new_ones(b)
    with torch.no_grad():
        next_cond = model['encoder'](batch['next_observations'])
        z_next = agent.randn_like(batch['actions'])
        next_actions = onestep(model['onestep'](z_next, zeros, ones, next_cond)[0], z_next).clamp(-1, 1)
        next_q = agent.target['critic'](agent.target['encoder'](batch['next_observations']), next_actions)
        next_q = next_q.mean(0) if config.q_agg == 'mean' else next_q.min(0).values
        target_q = batch['rewards'] + config.discount ** config.horizon_length * batch['masks'] * next_q
    q = critic['critic'](critic_cond, batch['actions'])
    critic_loss = ((q - target_q).pow(2) * batch['valid'][:, -1]).mean()

    cond = model['encoder'](batch['observations'])
    bc_loss, _ = agent.flow_loss(model['actor'], cond, batch['actions'], batch['valid'])
    z = agent.randn_like(batch['actions'])
    with torch.no_grad():
        x, dt = z, 1.0 / config.flow_steps
        for i in range(config.flow_steps):
            t = torch.full((b,), i * dt)
            x = x + dt * model['actor'](x, t, t, cond)[0]
        target = x.clamp(-1, 1)
    mu = onestep(model['onestep'](z, zeros, ones, cond)[0], z)
    distill_loss = (mu - target).pow(2).mean()
    with frozen(critic):
        q_pi = critic['critic'](critic_cond.detach(), mu.clamp(-1, 1)).mean(0)
    loss = critic_loss + bc_loss + config.alpha * distill_loss - q_pi.mean()
    return loss, {'loss': loss.detach()}


def make(network, seed=0, onestep_prediction='u', noise_prior='chunk_cov'):
    """A small state FQL agent with the Q term on (by default get_config()'s prior and one-step form)."""
    shape_meta = SHAPE_METAS['state']
    config = tiny_config('fql', network, 'state')
    config.onestep_prediction, config.noise_prior = onestep_prediction, noise_prior
    return AGENTS['fql'].create(shape_meta, config, normalizer_stats(shape_meta), seed=seed,
                                action_chunks=action_chunks(np.random.default_rng(seed)))


def grads_of(agent, loss_fn, batch):
    """(loss, gradient of every parameter, None where it gets none) of loss_fn on a prepared batch."""
    agent.model.zero_grad(set_to_none=True)
    loss, _ = loss_fn(batch)
    loss.backward()
    return loss.detach(), [None if p.grad is None else p.grad.clone() for p in agent.model.parameters()]


@pytest.mark.parametrize('network,onestep_prediction,noise_prior', [
    ('mlp', 'u', 'chunk_cov'), ('chiunet', 'u', 'chunk_cov'),
    ('mlp', 'x', 'standard'), ('chiunet', 'x', 'standard')])
def test_fql_loss_and_gradients_match_the_reference(network, onestep_prediction, noise_prior):
    """From the same generator state the agent's total_loss and the reference give the same loss and
    the same gradient for every parameter, for both one-step forms and both noise priors."""
    agent = make(network, onestep_prediction=onestep_prediction, noise_prior=noise_prior)
    assert (agent.noise_factor is None) == (noise_prior == 'standard')
    batch = agent.prepare_batch(raw_batch(SHAPE_METAS['state'], np.random.default_rng(0)))
    state = agent.rng.get_state()
    loss, grads = grads_of(agent, agent.total_loss, batch)
    agent.rng.set_state(state)
    ref_loss, ref_grads = grads_of(agent, lambda b: reference_total_loss(agent, b), batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_fql_updates_match_the_reference():
    """Three updates from the same seed with the agent's loss and with the reference end with the same
    weights and target critic (up to round-off), and the weights did move."""
    agent, ref = make('mlp'), make('mlp')
    ref.total_loss = types.MethodType(reference_total_loss, ref)
    start = [p.detach().clone() for p in agent.model.parameters()]
    for step in range(3):
        batch = raw_batch(SHAPE_METAS['state'], np.random.default_rng(step))
        agent.update(batch)
        ref.update(batch)
    for p, r in zip(agent.model.parameters(), ref.model.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5)
    for p, r in zip(agent.target.parameters(), ref.target.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(p, s) for p, s in zip(agent.model.parameters(), start, strict=True))


def test_onestep_prediction_selects_the_chunk_or_the_velocity():
    """'x': the one-step chunk is the network's output; 'u': z + the output; anything else names the field."""
    agent = make('mlp', onestep_prediction='x')
    cond = torch.randn(4, int(agent.config.obs_steps), agent.model['encoder'].output_dim)
    z = torch.randn(4, int(agent.config.horizon_length), agent.action_dim)
    out = agent.model['onestep'](z, torch.zeros(4), torch.ones(4), cond)[0]
    with torch.no_grad():
        torch.testing.assert_close(agent.onestep_chunk(agent.model, cond, z), out.detach())
        agent.config.onestep_prediction = 'u'
        torch.testing.assert_close(agent.onestep_chunk(agent.model, cond, z), (z + out).detach())
    agent.config.onestep_prediction = 'v'
    with pytest.raises(ValueError, match=r"config.onestep_prediction='v'"):
        AGENTS['fql'].create(SHAPE_METAS['state'], agent.config)


def test_sample_policy_flow_acts_with_the_bc_flow():
    """sample_policy 'flow': the sampled chunk is the BC flow's clipped Euler chunk from the same noise, not
    the one-step policy's; 'onestep' (the default) is mu(o, z); anything else names the field."""
    agent = make('mlp')
    cond = torch.randn(4, int(agent.config.obs_steps), agent.model['encoder'].output_dim)
    features = FQLFeatures(cond, None)
    z = torch.randn(4, int(agent.config.horizon_length), agent.action_dim)
    with torch.no_grad():
        onestep = agent.sample_chunk(agent.model, features, z, None)
        torch.testing.assert_close(onestep, agent.onestep_policy(agent.model, features.policy, z))
        agent.config.sample_policy = 'flow'
        flow = agent.sample_chunk(agent.model, features, z, None)
        torch.testing.assert_close(flow, euler_flow(agent.model['actor'], features.policy, z,
                                                    int(agent.config.flow_steps)).clamp(-1, 1))
    assert not torch.allclose(flow, onestep)
    agent.config.sample_policy = 'bc'
    with pytest.raises(ValueError, match=r"config.sample_policy='bc'"):
        AGENTS['fql'].create(SHAPE_METAS['state'], agent.config)
