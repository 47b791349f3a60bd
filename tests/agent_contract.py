"""The agent contract, as checks any test can run on a registered agent name (not a test module itself).

Shared by tests/test_agents.py (every registered agent) and tests/test_registries.py (a throwaway agent and
network registered at runtime).
"""

import numpy as np
import pytest
import torch

from agents import AGENTS
from tests.helpers import shape_meta, shrink
from utils.shape_meta import low_dim_keys, random_obs
from utils.training import load_checkpoint, save_checkpoint

SHAPE_METAS = {'state': shape_meta(action_dim=2), 'image': shape_meta((20, 20), cams=('agentview_image',),
                                                                   action_dim=2)}
ENCODERS = {'state': 'mlp', 'image': 'impala'}  # encoders with parameters, small enough for CPU tests
TO, TP, B = 2, 4, 3


def normalizer_stats(shape_meta):
    """Dataset-like statistics for the action and the low-dim keys (one near-constant dimension)."""
    stats = {'actions': {'min': np.array([-2.0, 0.0]), 'max': np.array([2.0, 1.0])}}
    for key in low_dim_keys(shape_meta):
        lo = -np.ones(shape_meta['obs'][key]['shape'])
        hi = np.ones(shape_meta['obs'][key]['shape'])
        hi[0] = lo[0]  # near-constant dimension: only centred
        stats[key] = {'min': lo, 'max': hi}
    return stats


def tiny_config(name, network, obs_type):
    """The agent's get_config() shrunk to a few thousand parameters."""
    config = AGENTS[name].get_config()
    config.obs_type, config.network_type, config.encoder = obs_type, network, ENCODERS[obs_type]
    config.obs_steps, config.horizon_length, config.action_steps = TO, TP, 2
    config.lr, config.warmup_steps = 1e-3, 0
    shrink(config)
    config.crop_shape = (16, 16)
    config.flow_steps = 3
    return config


def raw_batch(shape_meta, rng):
    """A batch laid out like Dataset.sample_sequence's (raw units, uint8 images)."""
    return {'observations': random_obs(shape_meta, B, TO, rng),
            'next_observations': random_obs(shape_meta, B, TO, rng),
            'actions': rng.uniform([-2, 0], [2, 1], (B, TP, 2)).astype(np.float32),
            'valid': np.ones((B, TP), np.float32), 'rewards': -np.ones(B, np.float32),
            'masks': np.ones(B, np.float32)}


def action_chunks(rng, n=64):
    """Raw chunks (n, Tp, 2) as a dataset gives them: what a 'chunk_cov' noise prior (MFBC / IMFBC) is fitted
    on; agents with the standard prior ignore them."""
    return rng.uniform([-2, 0], [2, 1], (n, TP, 2)).astype(np.float32)


def encoder_params(agent):
    """Copies of every encoder parameter (policy encoder and, for FQL, the critic's own)."""
    return {f'{name}.{k}': p.detach().clone() for name, module in agent.model.items() if 'encoder' in name
            for k, p in module.named_parameters()}


def check_update_and_sample(name, network, obs_type):
    """One update: finite losses, encoders change; sampling: shape, units, determinism under a seed."""
    shape_meta = SHAPE_METAS[obs_type]
    rng = np.random.default_rng(0)
    agent = AGENTS[name].create(shape_meta, tiny_config(name, network, obs_type),
                                normalizer_stats=normalizer_stats(shape_meta), seed=0,
                                action_chunks=action_chunks(rng))
    batch = raw_batch(shape_meta, rng)
    before = encoder_params(agent)
    assert before, 'the tiny config must give the encoders parameters'

    info = agent.update(batch)
    assert any(k.startswith('actor/') for k in info), info
    assert all(np.isfinite(v) for v in info.values()), info
    after = encoder_params(agent)
    for key in before:
        if not torch.equal(before[key], after[key]):
            break
    else:
        pytest.fail('no encoder parameter changed after one update')
    if 'critic_encoder' in agent.model:  # FQL's own critic encoder trains too
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith('critic_encoder.'))

    obs = batch['observations']
    a1 = agent.sample_actions(obs, seed=7)
    a2 = agent.sample_actions(obs, seed=7)
    assert a1.shape == (B, TP, 2) and torch.isfinite(a1).all()
    assert torch.equal(a1, a2), 'eval-mode sampling must be deterministic under a seed'
    assert not torch.equal(a1, agent.sample_actions(obs, seed=8)), 'the seed must drive the noise'
    # clipped to [-1, 1] in normalized units -> inside the dataset's action bounds in raw units
    assert (a1[..., 0].abs() <= 2 + 1e-5).all()
    assert (a1[..., 1] >= -1e-6).all() and (a1[..., 1] <= 1 + 1e-6).all()
    assert agent.model.training, 'sampling must restore the training mode'


def check_save_load(name, tmp_path):
    """After save -> load, sampling with a seed is identical and the next update gives the same loss."""
    shape_meta = SHAPE_METAS['state']
    config = tiny_config(name, 'mlp', 'state')
    config.use_ema = True
    rng = np.random.default_rng(1)
    agent = AGENTS[name].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta), seed=3,
                                action_chunks=action_chunks(rng))
    assert (agent.noise_factor is None) == (config.noise_prior == 'standard')
    for _ in range(3):
        agent.update(raw_batch(shape_meta, rng))
    path = tmp_path / 'agent.pt'
    agent.save(path, extra={'dataset_rng': 'state'})
    with pytest.raises(FileExistsError):
        agent.save(path)  # a checkpoint is never overwritten silently
    global_rng = torch.get_rng_state()
    loaded = AGENTS[name].load(path)
    if agent.noise_factor is not None:
        assert torch.equal(loaded.noise_factor, agent.noise_factor), 'the fitted noise prior is saved'
    assert torch.equal(torch.get_rng_state(), global_rng), 'the global RNG is the run\'s, not the agent\'s'
    assert loaded.extra == {'dataset_rng': 'state'} and loaded.trainer.step == 3
    obs = raw_batch(shape_meta, rng)['observations']
    assert torch.equal(agent.sample_actions(obs, seed=11), loaded.sample_actions(obs, seed=11))
    batch = raw_batch(shape_meta, rng)
    info_a, info_b = agent.update(batch), loaded.update(batch)
    assert info_a == info_b
    for p, q in zip(agent.model.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(p, q)
    old = load_checkpoint(path)  # a checkpoint written when the agent also saved the global RNG
    old['rng']['global'] = {'torch': torch.get_rng_state(), 'cuda': [], 'python': None}
    save_checkpoint(tmp_path / 'old.pt', old)
    assert torch.equal(AGENTS[name].load(tmp_path / 'old.pt').sample_actions(obs, seed=11),
                       AGENTS[name].load(path).sample_actions(obs, seed=11))
    other = next(n for n in AGENTS if n != name)
    with pytest.raises(ValueError, match=name):
        AGENTS[other].load(path)
