"""Data-parallel training (utils/distributed.py): real `torchrun --nproc_per_node=2` runs (gloo, CPU) replayed
in one process, exact resume at equal world size, and the helpers on their own."""

import os
import subprocess
import sys
import warnings

import ml_collections
import numpy as np
import pytest
import torch

from agents import AGENTS
from envs.synthetic import write_robomimic_file
from utils import distributed, update_record
from utils.normalizer import Normalizer
from utils.training import Trainer, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny nets; lr 1e-3 without warmup so that a few steps move the weights by far more than the tolerance,
# and a clip norm below the gradient norms so that clipping acts (after the average, as one process does).
TINY = ['--agent.batch_size=4', '--agent.horizon_length=8', '--agent.action_steps=4', '--agent.emb_dim=16',
        '--agent.mlp_hidden_dims=(32,32)', '--agent.value_hidden_dims=(32,32)', '--agent.flow_steps=2',
        '--agent.lr=1e-3', '--agent.warmup_steps=0', '--agent.lr_schedule=constant',
        '--agent.grad_clip_norm=0.1', '--wandb_mode=disabled', '--eval_episodes=0']
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def state_file(tmp_path_factory):
    """A synthetic state-only robomimic file: 10 demos of 20 steps (no simulator needed)."""
    return write_robomimic_file(tmp_path_factory.mktemp('ddp') / 'state.hdf5', lengths=(20,) * 10, cameras=())


def torchrun(args, save_dir, nproc=2, env=None, check=True):
    """train_bc.py under `torchrun --standalone --nproc_per_node=nproc` (a free port each time)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}',
           os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}')
    return proc


def run_dirs(save_dir):
    """Run directories (those holding flags.json) under save_dir."""
    return sorted(str(p.parent) for p in save_dir.glob('*/*/flags.json'))


def weights(state):
    """{name: float tensor} of the weights in an `update_record.agent_state`: model, EMA, target networks."""
    parts = {'model': state['trainer']['model'], 'ema': (state['trainer']['ema'] or {}).get('module', {}),
             'extra': state['extra_state']}
    return {n: t for n, t in distributed._tensors(parts) if t.is_floating_point()}


def max_abs_diff(a, b):
    """max |a - b| over the weights of two agent states."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    return max((x - y).abs().max().item() for x, y in zip(wa.values(), wb.values(), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize('agent', ['fbc', 'mfbc', 'fql'])
def test_two_ranks_take_the_step_of_one_process_on_their_concatenated_batches(agent, state_file, tmp_path):
    """Each rank's batches and noise, concatenated and replayed in one agent (batch 2B), give the ranks'
    weights within 1e-5 at every step (MFBC's through its JVP, FQL's critic and target too)."""
    steps, record = 4, tmp_path / 'record'
    torchrun([f'--agent={AGENTS[agent].config_file()}', f'--dataset_path={state_file}',
              f'--offline_steps={steps}', '--log_interval=2', '--save_interval=0', *TINY], tmp_path / 'runs',
             env={update_record.ENV_VAR: str(record)})
    (run_dir,) = run_dirs(tmp_path / 'runs')  # rank 0 alone made it
    ckpt = load_checkpoint(os.path.join(run_dir, 'checkpoints', 'latest.pt'))
    assert ckpt['extra']['flags']['world_size'] == 2 and len(ckpt['extra']['trainer']['other_ranks']) == 1

    # One agent built as the run built it (same seed and config), with the run's normalizer.
    config = ml_collections.ConfigDict(ckpt['config'])
    with warnings.catch_warnings():  # its noise prior is set from the checkpoint below
        warnings.simplefilter('ignore')
        one = AGENTS[agent].create(ckpt['shape_meta'], config, seed=ckpt['seed'])
    one.normalizer = Normalizer.from_state_dict(ckpt['normalizer'])
    one.noise_factor = ckpt['noise_factor']  # MFBC's noise prior, fitted on the run's data
    start = update_record.agent_state(one)
    for rank in (0, 1):
        assert distributed.digest(update_record.load_record(record, rank)) == distributed.digest(start)
    clipped = 0
    for step in range(1, steps + 1):
        ranks = [update_record.load_record(record, r, step) for r in (0, 1)]
        assert not np.array_equal(ranks[0]['batch']['actions'], ranks[1]['batch']['actions'])
        assert ranks[0]['noise'] and not torch.equal(ranks[0]['noise'][0], ranks[1]['noise'][0])
        assert distributed.digest(ranks[0]['state']) == distributed.digest(ranks[1]['state'])  # bit-identical
        info = update_record.replay_update(one, ranks)
        diff = max_abs_diff(update_record.agent_state(one), ranks[0]['state'])
        print(f'{agent} step {step}: max |dw| = {diff:.1e}')
        assert diff <= TOLERANCE, f'step {step}: max |dw| = {diff:.2e}'
        norm = ranks[0]['info']['train/grad_norm']  # of the averaged gradient, before clipping
        assert info['train/grad_norm'] == pytest.approx(norm, rel=1e-4)
        clipped += norm > 0.1
    assert clipped, 'the clip norm never acted; lower it'
    # The checkpoint loads in one process as it is: no `module.` prefix, rank 0's last weights.
    loaded = update_record.agent_state(AGENTS[agent].load(os.path.join(run_dir, 'checkpoints', 'latest.pt')))
    assert not any(k.startswith('module.') for k in loaded['trainer']['model'])
    assert distributed.digest(loaded) == distributed.digest(ranks[0]['state'])
    moved = max_abs_diff(update_record.agent_state(one), start)
    assert moved > 100 * TOLERANCE, f'the weights moved only {moved:.1e}: the comparison would be empty'


@pytest.mark.slow
def test_resume_at_equal_world_size_is_exact_and_another_world_size_is_refused(state_file, tmp_path):
    args = [f'--dataset_path={state_file}', '--log_interval=2', '--save_interval=3', '--seed=5', *TINY]
    torchrun([*args, '--offline_steps=6'], tmp_path / 'full')
    torchrun([*args, '--offline_steps=3'], tmp_path / 'part')
    (full,), (part,) = run_dirs(tmp_path / 'full'), run_dirs(tmp_path / 'part')

    # One process cannot continue a two-process run: refused before any data is read.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--resume={part}',
                           '--offline_steps=6'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'over 2 process(es)' in proc.stderr and 'Traceback' not in proc.stderr

    torchrun([f'--resume={part}', '--offline_steps=6'], tmp_path / 'unused')
    a = load_checkpoint(os.path.join(full, 'checkpoints', 'latest.pt'))
    b = load_checkpoint(os.path.join(part, 'checkpoints', 'latest.pt'))
    assert b['extra']['trainer']['step'] == 6
    assert distributed.digest(a['trainer']) == distributed.digest(b['trainer'])  # weights, EMA, optimizer
    assert distributed.digest(a['rng']) == distributed.digest(b['rng'])
    ra, rb = a['extra']['trainer']['other_ranks'][0], b['extra']['trainer']['other_ranks'][0]
    assert ra['train_rng'] == rb['train_rng']  # rank 1's batch stream was restored, not re-seeded
    assert torch.equal(ra['noise_rng'], rb['noise_rng'])
    assert not os.path.exists(tmp_path / 'unused')  # the resumed run wrote into its own directory only


def test_flags_that_ddp_refuses_name_the_flag():
    distributed.check_distributed_flags(1, online_steps=100, eval_only=True)  # one process: all allowed
    distributed.check_distributed_flags(2, online_steps=0)
    with pytest.raises(ValueError, match='--online_steps=100'):
        distributed.check_distributed_flags(2, online_steps=100)
    with pytest.raises(ValueError, match='--eval_only'):
        distributed.check_distributed_flags(4, eval_only=True)


def test_rank_seeds():
    assert distributed.rank_seed(7, 0) == 7  # rank 0 keeps a one-process run's streams
    seeds = [distributed.rank_seed(7, r) for r in range(1, 5)]
    assert len(set(seeds + [7])) == 5 and seeds == [distributed.rank_seed(7, r) for r in range(1, 5)]
    assert distributed.rank_seed(8, 1) != distributed.rank_seed(7, 1)


def test_one_process_helpers_return_their_input():
    net = torch.nn.Linear(3, 2)
    net(torch.ones(4, 3)).sum().backward()
    before = [p.grad.clone() for p in net.parameters()]
    distributed.average_gradients(net.parameters())
    assert all(torch.equal(b, p.grad) for b, p in zip(before, net.parameters(), strict=True))
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.mean_scalars({'b': 2.0, 'a': 1.0}) == {'b': 2.0, 'a': 1.0}
    assert distributed.run_on_main(lambda: 5) == 5 and distributed.broadcast_object('x') == 'x'
    distributed.check_identical({'w': torch.ones(2)}, 'weights')


def test_digest_sees_one_bit():
    a = {'w': torch.zeros(3), 'b': [torch.ones(2, dtype=torch.bfloat16)]}
    b = {'w': torch.zeros(3), 'b': [torch.ones(2, dtype=torch.bfloat16)]}
    assert distributed.digest(a) == distributed.digest(b)
    b['w'][1] = -0.0  # equal as a number, one sign bit apart
    assert distributed.digest(a) != distributed.digest(b)


def test_noise_replay_concatenates_along_the_batch_axis():
    g = torch.Generator().manual_seed(0)
    parts = [[torch.full((2, 3), float(r)), torch.full((3, 5), 10.0 + r)] for r in (0, 1)]
    with update_record.NoiseReplay(g, parts) as replay:
        x = torch.randn((2, 6), generator=g)  # axis 1: 3 + 3
        y = torch.rand((6, 5), generator=g)  # axis 0: 3 + 3
        torch.randn(4)  # the global RNG: not replayed
    replay.check_done()
    assert replay.count == 2
    assert torch.equal(x, torch.cat([parts[0][0], parts[1][0]], dim=1))
    assert torch.equal(y, torch.cat([parts[0][1], parts[1][1]], dim=0))
    with pytest.raises(RuntimeError, match='exactly one axis'), update_record.NoiseReplay(g, parts):
        torch.randn((4, 6), generator=g)  # the recorded (2, 3) twice make (4, 3) or (2, 6), not (4, 6)
    with pytest.raises(RuntimeError, match='were not used'), update_record.NoiseReplay(g, parts) as replay:
        torch.randn((2, 6), generator=g)
        replay.check_done()


def test_noise_recorder_keeps_only_the_generators_draws():
    g = torch.Generator().manual_seed(0)
    with update_record.NoiseRecorder(g) as recorder:
        a = torch.randn((2, 3), generator=g)
        torch.randn(5)  # the global RNG: not recorded
        b = torch.rand(4, generator=g)
    assert len(recorder.draws) == 2
    assert torch.equal(recorder.draws[0], a) and torch.equal(recorder.draws[1], b)


def test_trainer_averages_before_clipping(monkeypatch):
    """Trainer.apply hands the gradients to average_gradients before it clips them."""
    seen = []

    def fake_average(params):
        params = list(params)
        seen.append(torch.cat([p.grad.reshape(-1) for p in params]).norm().item())
        for p in params:
            p.grad.mul_(0.5)

    monkeypatch.setattr('utils.training.average_gradients', fake_average)
    config = ml_collections.ConfigDict(dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0,
                                            lr_decay_steps=-1, lr_schedule='constant', grad_clip_norm=1e9,
                                            use_ema=False, ema_power=0.75, ema_max_decay=0.999))
    net = torch.nn.Linear(3, 2)
    info = Trainer(net, config).apply(net(torch.ones(4, 3)).pow(2).sum())
    assert len(seen) == 1 and info['train/grad_norm'] == pytest.approx(seen[0] / 2, rel=1e-6)
