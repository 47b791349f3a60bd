"""Our ChiUNet training step at Diffusion Policy's shapes, optionally side by side with its ConditionalUnet1D.

    python -m bench.unet_reference [--dp_path ~/src/diffusion_policy] [--threads 1] [--rounds 10] [--compile]
                                   [--device cuda]

One step = forward, MSE against a random target, backward, AdamW step; timed in process CPU time on the CPU
(so other jobs on the machine count less) and in wall time after a device synchronize on CUDA, the two
networks alternated in one process, median over `--rounds`. The
shapes are Diffusion Policy's with our defaults: A 7, Tp 16, To 2, channels (128, 256, 256), kernel 5,
GroupNorm 8, FiLM scale and bias, a 256-wide time embedding; a state-sized condition (23-D per step, B 256)
and an image-sized one (1033-D per step: two 512-D ResNet features and 9 low-dim dims, B 64). FLOPs of
forward + backward come from torch's FlopCounterMode.

The reference is never part of this repository: `--dp_path` names a checkout of
real-stanford/diffusion_policy (it needs `einops`), imported from there at run time.
"""

import argparse
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from utils.networks.chiunet import ChiUNet

A, TP, TO = 7, 16, 2
CHANNELS = (128, 256, 256)
SHAPES = [('state', 256, 23), ('image-sized cond', 64, 1033)]  # (label, batch, cond dim per step)


def build(kind, cond_dim, dp_path=None):
    """(network, forward(x, t, cond) -> (B, Tp, A)) of ours ('ours') or Diffusion Policy's ('dp')."""
    if kind == 'ours':
        net = ChiUNet(A, TP, TO, cond_dim, emb_dim=256, model_dim=CHANNELS[0],
                      dim_mult=tuple(c // CHANNELS[0] for c in CHANNELS), kernel_size=5, n_groups=8)
        return net, lambda x, t, c: net(x, t, t, c)[0]
    sys.path.insert(0, dp_path)
    from diffusion_policy.model.diffusion.conditional_unet1d import ConditionalUnet1D

    net = ConditionalUnet1D(A, global_cond_dim=TO * cond_dim, diffusion_step_embed_dim=256,
                            down_dims=list(CHANNELS), kernel_size=5, n_groups=8, cond_predict_scale=True)
    return net, lambda x, t, c: net(x, t * 1000, global_cond=c.reshape(len(c), -1))


def make_step(net, forward, batch, cond_dim, device='cpu'):
    """A closure running one training step on fixed random inputs."""
    net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, c = torch.randn(batch, TP, A, device=device), torch.randn(batch, TO, cond_dim, device=device)
    t, y = torch.rand(batch, device=device), torch.randn(batch, TP, A, device=device)

    def step():
        loss = (forward(x, t, c) - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, (x, t, c)


def flops(forward, inputs):
    """Forward + backward FLOPs of one step."""
    with FlopCounterMode(display=False) as counter:
        forward(*inputs).square().mean().backward()
    return counter.get_total_flops()


def main(argv=None):
    """Print one line per shape: ms per step, parameters, GFLOPs, and the ratio ours / reference."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dp_path', default=None, help='a diffusion_policy checkout (kept out of this repo)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--compile', action='store_true', help='torch.compile both networks (Module.compile)')
    parser.add_argument('--device', default='cpu', help="'cpu' (process time) or 'cuda' (synchronized wall time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        parser.error(f'--device={args.device}: torch sees no CUDA device')
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    kinds = ['ours'] + (['dp'] if args.dp_path else [])
    for label, batch, cond_dim in SHAPES:
        steps, row = {}, {}
        for kind in kinds:
            net, forward = build(kind, cond_dim, args.dp_path)
            step, inputs = make_step(net, forward, batch, cond_dim, args.device)
            row[kind] = {'params_m': sum(p.numel() for p in net.parameters()) / 1e6,
                         'gflop': flops(forward, inputs) / 1e9}
            if args.compile:
                net.compile()
            start = time.perf_counter()
            for _ in range(3):  # warm-up (and compilation)
                step()
            sync()
            row[kind]['warmup_s'] = time.perf_counter() - start
            steps[kind] = step
        times = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                sync()
                start = clock()
                steps[kind]()
                sync()
                times[kind].append(clock() - start)
        parts = []
        for kind in kinds:
            ms = sorted(times[kind])[len(times[kind]) // 2] * 1000
            row[kind]['ms'] = ms
            r = row[kind]
            parts.append(f"{kind} {ms:.1f} ms, {r['params_m']:.2f}M params, {r['gflop']:.2f} GFLOP "
                         f"({r['gflop'] / ms * 1000:.0f} GFLOP/s), warm-up {r['warmup_s']:.1f} s")
        ratio = (f", ours / dp {row['ours']['ms'] / row['dp']['ms']:.3f} time, "
                 f"{row['ours']['gflop'] / row['dp']['gflop']:.4f} FLOPs") if 'dp' in row else ''
        mode = 'compiled' if args.compile else 'eager'
        where = args.device if cuda else f'{args.threads} thread(s)'
        head = f'{label}, B={batch}, {mode}, {where}: '
        print(head + '; '.join(parts) + ratio, flush=True)


if __name__ == '__main__':
    main()
