"""Data-parallel training under torchrun: one process per device, gradients averaged, rank 0 writes the run.

    torchrun --nproc_per_node=N train_bc.py ...    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*

`init()` joins the process group that torchrun describes (gloo for CPU tensors, nccl for CUDA tensors) and
does nothing in a plain `python` process. Every other function works in both: with one process a collective
returns its input. The agents know nothing of this module: `utils.training.Trainer.apply` calls
`average_gradients` after `backward` and before clipping, so every rank takes the same optimizer step, the
networks are never wrapped (state dicts carry no `module.` prefix) and MeanFlow's `torch.func.jvp` runs on
the plain modules. Ranks stay bit-identical in weights, optimizer, EMA and target networks because they
start from the same seed and apply the same averaged gradients; `check_identical` verifies it.
"""

import contextlib
import datetime
import hashlib
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ['any_rank', 'all_gather_object', 'average_gradients', 'barrier', 'broadcast_object',
           'check_distributed_flags', 'check_identical', 'device_for_rank', 'init', 'is_main', 'local_rank',
           'main_first', 'mean_scalars', 'rank', 'rank_seed', 'run_on_main', 'shutdown', 'world_size']

# Collectives wait this long; rank 0's evaluations (50 episodes of an image task on CPU can take an hour)
# run while the other ranks wait in one. A rank that dies is noticed by torchrun, which stops the others.
TIMEOUT = datetime.timedelta(hours=6)
TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def launched_by_torchrun():
    """True when the environment holds torchrun's rank variables."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def init():
    """Join torchrun's process group (once); returns the world size (1 outside torchrun)."""
    if not launched_by_torchrun():
        return 1
    if not dist.is_initialized():
        backend = 'gloo'
        if torch.cuda.is_available() and dist.is_nccl_available():
            backend = 'cpu:gloo,cuda:nccl'  # collectives dispatch on the tensors' device
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return world_size()


def shutdown():
    """Leave the process group (no-op outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active():
    return dist.is_available() and dist.is_initialized()


def world_size():
    """Number of processes in the run (1 outside torchrun)."""
    return dist.get_world_size() if _active() else 1


def rank():
    """This process's rank in [0, world_size)."""
    return dist.get_rank() if _active() else 0


def local_rank():
    """This process's rank on its node (torchrun's LOCAL_RANK; 0 outside torchrun)."""
    return int(os.environ.get('LOCAL_RANK', 0))


def is_main():
    """True on rank 0, the process that writes the run directory, logs, evaluates and checkpoints."""
    return rank() == 0


def barrier():
    """Wait until every rank reaches this call."""
    if world_size() > 1:
        dist.barrier()


def rank_seed(seed, rank):
    """The seed of rank `rank`'s batch stream, noise and global RNGs: `seed` itself on rank 0 (a one-process
    run's streams), a SeedSequence-derived 32-bit seed from (seed, rank) on the others."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def device_for_rank(device):
    """The torch device of this process: `device` ('auto', 'cpu', 'cuda', 'cuda:N'); under torchrun with
    more than one process a CUDA device is cuda:LOCAL_RANK, and an explicit 'cuda:N' is a ValueError."""
    from utils.torch_utils import pick_device

    picked = pick_device(device)
    if picked.type != 'cuda' or not launched_by_torchrun():
        return picked
    if picked.index is not None and world_size() > 1:
        raise ValueError(f'device={device!r}: under torchrun each process uses cuda:LOCAL_RANK; pass '
                         "--device=cuda or auto (choose the GPUs with CUDA_VISIBLE_DEVICES)")
    return torch.device('cuda', local_rank())


def check_distributed_flags(world_size, online_steps=0, eval_only=False):
    """Refuse the flags that a run over `world_size` > 1 processes does not support (ValueError naming the
    flag): an online phase (`--online_steps`, not designed together with DDP yet) and `--eval_only`."""
    if world_size <= 1:
        return
    if online_steps:
        raise ValueError(f'--online_steps={online_steps}: the online phase does not run under torchrun '
                         f'({world_size} processes), and a resumed run cannot change --online_steps or its '
                         'process count; run offline-to-online in one process '
                         '(python train_bc.py --offline_steps=N --online_steps=M)')
    if eval_only:
        raise ValueError(f'--eval_only: evaluation runs in one process; use python train_bc.py --eval_only, '
                         f'not torchrun ({world_size} processes)')


@torch.no_grad()
def average_gradients(params):
    """Replace each `.grad` of `params` by its mean over the ranks (one all-reduce per device and dtype);
    parameters without a gradient are skipped (the same on every rank: each runs the same code)."""
    n = world_size()
    if n <= 1:
        return
    buckets = {}
    for p in params:
        if p.grad is not None:
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(n)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _flag_device():
    """The device small control tensors travel on (nccl needs CUDA tensors)."""
    backend = dist.get_backend() if _active() else 'gloo'
    return torch.device('cuda', torch.cuda.current_device()) if backend == 'nccl' else torch.device('cpu')


def any_rank(flag):
    """True on every rank when `flag` is true on at least one (every rank must call it)."""
    if world_size() <= 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_scalars(info):
    """The mean over ranks of a dict of floats (same keys on every rank); every rank gets the result."""
    if world_size() <= 1:
        return dict(info)
    keys = sorted(info)
    t = torch.tensor([float(info[k]) for k in keys], dtype=torch.float64, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    means = dict(zip(keys, (t / world_size()).tolist(), strict=True))
    return {k: means[k] for k in info}  # the caller's key order


def broadcast_object(obj, src=0):
    """Rank `src`'s picklable `obj` on every rank."""
    if world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj):
    """A list of every rank's picklable `obj`, indexed by rank, on every rank."""
    if world_size() <= 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_main(fn):
    """Call `fn()` on rank 0 while the other ranks wait; every rank returns rank 0's result. An exception on
    rank 0 is re-raised there, and the other ranks raise a RuntimeError instead of waiting forever."""
    if world_size() <= 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised below, after the other ranks are told)
            error = e
    ok, result = broadcast_object((error is None, result if error is None else None))
    if error is not None:
        raise error
    if not ok:
        raise RuntimeError(f'rank 0 failed in {getattr(fn, "__name__", fn)!r}; rank {rank()} stops too')
    return result


@contextlib.contextmanager
def main_first():
    """Inside the block, the first process of each node (LOCAL_RANK 0) runs before the node's others, e.g. to
    generate or cache a dataset that the others then read."""
    if world_size() <= 1:
        yield
        return
    if local_rank() != 0:
        barrier()
    try:
        yield
    finally:
        if local_rank() == 0:
            barrier()


def _tensors(obj, prefix=''):
    """(name, tensor) pairs of a nested dict / list / tuple, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f'{prefix}.{k}')
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f'{prefix}[{i}]')


def digest(obj):
    """A sha256 over the names, shapes, dtypes and bytes of every tensor in a nested container."""
    h = hashlib.sha256()
    for name, t in _tensors(obj):
        t = t.detach().contiguous().cpu()
        h.update(f'{name}:{tuple(t.shape)}:{t.dtype};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_identical(obj, what):
    """Raise RuntimeError unless the tensors of `obj` (e.g. weights, optimizer, EMA) are bit-identical on
    every rank; `what` names them in the message."""
    if world_size() <= 1:
        return
    digests = all_gather_object(digest(obj))
    if len(set(digests)) > 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f'{what} differ between ranks: ranks {differ} differ from rank 0 (a '
                           'nondeterministic op, or a state restored on some ranks only)')
