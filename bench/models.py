"""Network step times: `python -m bench.models [--quick] [--device cpu]` (`python -m bench` runs it).

Training step = encoder + policy forward, a flow-matching-style MSE on the output, backward (no optimizer
step), with torch's default threads. Inference = one forward of the policy network at B=1 (and of each
image encoder at B=1) with ONE torch thread: on a loaded 2-core machine, 2 threads made a B=1
ChiTransformer forward 70x slower (1.9 s vs 26 ms), every op waiting for the second thread.
"""

import argparse
import statistics
import time

import torch

from utils.network_factory import count_parameters, get_encoder, get_network, get_network_config
from utils.shape_meta import rgb_keys

IMAGE_META = {
    'obs': {
        'agentview_image': {'shape': [3, 84, 84], 'type': 'rgb'},
        'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
        'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
        'robot0_eye_in_hand_image': {'shape': [3, 84, 84], 'type': 'rgb'},
        'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'},
    },
    'action': {'shape': [7]},
}
STATE_META = {
    'obs': {
        'object': {'shape': [10], 'type': 'low_dim'},
        'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
        'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
        'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'},
    },
    'action': {'shape': [7]},
}

# name -> (shape_meta, config overrides, batch size)
TRAIN_SETUPS = {
    'DP image: 2x resnet18 + chiunet, To=2 Tp=16':
        (IMAGE_META, dict(encoder='resnet18', network_type='chiunet', obs_steps=2, horizon_length=16), 64),
    'small CNN: 2x impala + chiunet, To=2 Tp=16':
        (IMAGE_META, dict(encoder='impala', network_type='chiunet', obs_steps=2, horizon_length=16), 64),
    'state MLP 4x512, To=1 Tp=5':
        (STATE_META, dict(encoder='identity', network_type='mlp', obs_steps=1, horizon_length=5), 256),
}


def make_config(shape_meta, **overrides):
    """Default network config for shape_meta with the given overrides."""
    config = get_network_config()
    config.shape_meta = shape_meta
    config.update(overrides)
    return config


def random_obs(shape_meta, batch, obs_steps, device):
    """Random observations: uint8 images (B, To, 3, H, W), float low-dim (B, To, D)."""
    obs, rgb = {}, rgb_keys(shape_meta)
    for key, meta in shape_meta['obs'].items():
        if key in rgb:
            shape = (batch, obs_steps, *meta['shape'])
            obs[key] = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
        else:
            obs[key] = torch.randn(batch, obs_steps, *meta['shape'], device=device)
    return obs


def _timed(fn, repeats, device):
    """Median wall time of fn() over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_train_step(shape_meta, overrides, batch, repeats, device):
    """Seconds of one forward+backward of encoder + network -> (seconds, encoder params, network params)."""
    config = make_config(shape_meta, **overrides)
    encoder = get_encoder(config).to(device).train()
    net = get_network(config, encoder.output_dim).to(device).train()
    obs = random_obs(shape_meta, batch, config.obs_steps, device)
    x = torch.randn(batch, config.horizon_length, 7, device=device)
    target = torch.randn_like(x)
    t = torch.rand(batch, device=device)

    def step():
        encoder.zero_grad(set_to_none=True)
        net.zero_grad(set_to_none=True)
        y, _ = net(x, t, t, encoder(obs))
        (y - target).square().mean().backward()

    return _timed(step, repeats, device), count_parameters(encoder), count_parameters(net)


@torch.no_grad()
def bench_forward_b1(repeats, device):
    """Seconds of one B=1 forward of each default-size network (image cond, To=2, Tp=16) and image encoder."""
    rows = []
    config = make_config(IMAGE_META, obs_steps=2, horizon_length=16)
    encoders = {}
    for name in ('resnet18', 'impala'):
        config.encoder = name
        encoders[name] = get_encoder(config).to(device).eval()
    obs = random_obs(IMAGE_META, 1, 2, device)
    for name, enc in encoders.items():
        sec = _timed(lambda e=enc: e(obs), repeats, device)
        rows.append((f'encoder {name} x2 cams', count_parameters(enc), sec))
    cond = encoders['resnet18'](obs)  # (1, 2, 1033)
    x, t = torch.randn(1, 16, 7, device=device), torch.rand(1, device=device)
    for name in ('mlp', 'chiunet', 'chitransformer'):
        config.network_type = name
        net = get_network(config, cond.shape[-1]).to(device).eval()
        sec = _timed(lambda n=net: n(x, t, t, cond), repeats, device)
        rows.append((f'network {name}', count_parameters(net), sec))
    return rows


def main(argv=None):
    """Print training-step and B=1 inference times of the default networks."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='one timed repeat instead of three')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--threads', type=int, default=0, help='torch threads, training (0: default)')
    args, _ = parser.parse_known_args(argv)
    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f'device {device}, torch threads {torch.get_num_threads()}, median of {repeats} after 1 warm-up')
    rows = []
    for name, (meta, overrides, batch) in TRAIN_SETUPS.items():
        sec, enc_params, net_params = bench_train_step(meta, overrides, batch, repeats, device)
        rows.append(('train fwd+bwd', name, batch, enc_params + net_params, sec))
        print(f'train fwd+bwd  {name:45s} B={batch:<4d} params {(enc_params + net_params) / 1e6:6.2f}M '
              f'(encoder {enc_params / 1e6:.2f}M): {sec * 1e3:9.1f} ms', flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # at B=1 the ops are tiny: extra threads only wait on each other (see docstring)
    try:
        b1_rows = bench_forward_b1(max(repeats, 5), device)
    finally:
        torch.set_num_threads(threads)
    for name, params, sec in b1_rows:
        rows.append(('forward B=1', name, 1, params, sec))
        print(f'forward B=1 (1 thread) {name:37s}        params {params / 1e6:6.2f}M: {sec * 1e3:9.1f} ms',
              flush=True)
    return rows


if __name__ == '__main__':
    main()
