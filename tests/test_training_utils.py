"""utils/training.py's averaging and the trainer's logging values against their analytic answers, and
utils/torch_utils.host_floats."""

import math

import pytest
import torch
from torch import nn

from utils.torch_utils import host_floats
from utils.training import EMA, Trainer, polyak_update


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # a frozen parameter: copied, not averaged
    return model


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        model[1].running_mean.add_(torch.randn(4, generator=g))
        model[1].num_batches_tracked.add_(3)


def test_ema_update_is_the_analytic_average():
    model = small_model()
    ema = EMA(model, power=0.75, max_decay=0.9999)
    assert ema.update(model) == 0.0  # the first update copies
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    perturb(model, 1)
    d = ema.update(model)
    assert d == pytest.approx(1 - 2 ** -0.75)
    live, avg = model.state_dict(), ema.module.state_dict()
    for name, p in model.named_parameters():
        if p.requires_grad:
            want = d * before[name] + (1 - d) * live[name]
            torch.testing.assert_close(avg[name], want, rtol=0, atol=1e-6)
        else:
            assert torch.equal(avg[name], live[name]), name
    for name in ('1.running_mean', '1.running_var', '1.num_batches_tracked'):
        assert torch.equal(avg[name], live[name]), name


def test_polyak_update_is_the_analytic_average_of_every_parameter():
    source, target = small_model(), small_model()
    perturb(source, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    polyak_update(target, source, 0.25)
    src = source.state_dict()
    for name, _ in source.named_parameters():  # frozen ones too: the target follows all parameters
        torch.testing.assert_close(target.state_dict()[name], 0.75 * before[name] + 0.25 * src[name],
                                   rtol=0, atol=1e-6)
    assert torch.equal(target[1].running_mean, source[1].running_mean)


def test_averaging_mismatched_modules_is_an_error():
    with pytest.raises(ValueError, match='parameters'):
        polyak_update(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4)), 0.5)


def test_trainer_logs_the_global_gradient_norm_without_clipping():
    from ml_collections import ConfigDict

    model = small_model()
    config = ConfigDict(dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0, lr_decay_steps=-1,
                             lr_schedule='constant', grad_clip_norm=None, use_ema=True, ema_power=0.75,
                             ema_max_decay=0.9999))
    trainer = Trainer(model, config)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    loss = model(x).square().mean()
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], retain_graph=True)
    want = math.sqrt(sum(float(g.square().sum()) for g in grads))
    info = trainer.apply(loss)
    assert float(info['train/grad_norm']) == pytest.approx(want, rel=1e-5)


def test_host_floats_keeps_order_and_values():
    info = {'a': torch.tensor(1.5), 'b': 2, 'c': torch.tensor(0.25, dtype=torch.bfloat16),
            'd': torch.tensor([3.0], requires_grad=True).sum()}
    out = host_floats(info)
    assert list(out) == ['a', 'b', 'c', 'd']
    assert out == {'a': 1.5, 'b': 2.0, 'c': 0.25, 'd': 3.0}
    assert all(type(v) is float for v in out.values())
    with pytest.raises(ValueError, match=r"info\['v'\] has shape \(2,\)"):
        host_floats({'v': torch.zeros(2)})
