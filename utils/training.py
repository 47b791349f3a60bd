"""Training machinery shared by every agent: AdamW, LR schedule, grad clipping, EMA, autocast, checkpoints."""

import contextlib
import copy
import math
import os
import random

import torch

from utils.distributed import average_gradients

__all__ = ['EMA', 'Trainer', 'autocast', 'eval_mode', 'load_checkpoint', 'lr_lambda', 'polyak_update',
           'get_rng_state', 'save_checkpoint', 'set_rng_state', 'strip_compile_prefix']


def resolve_decay_steps(lr_decay_steps, total_steps=None):
    """The step at which the cosine decay ends. `lr_decay_steps` -1 means the whole run: `total_steps`
    (train_bc.py passes its gradient steps, offline_steps + utd_ratio * online_steps). With no total (an agent
    built outside a run) -1 stays -1, which lr_lambda reads as no decay end: the LR stays at its peak after
    warmup."""
    lr_decay_steps = int(lr_decay_steps)
    if lr_decay_steps == -1 and total_steps is not None:
        return int(total_steps)
    return lr_decay_steps


def resolve_fused(fused_adamw, params):
    """Whether AdamW runs its fused kernel: `fused_adamw` None means on CUDA only; True on a device torch
    has no fused AdamW for is a ValueError naming the field."""
    devices = {p.device.type for p in params}
    if fused_adamw is None:
        return devices == {'cuda'}
    if fused_adamw:
        supported = set(torch.utils._foreach_utils._get_fused_kernels_supported_devices())
        if not devices <= supported:
            missing = sorted(devices - supported)
            raise ValueError(f'config.fused_adamw=True: torch has no fused AdamW on {missing} '
                             f'(supported: {sorted(supported)}); use None or False')
    return bool(fused_adamw)


def lr_lambda(step, warmup_steps, decay_steps, schedule):
    """LR multiplier at `step`: linear warmup over `warmup_steps`, then 'cosine' decay to 0 at `decay_steps`
    (no decay when decay_steps <= warmup_steps) or 'constant'."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == 'constant' or decay_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's weights with Diffusion Policy's warmup schedule.

    decay(step) = clip(1 - (1 + step / inv_gamma) ** -power, min_decay, max_decay), and 0 on the first update
    (a plain copy). Buffers are copied. The averaged copy is always in eval mode and never trains.
    """

    def __init__(self, model, power=0.75, max_decay=0.9999, min_decay=0.0, inv_gamma=1.0):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_decay, self.min_decay, self.inv_gamma = power, max_decay, min_decay, inv_gamma
        self.num_updates = 0

    def decay(self):
        """Decay used by the next update."""
        step = self.num_updates  # 0 on the first update -> plain copy
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power
        return float(min(self.max_decay, max(self.min_decay, value)))

    @torch.no_grad()
    def update(self, model):
        """Move the average toward `model`'s current weights (one multi-tensor lerp and one copy per step:
        a per-tensor loop costs a kernel launch per parameter, which is what a GPU step waits on)."""
        d = self.decay()
        lerp, copies = _pairs(self.module, model)
        if lerp[0]:
            torch._foreach_lerp_(lerp[0], lerp[1], 1.0 - d)
        if copies[0]:
            torch._foreach_copy_(copies[0], copies[1])
        self.num_updates += 1
        return d

    def state_dict(self):
        """Weights and update count."""
        return {'module': self.module.state_dict(), 'num_updates': self.num_updates}

    def load_state_dict(self, state):
        """Restore from `state_dict()`."""
        self.module.load_state_dict(strip_compile_prefix(state['module']))
        self.num_updates = int(state['num_updates'])


def _pairs(target, source, lerp_all=False):
    """([target tensors], [source tensors]) to lerp and to copy, matched in parameter then buffer order.

    Trainable parameters are lerped (all parameters with `lerp_all`), toward the source cast to the
    target's dtype; frozen ones, and buffers, are copied. Mismatched module trees are a ValueError.
    """
    lerp, copies = ([], []), ([], [])
    t_params, s_params = list(target.parameters()), list(source.parameters())
    t_bufs, s_bufs = list(target.buffers()), list(source.buffers())
    if len(t_params) != len(s_params) or len(t_bufs) != len(s_bufs):
        raise ValueError(f'averaged copy and model differ: {len(t_params)} / {len(s_params)} parameters, '
                         f'{len(t_bufs)} / {len(s_bufs)} buffers')
    for t, s in zip(t_params, s_params):
        if lerp_all or s.requires_grad:
            lerp[0].append(t), lerp[1].append(s.detach().to(t.dtype))  # .to is a no-op at equal dtypes
        else:
            copies[0].append(t), copies[1].append(s.detach())
    for t, s in zip(t_bufs, s_bufs):
        copies[0].append(t), copies[1].append(s)
    return lerp, copies


@torch.no_grad()
def polyak_update(target, source, tau):
    """target <- (1 - tau) * target + tau * source, parameters only; buffers copied (multi-tensor ops)."""
    lerp, copies = _pairs(target, source, lerp_all=True)
    if lerp[0]:
        torch._foreach_lerp_(lerp[0], lerp[1], tau)
    if copies[0]:
        torch._foreach_copy_(copies[0], copies[1])


def autocast(device, enabled):
    """bf16 autocast on CUDA when enabled; a no-op context otherwise (CPU training stays fp32)."""
    if enabled and torch.device(device).type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(module):
    """Put `module` in eval mode (no dropout, center crop) inside the block and restore its mode after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class Trainer:
    """One optimizer step over all trainable parameters of `model` (encoders included).

    AdamW, optional grad-norm clipping, LR warmup + cosine (LambdaLR), EMA update, step counter.
    Config fields read: lr, betas, weight_decay, warmup_steps, lr_decay_steps, lr_schedule, grad_clip_norm,
    use_ema, ema_power, ema_max_decay, fused_adamw (optional).
    """

    def __init__(self, model, config):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.fused = resolve_fused(config.get('fused_adamw'), self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay, fused=self.fused or None)
        warmup, schedule = int(config.warmup_steps), config.lr_schedule
        decay = resolve_decay_steps(config.lr_decay_steps)  # a run has resolved -1 already
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_lambda(step, warmup, decay, schedule))
        self.grad_clip_norm = config.grad_clip_norm
        self.ema = EMA(model, config.ema_power, config.ema_max_decay) if config.use_ema else None
        self.step = 0

    def eval_model(self):
        """The weights used for sampling: the EMA copy when enabled, else the live model."""
        return self.ema.module if self.ema is not None else self.model

    def apply(self, loss):
        """Backward `loss`, average the gradients over ranks (torchrun), clip, step optimizer and scheduler,
        update EMA; returns logging info."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.params)  # under torchrun: the mean over ranks, before clipping (else a no-op)
        if self.grad_clip_norm is not None and self.grad_clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip_norm)
        else:  # the same norm without clipping, in one multi-tensor call
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        info = {'train/lr': self.scheduler.get_last_lr()[0], 'train/grad_norm': grad_norm.detach()}
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            info['train/ema_decay'] = self.ema.update(self.model)
        self.step += 1
        return info

    def state_dict(self):
        """Everything needed to resume the optimisation exactly."""
        return {'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict(), 'step': self.step,
                'ema': self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state):
        """Restore from `state_dict()`."""
        self.model.load_state_dict(strip_compile_prefix(state['model']))
        self.optimizer.load_state_dict(state['optimizer'])
        for group in self.optimizer.param_groups:  # the kernel is this run's choice, not the checkpoint's
            group['fused'] = self.fused or None
        self.scheduler.load_state_dict(state['scheduler'])
        self.step = int(state['step'])
        if self.ema is not None:
            if state['ema'] is None:
                raise ValueError('checkpoint has no EMA weights but config.use_ema is True')
            self.ema.load_state_dict(state['ema'])


def strip_compile_prefix(state_dict):
    """Remove torch.compile's '_orig_mod.' prefixes from state-dict keys."""
    return {k.replace('_orig_mod.', ''): v for k, v in state_dict.items()}


def get_rng_state():
    """Global torch (CPU and CUDA) and python RNG states."""
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            'python': random.getstate()}


def set_rng_state(state):
    """Restore states from `get_rng_state()`."""
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    random.setstate(state['python'])


def save_checkpoint(path, payload, overwrite=False):
    """Write `payload` with torch.save atomically; never overwrites an existing file unless asked."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f'checkpoint {path!r} already exists; pass overwrite=True or choose a new path')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp-{os.getpid()}'
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device='cpu'):
    """Load a checkpoint written by `save_checkpoint`; tensors go to `device`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    return torch.load(path, map_location=device, weights_only=False)
