"""The tests' one hand-written shape_meta, one set of tiny sizes, random observations, and the helpers of the
end-to-end train_bc.py tests (not a test module)."""

import csv
import glob
import os
import signal
import subprocess
import sys
import time

import torch

from utils.shape_meta import rgb_keys


def shape_meta(image_hw=None, cams=('agentview_image', 'robot0_eye_in_hand_image'), action_dim=7):
    """Hand-written shape_meta in the ARCHITECTURE.md form; image_hw=None gives a state-only one."""
    obs = {
        'object': {'shape': [10], 'type': 'low_dim'},
        'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
        'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'},
    }
    if image_hw is not None:
        del obs['object']
        for cam in cams:
            obs[cam] = {'shape': [3, *image_hw], 'type': 'rgb'}
    return {'obs': dict(sorted(obs.items())), 'action': {'shape': [action_dim]}}


def shrink(config, **overrides):
    """Set every network, encoder and critic size of a config (agent or network config) to a tiny value, then
    `overrides`; returns the config. The one set of test sizes: a few thousand parameters per module."""
    config.emb_dim = 8
    config.mlp_hidden_dims = (32, 32)
    config.model_dim, config.dim_mult, config.kernel_size = 8, (1, 2), 3
    config.d_model, config.n_heads, config.num_layers = 16, 2, 1
    config.encoder_hidden_dims = (16, 8)
    config.impala_channels, config.impala_out_dim, config.impala_res_blocks = (4, 8), 16, 1
    config.value_hidden_dims = (16, 16)
    config.update(overrides)
    return config


def make_obs(meta, batch, to, seed=0):
    """Random observations matching shape_meta: uint8 images, float low-dim."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, m in meta['obs'].items():
        if key in rgb_keys(meta):
            obs[key] = torch.randint(0, 256, (batch, to, *m['shape']), dtype=torch.uint8, generator=g)
        else:
            obs[key] = torch.randn(batch, to, *m['shape'], generator=g)
    return obs


# ---- end-to-end train_bc.py runs -------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny model, batch and horizon: these tests check the plumbing, not learning.
TINY = ['--agent.batch_size=4', '--agent.horizon_length=8', '--agent.action_steps=4', '--agent.emb_dim=16',
        '--agent.mlp_hidden_dims=(32,32)', '--agent.value_hidden_dims=(32,32)', '--agent.model_dim=16',
        '--agent.dim_mult=(1,2)', '--agent.d_model=32', '--agent.n_heads=2', '--agent.num_layers=1',
        '--agent.impala_channels=(4,8,8)', '--agent.impala_out_dim=16', '--agent.flow_steps=2',
        '--wandb_mode=disabled']


def run_cli(args, save_dir, timeout=240, check=True):
    """Run train_bc.py in a subprocess; returns the CompletedProcess."""
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}')
    return proc


def run_dirs(save_dir):
    """Run directories (those holding flags.json) under save_dir."""
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(save_dir, '*', '*', 'flags.json')))


def read_csv(path):
    """Rows of a csv file as dicts of strings."""
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def tensors_equal(a, b, where='trainer'):
    """Recursively compare two state containers; tensors with torch.equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f'{where} differs'
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            tensors_equal(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            tensors_equal(x, y, f'{where}[{i}]')
    else:
        assert a == b, f'{where}: {a!r} != {b!r}'


def assert_same_train_log(full, resumed):
    """train.csv of a resumed run: every step once, the same losses as the uninterrupted run."""
    rows_a, rows_b = read_csv(os.path.join(full, 'train.csv')), read_csv(os.path.join(resumed, 'train.csv'))
    steps_b = [r['step'] for r in rows_b]
    assert len(steps_b) == len(set(steps_b)), f'duplicated steps in train.csv: {steps_b}'
    assert [r['step'] for r in rows_a] == steps_b
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ra:
            if key != 'steps_per_s':
                assert ra[key] == rb[key], (ra['step'], key)


def hdf5_contents(path):
    """Every dataset and attribute of an hdf5 file, as {name: value}."""
    import h5py  # here: most test modules never read a file

    out = {}
    with h5py.File(path, 'r') as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
            for k, v in obj.attrs.items():
                out[f'{name}@{k}'] = v
        f.visititems(visit)
        for k, v in f['data'].attrs.items():
            out[f'data@{k}'] = v
    return out


def sigterm_once(proc, save_dir, pattern, what, timeout=180):
    """SIGTERM a running train_bc.py once a file matching save_dir/*/*/<pattern> exists; check it stopped
    with 128 + SIGTERM and printed its --resume line without a traceback. Returns (run dir, stderr)."""
    deadline = time.time() + timeout
    while not glob.glob(os.path.join(str(save_dir), '*', '*', pattern)):
        assert proc.poll() is None, f'run ended before {what}:\n{proc.stderr.read()[-3000:]}'
        assert time.time() < deadline, f'no {what} within {timeout} s'
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    (stopped,) = run_dirs(save_dir)
    assert f'--resume={stopped}' in err and 'Traceback' not in err
    return stopped, err
