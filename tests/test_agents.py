"""Contract tests of every agent: every agent x network x observation type runs, and checkpoints resume."""

import os

import numpy as np
import pytest
import torch

from agents import AGENTS
from tests.agent_contract import (
    SHAPE_METAS,
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
