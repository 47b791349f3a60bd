"""Contract tests of every agent: every agent x network x observation type runs, and checkpoints resume."""

import os

import numpy as np
import pytest
import torch

import agents.fql as fql_module
from agents import AGENTS
from tests.agent_contract import (
    SHAPE_METAS,
    action_chunks,
    check_save_load,
    check_update_and_sample,
    normalizer_stats,
    raw_batch,
    tiny_config,
)
from utils.network_factory import NETWORKS


@pytest.mark.parametrize('obs_type', ['state', 'image'])
@pytest.mark.parametrize('network', sorted(NETWORKS))
@pytest.mark.parametrize('name', sorted(AGENTS))
def test_every_combination_runs(name, network, obs_type):
    """One update: finite losses, encoders change; sampling: shape, units, determinism under a seed."""
    check_update_and_sample(name, network, obs_type)


@pytest.mark.parametrize('name', sorted(AGENTS))
def test_save_load_resumes_exactly(name, tmp_path):
    """After save -> load, sampling with a seed is identical and the next update gives the same loss."""
    check_save_load(name, tmp_path)


@pytest.mark.parametrize('name', sorted(AGENTS))
def test_registry_names_agree(name):
    """The registry key is the class's name and its config's agent_name; the class finds its own file."""
    cls = AGENTS[name]
    assert cls.name == name and cls.get_config().agent_name == name
    assert os.path.isfile(cls.config_file()) and cls.config_file().endswith('.py')


def test_obs_type_that_contradicts_shape_meta_is_an_error():
    """config.obs_type None follows shape_meta; a value that contradicts it names the field and the keys."""
    config = tiny_config('fbc', 'mlp', 'state')
    config.obs_type = None
    AGENTS['fbc'].create(SHAPE_METAS['state'], config)
    config.obs_type = 'image'
    with pytest.raises(ValueError, match=r"config.obs_type='image'.*'state'"):
        AGENTS['fbc'].create(SHAPE_METAS['state'], config)


@pytest.mark.parametrize('name', sorted(AGENTS))
def test_validation_draws_only_from_its_own_generator(name):
    """Validation losses: eval mode, noise from its own generator, no draw from the agent or global RNGs."""
    shape_meta = SHAPE_METAS['image']
    agent = AGENTS[name].create(shape_meta, tiny_config(name, 'mlp', 'image'),
                                normalizer_stats=normalizer_stats(shape_meta), seed=0)
    batch = raw_batch(shape_meta, np.random.default_rng(0))
    global_rng, agent_rng = torch.get_rng_state(), agent.rng.get_state()
    first = agent.validation_losses(batch, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), global_rng) and torch.equal(agent.rng.get_state(), agent_rng)
    assert agent.model.training, 'validation must restore the training mode'
    again = agent.validation_losses(batch, torch.Generator().manual_seed(5))
    assert {k: float(v) for k, v in first.items()} == {k: float(v) for k, v in again.items()}


def test_fbc_image_preset_states_only_what_differs():
    """agents/fbc_image.py sets only fields whose value differs from FBC's get_config()."""
    import ast
    from pathlib import Path

    from agents.fbc import get_config as fbc_config
    from agents.fbc_image import get_config as image_config

    source = (Path(__file__).resolve().parent.parent / 'agents' / 'fbc_image.py').read_text()
    assigns = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign)]
    targets = [t for n in assigns for t in n.targets if isinstance(t, ast.Attribute)]
    fields = [t.attr for t in targets if getattr(t.value, 'id', '') == 'config']
    base, preset = fbc_config().to_dict(), image_config().to_dict()
    same = [f for f in fields if base[f] == preset[f]]
    assert fields and not same, f'fbc_image.py restates FBC defaults: {same}'


def gaussian_chunks(rng, n, cov, stats):
    """n raw chunks (n, 4, 2) whose normalized values are N(0, cov) (cov 8 x 8): unnormalized by hand."""
    normalized = rng.multivariate_normal(np.zeros(8), cov, n).reshape(n, 4, 2)
    lo, hi = stats['actions']['min'], stats['actions']['max']
    return (normalized * (hi - lo) / 2 + (hi + lo) / 2).astype(np.float32)


def test_chunk_noise_prior_has_the_covariance_of_the_normalized_chunks():
    """noise_prior 'chunk_cov': F is the symmetric square root of the normalized chunks' covariance, and
    the noise it draws has that covariance; 'standard' draws exactly torch.randn's numbers."""
    shape_meta = SHAPE_METAS['state']
    stats = normalizer_stats(shape_meta)
    k = np.arange(4)
    smooth = np.exp(-(k[:, None] - k[None]) ** 2 / 2.0)  # correlated along the chunk
    cov = np.kron(smooth, np.array([[0.09, 0.02], [0.02, 0.04]]))  # (Tp*A, Tp*A), position-major
    chunks = gaussian_chunks(np.random.default_rng(0), 20000, cov, stats)
    config = tiny_config('mfbc', 'mlp', 'state')
    assert config.noise_prior == 'chunk_cov'
    agent = AGENTS['mfbc'].create(shape_meta, config, normalizer_stats=stats, action_chunks=chunks)
    f = agent.noise_factor.double()
    torch.testing.assert_close(f, f.T)
    normalized = agent.normalizer.normalize('actions', torch.from_numpy(chunks)).flatten(1)
    empirical = torch.cov(normalized.T.double())
    torch.testing.assert_close(f @ f, empirical, atol=1e-6, rtol=1e-5)
    z = agent.noise((200_000, 4, 2), torch.Generator().manual_seed(1))
    assert z.shape == (200_000, 4, 2)
    np.testing.assert_allclose(torch.cov(z.flatten(1).T.double()).numpy(), cov, atol=0.01)

    config.noise_prior = 'standard'
    agent = AGENTS['mfbc'].create(shape_meta, config, normalizer_stats=stats, action_chunks=chunks)
    assert agent.noise_factor is None
    torch.testing.assert_close(agent.noise((5, 4, 2), torch.Generator().manual_seed(2)),
                               torch.randn((5, 4, 2), generator=torch.Generator().manual_seed(2)))


def test_chunk_noise_prior_errors_and_fallback():
    """Chunks of the wrong shape are an error naming the expected one; no chunks warn and give N(0, I)."""
    shape_meta = SHAPE_METAS['state']
    config = tiny_config('imfbc', 'mlp', 'state')
    bad = np.zeros((10, 5, 2), np.float32)  # Tp 5, the config's is 4
    expected = r'action_chunks has shape \(10, 5, 2\), expected \(N >= 2, \*\(4, 2\)\)'
    with pytest.raises(ValueError, match=expected):
        AGENTS['imfbc'].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta),
                               action_chunks=bad)
    with pytest.warns(UserWarning, match="noise_prior='chunk_cov'.*no action_chunks"):
        agent = AGENTS['imfbc'].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta))
    assert agent.noise_factor is None
    config.noise_prior = 'gaussian'
    with pytest.raises(ValueError, match=r"config.noise_prior='gaussian'"):
        AGENTS['imfbc'].create(shape_meta, config)


def test_checkpoint_without_noise_prior_loads_with_standard_noise(tmp_path):
    """A checkpoint written before noise_prior and sample_temperature existed (no config fields, no factor)
    samples N(0, I) noise at temperature 1."""
    from utils.training import load_checkpoint, save_checkpoint
    shape_meta = SHAPE_METAS['state']
    agent = AGENTS['mfbc'].create(shape_meta, tiny_config('mfbc', 'mlp', 'state'),
                                  normalizer_stats=normalizer_stats(shape_meta),
                                  action_chunks=np.random.default_rng(0).uniform(-2, 1, (50, 4, 2)))
    agent.save(tmp_path / 'new.pt')
    old = load_checkpoint(tmp_path / 'new.pt')
    del old['noise_factor'], old['config']['noise_prior'], old['config']['sample_temperature']
    save_checkpoint(tmp_path / 'old.pt', old)
    loaded = AGENTS['mfbc'].load(tmp_path / 'old.pt')
    assert loaded.config.noise_prior == 'standard' and loaded.noise_factor is None
    assert loaded.config.sample_temperature == 1.0
    assert AGENTS['mfbc'].load(tmp_path / 'new.pt').noise_factor is not None


@pytest.mark.parametrize('name, extra', [('fbc', {}), ('mfbc', {}), ('imfbc', {}), ('fql', {}),
                                         ('fql', {'sample_policy': 'flow'})])
def test_sample_temperature_scales_the_sampling_noise(name, extra, monkeypatch):
    """sample_temperature tau: the flow starts from tau times the prior's noise of the same seed; tau = 0
    makes sampling deterministic (every seed); a negative tau is refused naming it."""
    shape_meta = SHAPE_METAS['state']
    rng = np.random.default_rng(0)
    config = tiny_config(name, 'mlp', 'state')
    config.update(extra)
    agent = AGENTS[name].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta), seed=0,
                                action_chunks=action_chunks(rng))
    assert 'sample_temperature' in AGENTS[name].eval_fields and config.sample_temperature == 1.0
    obs = raw_batch(shape_meta, rng)['observations']
    default = agent.sample_actions(obs, seed=3)
    agent.config.sample_temperature = 0.0
    zero = agent.sample_actions(obs, seed=3)
    assert torch.equal(zero, agent.sample_actions(obs, seed=4)), 'tau = 0: the same chunk for every seed'
    assert not torch.equal(zero, default)
    starts = []  # the z handed to sample_chunk

    def record(self, model, features, z, generator):
        starts.append(z)
        return torch.zeros_like(z)

    monkeypatch.setattr(type(agent), 'sample_chunk', record)
    for tau in (0.5, 1.0):
        agent.config.sample_temperature = tau
        agent.sample_actions(obs, seed=3)
    torch.testing.assert_close(starts[0], 0.5 * starts[1])
    config.sample_temperature = -0.1
    with pytest.raises(ValueError, match=r'config.sample_temperature=-0.1'):
        AGENTS[name].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta),
                            action_chunks=action_chunks(rng))


def test_best_of_n_draws_its_candidates_at_the_sampling_temperature_and_trains_from_the_prior(monkeypatch):
    """ACFQL best-of-N: the N candidate chunks start from sample_temperature times the prior's noise when
    sampling, from the prior itself in the critic's target (training does not depend on how the trained
    agent samples), and best_of_n > 1 at temperature 0 (N equal chunks) is refused naming both fields."""
    shape_meta = SHAPE_METAS['state']
    rng = np.random.default_rng(0)
    config = tiny_config('fql', 'mlp', 'state')
    config.best_of_n = 3
    agent = AGENTS['fql'].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta), seed=0,
                                 action_chunks=action_chunks(rng))
    starts = []  # the candidates' noise handed to the BC flow
    monkeypatch.setattr(fql_module, 'euler_flow', lambda net, cond, z, steps: starts.append(z) or z)
    obs = raw_batch(shape_meta, rng)['observations']
    for tau in (0.5, 1.0):
        agent.config.sample_temperature = tau
        agent.sample_actions(obs, seed=3)
    assert len(starts[0]) == 3 * len(next(iter(obs.values())))  # N candidates per observation
    torch.testing.assert_close(starts[0], 0.5 * starts[1])
    batch = agent.prepare_batch(raw_batch(shape_meta, rng))
    losses = []
    for tau in (0.25, 1.0):
        agent.config.sample_temperature = tau
        agent.rng.manual_seed(7)
        losses.append(agent.critic_loss(batch)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    torch.testing.assert_close(starts[2], starts[3])
    config.sample_temperature = 0.0
    with pytest.raises(ValueError, match=r'config.best_of_n=3.*sample_temperature=0.0'):
        AGENTS['fql'].create(shape_meta, config, normalizer_stats=normalizer_stats(shape_meta),
                             action_chunks=action_chunks(rng))
