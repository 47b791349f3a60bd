"""Small torch helpers: device picking and numpy -> torch conversion that keeps images uint8."""

import numpy as np
import torch

__all__ = ['cuda_memory_stats', 'host_floats', 'pick_device', 'to_torch']


def pick_device(device='auto'):
    """Return a torch.device; 'auto' picks CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a torch device; "
                         "expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from e


def to_torch(x, device):
    """Convert numpy arrays (nested in dicts/lists) to tensors on `device`.

    uint8 arrays (images) stay uint8; other floating arrays become float32; integer and bool arrays keep
    their dtype. Tensors are moved to `device` with the same dtype rules. The copy is asynchronous
    (non_blocking) only from pinned CPU tensors (utils/prefetch.py pins its batches on CUDA); from numpy or
    pageable memory it is a plain synchronous copy.
    """
    if isinstance(x, dict):
        return {k: to_torch(v, device) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(to_torch(v, device) for v in x)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif np.isscalar(x):
        x = torch.as_tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'to_torch: cannot convert object of type {type(x).__name__}')
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    return x.to(device, non_blocking=True)


def cuda_memory_stats(device):
    """{'gpu_mem_max_gb': peak memory torch allocated on a CUDA `device` so far}; {} on other devices."""
    device = torch.device(device)
    if device.type != 'cuda':
        return {}
    return {'gpu_mem_max_gb': round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}


def host_floats(info):
    """Plain floats from a dict of numbers and 0-d tensors, in its order, with one device-to-host copy per
    device for all the tensors (a float() each would wait for the device once per entry)."""
    out = {k: float(v) for k, v in info.items() if not torch.is_tensor(v)}
    by_device = {}
    for k, v in info.items():
        if torch.is_tensor(v):
            if v.numel() != 1:
                raise ValueError(f'info[{k!r}] has shape {tuple(v.shape)}; expected a scalar')
            by_device.setdefault(v.device, []).append(k)
    for keys in by_device.values():
        values = torch.stack([info[k].detach().reshape(()).float() for k in keys]).tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in info}
