"""Adding an agent is one file plus one registry entry, adding a network one class plus one dict entry:
a throwaway agent and a throwaway network registered at runtime pass the agent contract."""

import pytest
import torch
from torch import nn

import agents
from agents.base import Agent, get_base_config
from tests.agent_contract import check_save_load, check_update_and_sample
from utils import network_factory


def get_config():
    """The throwaway agent's config (Agent.get_config() finds it in the class's module, this one)."""
    config = get_base_config()
    config.agent_name = 'throwaway'
    return config


class ThrowawayAgent(Agent):
    """One-step regression policy: chunk = clip(z + net(z, 0, 1, cond)), trained to hit the actions."""

    name = 'throwaway'

    def flow_loss(self, net, cond, actions):
        """|| z + net(z, 0, 1, cond) - a ||^2."""
        z = self.randn_like(actions)
        zeros, ones = z.new_zeros(z.shape[0]), z.new_ones(z.shape[0])
        loss = (z + net(z, zeros, ones, cond)[0] - actions).pow(2).mean()
        return loss, {'actor/throwaway_loss': loss.detach()}

    def sample_chunk(self, model, features, z, generator):
        """One network call from noise, clipped to [-1, 1]."""
        zeros, ones = z.new_zeros(z.shape[0]), z.new_ones(z.shape[0])
        return (z + model['actor'](z, zeros, ones, features)[0]).clamp(-1, 1)


class ThrowawayNet(nn.Module):
    """The common network signature with one linear layer: net(x, s, t, cond) -> (y, scalar)."""

    def __init__(self, action_dim, horizon, obs_steps, cond_dim, emb_dim, timestep_embedding, timestep_scale,
                 width):
        super().__init__()
        self.shape = (horizon, action_dim)
        self.layer = nn.Linear(horizon * action_dim + obs_steps * cond_dim + 2, width)
        self.out = nn.Linear(width, horizon * action_dim + 1)

    def forward(self, x, s, t, cond):
        """x (B,Tp,A), s, t (B,), cond (B,To,D) -> (y (B,Tp,A), scalar (B,1))."""
        h = torch.cat([x.flatten(1), cond.flatten(1), s[:, None], t[:, None]], dim=1)
        out = self.out(torch.relu(self.layer(h)))
        return out[:, :-1].view(-1, *self.shape), out[:, -1:]


@pytest.fixture
def registered(monkeypatch):
    """The throwaway agent and network in the registries for one test."""
    monkeypatch.setitem(agents.AGENTS, ThrowawayAgent.name, ThrowawayAgent)
    entry = (ThrowawayNet, lambda config: {'width': 16})  # class, config -> its own keyword arguments
    monkeypatch.setitem(network_factory.NETWORKS, 'throwaway_net', entry)


@pytest.mark.parametrize('obs_type', ['state', 'image'])
def test_throwaway_agent_and_network_pass_the_contract(registered, obs_type):
    """create, update, sample_actions shapes and determinism, for the new agent on the new network and for
    an existing agent on the new network."""
    check_update_and_sample('throwaway', 'throwaway_net', obs_type)
    check_update_and_sample('fbc', 'throwaway_net', obs_type)
    check_update_and_sample('throwaway', 'mlp', obs_type)


def test_throwaway_agent_saves_and_loads(registered, tmp_path):
    """Save / load round trip of the new agent (it also refuses another agent's checkpoint)."""
    check_save_load('throwaway', tmp_path)


def test_throwaway_network_is_listed_in_errors(registered):
    """An unknown network name's error lists the registered one."""
    config = get_config()
    config.network_type = 'nope'
    config.shape_meta = {'obs': {'x': {'shape': [3], 'type': 'low_dim'}}, 'action': {'shape': [2]}}
    with pytest.raises(ValueError, match='throwaway_net'):
        network_factory.get_network(config, 4)
