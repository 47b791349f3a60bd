"""The GPU-path levers one at a time, as train_bc.py's loop runs them (dataset sampling + update):

    python -m bench.levers [--device cpu] [--configs state,image] [--levers base,prefetch,...] [--seconds 10]

`state` is `python train_bc.py`'s default (FBC, MLP, To 2, Tp 16, batch 256, 19-D state); `image` the small
CPU image config of the README (agents/fbc_image.py with the IMPALA-style encoder, batch 16, two 84x84
cameras). Data: a synthetic robomimic file (envs/synthetic.py). Each lever is measured alone on top of `base`
(no prefetch thread, eager, plain AdamW, default layout, fp32): `prefetch` (utils/prefetch.py, depth 1),
`fused` (fused_adamw=True), `channels_last` (image only), `compile` (the first steps, which compile, are
not timed), `bf16` (CUDA only). One JSON line per (config, lever): steps/s after `--warmup` steps.
"""

import argparse
import json
import os
import tempfile
import time

import torch

LEVERS = {'base': {}, 'prefetch': {}, 'fused': {'fused_adamw': True},
          'channels_last': {'channels_last': True}, 'compile': {'compile': True}, 'bf16': {'use_bf16': True}}


def make_data(folder, kind):
    """A synthetic file (120 demos x 100 steps state; 20 x 100 with two 84x84 cameras) -> train Dataset."""
    from envs.robomimic_utils import load_datasets
    from envs.synthetic import write_robomimic_file

    cams = () if kind == 'state' else ('agentview', 'robot0_eye_in_hand')
    demos = 120 if kind == 'state' else 20
    path = write_robomimic_file(os.path.join(folder, f'{kind}.hdf5'), lengths=[100] * demos, cameras=cams,
                                next_obs=False)
    train, _ = load_datasets(path, 'state' if kind == 'state' else 'image', seed=0)
    return train


def make_agent(kind, meta, stats, device, fields):
    """FBC with the config of `kind` plus the lever's fields."""
    import importlib

    from agents import AGENTS

    config = AGENTS['fbc'].get_config() if kind == 'state' else \
        importlib.import_module('agents.fbc_image').get_config()
    if kind == 'image':
        config.encoder, config.batch_size = 'impala', 16
    config.obs_type = kind
    config.update(fields)
    return AGENTS['fbc'].create(meta, config, normalizer_stats=stats, seed=0, device=device)


def measure(kind, lever, dataset, device, seconds, warmup):
    """steps/s of sample + update for one lever."""
    from utils.prefetch import BatchPrefetcher

    agent = make_agent(kind, dataset.shape_meta, dataset.normalizer_stats(), device, LEVERS[lever])
    c = agent.config

    def sample():
        return dataset.sample_sequence(int(c.batch_size), int(c.horizon_length), obs_steps=int(c.obs_steps))

    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    with BatchPrefetcher(sample, dataset, depth=1 if lever == 'prefetch' else 0,
                         pin_memory=device.type == 'cuda') as batches:
        start = time.perf_counter()
        for _ in range(warmup):
            agent.update(batches.next())
        sync()
        warm_s = time.perf_counter() - start
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            agent.update(batches.next())
            n += 1
        sync()
        rate = n / (time.perf_counter() - start)
    return {'config': kind, 'lever': lever, 'batch': int(c.batch_size), 'device': device.type,
            'threads': torch.get_num_threads(), 'steps_per_s': round(rate, 2), 'steps': n,
            'warmup_steps': warmup, 'warmup_s': round(warm_s, 1)}


def main(argv=None):
    """Print one JSON line per (config, lever)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--configs', default='state,image')
    parser.add_argument('--levers', default='base,prefetch,fused,channels_last,compile,bf16')
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--warmup', type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.configs.split(','):
            dataset = make_data(tmp, kind)
            for lever in args.levers.split(','):
                if lever not in LEVERS:
                    parser.error(f'--levers: unknown {lever!r}; choose from {list(LEVERS)}')
                no_backbone = lever == 'channels_last' and kind == 'state'
                if no_backbone or (lever == 'bf16' and device.type != 'cuda'):
                    continue  # no image backbone / autocast is CUDA-only (utils.training.autocast)
                rows.append(measure(kind, lever, dataset, device, args.seconds, args.warmup))
                print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == '__main__':
    main()
