"""Test hook: record every `agent.update` of a run, and replay the records in another process.

    ACFQL_RECORD_UPDATES=<folder> torchrun --nproc_per_node=2 train_bc.py ...

With the variable set, train_bc.py calls `record_updates`: each rank writes `<folder>/rank<r>_init.pt` (the
agent's state before training) and `<folder>/rank<r>_step<k>.pt` per step: the raw batch, every draw from
the agent's noise generator `agent.rng` (captured with a torch function mode, so the agents stay untouched),
the returned info and the state after the step. `replay_update` feeds the ranks' batches, concatenated,
and their draws to one agent: with averaged gradients it takes the same step as the ranks.
It slows every step and writes a file per step: a test hook, not a logging feature.
"""

import copy
import os

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

ENV_VAR = 'ACFQL_RECORD_UPDATES'


def agent_state(agent):
    """A copy of the agent's trainable state: trainer (weights, optimizer, scheduler, EMA, step) and
    `extra_state` (state dicts share the live tensors; this does not)."""
    return copy.deepcopy({'trainer': agent.trainer.state_dict(), 'extra_state': agent.extra_state()})


class NoiseRecorder(TorchFunctionMode):
    """Inside the block, keep a copy of every tensor drawn from `generator` (torch.rand, randn, ...)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.draws = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if kwargs.get('generator') is self.generator:
            self.draws.append(out.detach().clone())
        return out


class NoiseReplay(TorchFunctionMode):
    """Inside the block, the i-th draw from `generator` returns the ranks' i-th draws concatenated.

    `draws_per_rank`: one list of recorded draws per rank, each of per-rank batch size. The concatenation axis
    is the one axis along which the requested shape is the sum of the ranks' shapes; none or several is an
    error, as is a draw count or shape that does not match the record.
    """

    def __init__(self, generator, draws_per_rank):
        super().__init__()
        self.generator = generator
        self.draws_per_rank = draws_per_rank
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if kwargs.get('generator') is not self.generator:
            return out
        i, self.count = self.count, self.count + 1
        if any(i >= len(draws) for draws in self.draws_per_rank):
            raise RuntimeError(f'replay: draw {i} ({func.__name__}) was not recorded on every rank')
        parts = [draws[i] for draws in self.draws_per_rank]
        axes = [d for d in range(out.dim())
                if out.shape[d] == sum(p.shape[d] for p in parts)
                and all(p.shape[:d] + p.shape[d + 1:] == out.shape[:d] + out.shape[d + 1:] for p in parts)]
        if len(axes) != 1:
            raise RuntimeError(f'replay: draw {i} ({func.__name__}) of shape {tuple(out.shape)} is not the '
                               f'concatenation of the recorded shapes {[tuple(p.shape) for p in parts]} '
                               'along exactly one axis')
        with torch.no_grad():
            return out.copy_(torch.cat(parts, dim=axes[0]).to(out.device, out.dtype))

    def check_done(self):
        """Raise unless every recorded draw was replayed."""
        left = [len(d) - self.count for d in self.draws_per_rank]
        if any(left):
            raise RuntimeError(f'replay: {left} recorded draws per rank were not used')


def record_updates(agent, folder, rank):
    """Wrap `agent.update` (this instance only) to write the records described in the module docstring."""
    os.makedirs(folder, exist_ok=True)
    torch.save(agent_state(agent), os.path.join(folder, f'rank{rank}_init.pt'))
    update = agent.update

    def recorded_update(batch):
        with NoiseRecorder(agent.rng) as recorder:
            info = update(batch)
        record = {'batch': batch, 'noise': recorder.draws, 'info': info, 'state': agent_state(agent)}
        torch.save(record, os.path.join(folder, f'rank{rank}_step{agent.trainer.step:06d}.pt'))
        return info

    agent.update = recorded_update


def load_record(folder, rank, step=None):
    """The record of `rank` after `step` (None: the state before training)."""
    name = f'rank{rank}_init.pt' if step is None else f'rank{rank}_step{step:06d}.pt'
    return torch.load(os.path.join(folder, name), map_location='cpu', weights_only=False)


def concat_batches(batches):
    """One raw batch from the ranks' batches: every array concatenated along the batch axis (0)."""
    first = batches[0]
    if isinstance(first, dict):
        return {k: concat_batches([b[k] for b in batches]) for k in first}
    return np.concatenate([np.asarray(b) for b in batches], axis=0)


def replay_update(agent, records):
    """`agent.update` on the ranks' records of one step: their batches concatenated, their noise replayed."""
    with NoiseReplay(agent.rng, [r['noise'] for r in records]) as replay:
        info = agent.update(concat_batches([r['batch'] for r in records]))
    replay.check_done()
    return info
