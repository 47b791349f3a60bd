"""Policy networks, critic and factory: shapes, sizes, causality, gradients, determinism, JVP, errors."""

import pytest
import torch
from torch.func import jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.helpers import make_obs, shape_meta, shrink
from utils.network_factory import (
    IMAGE_BACKBONES,
    LOW_DIM_ENCODERS,
    NETWORKS,
    count_parameters,
    get_encoder,
    get_network,
    get_network_and_encoder,
    get_network_config,
    get_value,
)

NETWORKS = sorted(NETWORKS)
STATE_ENCODERS = sorted(LOW_DIM_ENCODERS)
IMAGE_ENCODERS = ['resnet18', 'impala']  # one of each backbone kind (resnet34/50 only cost more time)
assert set(IMAGE_ENCODERS) <= set(IMAGE_BACKBONES)


def tiny_config(network, encoder=None, obs_steps=2, horizon=4, image=False, **overrides):
    """A small config for `network` and `encoder` on a hand-written shape_meta (12x12 images if image)."""
    config = get_network_config()
    config.shape_meta = shape_meta((12, 12) if image else None)
    config.network_type, config.encoder = network, encoder
    config.obs_steps, config.horizon_length = obs_steps, horizon
    shrink(config, num_layers=2, num_qs=3)
    config.update(overrides)
    return config


def run(net, enc, config, batch=3, seed=0):
    """Encode random observations and call the network on a random chunk; returns (y, scalar, cond)."""
    g = torch.Generator().manual_seed(seed)
    obs = make_obs(config.shape_meta, batch, config.obs_steps, seed=seed)
    cond = enc(obs)
    x = torch.randn(batch, config.horizon_length, 7, generator=g)
    y, scalar = net(x, torch.rand(batch, generator=g), torch.rand(batch, generator=g), cond)
    return y, scalar, cond


CASES = ([(n, e, to, False) for n in NETWORKS for e in STATE_ENCODERS for to in (1, 2)]
         + [(n, e, to, True) for n in NETWORKS for e in IMAGE_ENCODERS for to in (1, 2)])


_ENCODERS = {}  # encoders do not depend on the network or To: build each once for the shape tests


@pytest.mark.parametrize('network, encoder, obs_steps, image', CASES)
def test_output_shapes(network, encoder, obs_steps, image):
    config = tiny_config(network, encoder, obs_steps=obs_steps, image=image)
    if encoder not in _ENCODERS:
        _ENCODERS[encoder] = get_encoder(config)
    enc = _ENCODERS[encoder]
    net = get_network(config, enc.output_dim)
    y, scalar, cond = run(net, enc, config)
    assert cond.shape == (3, obs_steps, enc.output_dim)
    assert y.shape == (3, 4, 7) and scalar.shape == (3, 1)
    values = get_value(config, enc.output_dim)(cond, y)
    assert values.shape == (3, 3)


@pytest.mark.parametrize('network', NETWORKS)
@pytest.mark.parametrize('horizon', [5, 16])
def test_horizons(network, horizon):
    config = tiny_config(network, 'identity', horizon=horizon, dim_mult=(1, 2, 2))
    net, enc = get_network_and_encoder(config)
    y, scalar, _ = run(net, enc, config)
    assert y.shape == (3, horizon, 7) and scalar.shape == (3, 1)


def test_chiunet_local_conditioning_and_bias_only_film():
    config = tiny_config('chiunet', 'identity', horizon=5, obs_as_global_cond=False, cond_predict_scale=False)
    net, enc = get_network_and_encoder(config)
    y, _, _ = run(net, enc, config)
    assert y.shape == (3, 5, 7)
    # the observation must change the output through the local path too
    y2 = net(torch.zeros(3, 5, 7), torch.zeros(3), torch.zeros(3), torch.zeros(3, 2, enc.output_dim))[0]
    y3 = net(torch.zeros(3, 5, 7), torch.zeros(3), torch.zeros(3), torch.ones(3, 2, enc.output_dim))[0]
    assert not torch.allclose(y2, y3)


def test_default_parameter_counts():
    config = get_network_config()
    config.shape_meta = shape_meta((84, 84))  # 2 cameras at 84x84 + 9 low-dim dims
    config.shape_meta['obs']['robot0_eef_quat'] = {'shape': [4], 'type': 'low_dim'}
    config.obs_steps, config.horizon_length = 2, 16
    enc = get_encoder(config)
    assert enc.output_dim == 2 * 512 + 9
    print(f'\nencoder resnet18 x2: {count_parameters(enc) / 1e6:.2f}M params, output_dim {enc.output_dim}')
    for network in ('chiunet', 'chitransformer'):
        config.network_type = network
        n = count_parameters(get_network(config, enc.output_dim))
        print(f'{network}: {n / 1e6:.2f}M params (To=2, Tp=16, A=7)')
        assert abs(n - 20e6) / 20e6 < 0.15


@pytest.mark.parametrize('impl', ['sdpa', 'math'])
def test_chitransformer_is_causal(impl):
    config = tiny_config('chitransformer', 'identity', horizon=6, attention_impl=impl)
    net, enc = get_network_and_encoder(config)
    net.eval()
    cond = torch.randn(2, 2, enc.output_dim)
    s, t = torch.rand(2), torch.rand(2)
    x = torch.randn(2, 6, 7)
    y = net(x, s, t, cond)[0]
    for k in range(6):
        x2 = x.clone()
        x2[:, k] += 1.0
        y2 = net(x2, s, t, cond)[0]
        torch.testing.assert_close(y2[:, :k], y[:, :k], atol=1e-6, rtol=0)
        assert (y2[:, k] - y[:, k]).abs().max() > 1e-4


def test_attention_impls_agree():
    torch.manual_seed(0)
    net = get_network(tiny_config('chitransformer', 'identity', attention_impl='sdpa'), 15)
    math_net = get_network(tiny_config('chitransformer', 'identity', attention_impl='math'), 15)
    math_net.load_state_dict(net.state_dict())
    args = (torch.randn(2, 4, 7), torch.rand(2), torch.rand(2), torch.randn(2, 2, 15))
    torch.testing.assert_close(net(*args)[0], math_net(*args)[0], atol=1e-5, rtol=1e-5)


GRAD_CASES = ([(n, 'mlp', False) for n in NETWORKS] + [(n, 'impala', True) for n in NETWORKS]
              + [('mlp', 'resnet18', True)])


@pytest.mark.parametrize('network, encoder, image', GRAD_CASES)
def test_gradients_reach_every_parameter(network, encoder, image):
    config = tiny_config(network, encoder, image=image, timestep_embedding='positional', encoder_dropout=0.1)
    net, enc = get_network_and_encoder(config)
    value = get_value(config, enc.output_dim)
    y, _, cond = run(net, enc, config)
    (y.square().mean() + value(cond, y).mean()).backward()
    for module_name, module in (('net', net), ('encoder', enc), ('value', value)):
        for name, p in module.named_parameters():
            if name.startswith('scalar_head'):
                assert p.grad is None  # no loss uses the scalar yet
                continue
            assert p.grad is not None and p.grad.abs().sum() > 0, f'{module_name}.{name} got no gradient'


@pytest.mark.parametrize('network, encoder, image', [(n, 'mlp', False) for n in NETWORKS]
                         + [('chiunet', 'impala', True)])
def test_deterministic_under_seed(network, encoder, image):
    def build_and_run(seed):
        torch.manual_seed(seed)
        config = tiny_config(network, encoder, image=image, transformer_dropout=0.1, encoder_dropout=0.1,
                             timestep_embedding='fourier')
        net, enc = get_network_and_encoder(config)
        return run(net, enc.train(), config)[0]

    torch.testing.assert_close(build_and_run(0), build_and_run(0), atol=0, rtol=0)
    assert not torch.allclose(build_and_run(0), build_and_run(1))


@pytest.mark.parametrize('network, impl', [('mlp', 'sdpa'), ('chiunet', 'sdpa'), ('chitransformer', 'math'),
                                           ('chitransformer', 'sdpa')])
def test_forward_mode_jvp_matches_finite_differences(network, impl):
    """MeanFlow runs torch.func.jvp through the networks along (dx, ds, dt)."""
    torch.manual_seed(0)
    net = get_network(tiny_config(network, 'identity', attention_impl=impl), 15).double()
    x, s, t = torch.randn(2, 4, 7).double(), torch.rand(2).double(), torch.rand(2).double()
    cond = torch.randn(2, 2, 15).double()
    dx, ds = torch.randn_like(x), torch.ones_like(s)

    def u(x, s, t):
        return net(x, s, t, cond)[0]

    with sdpa_kernel(SDPBackend.MATH):  # fused kernels have no forward-mode AD (no effect with 'math')
        out, tangent = jvp(u, (x, s, t), (dx, ds, torch.zeros_like(t)))
    eps = 1e-6
    fd = (u(x + eps * dx, s + eps * ds, t) - u(x - eps * dx, s - eps * ds, t)) / (2 * eps)
    torch.testing.assert_close(out, u(x, s, t))
    torch.testing.assert_close(tangent, fd, atol=1e-5, rtol=1e-4)


def test_scalar_head_starts_at_zero_and_times_may_be_scalars():
    for network in NETWORKS:
        net = get_network(tiny_config(network, 'identity'), 15)
        y, scalar = net(torch.randn(2, 4, 7), 0.0, 1.0, torch.randn(2, 2, 15))
        assert torch.equal(scalar, torch.zeros(2, 1)) and y.shape == (2, 4, 7)


def test_config_merges_into_agent_config_and_overrides():
    import ml_collections
    agent = ml_collections.ConfigDict({'lr': 3e-4, 'obs_steps': 2, 'horizon_length': 4})
    agent.update(get_network_config())
    agent.encoder = 'impala'  # placeholders accept their type
    agent.crop_shape = (10, 10)
    agent.shape_meta = shape_meta((12, 12))
    _, enc = get_network_and_encoder(agent)
    assert set(enc.crop_shapes.values()) == {(10, 10)}


def test_bad_configs_give_clear_errors():
    with pytest.raises(ValueError, match=r"network_type='unet'.*'chitransformer', 'chiunet', 'mlp'"):
        get_network(tiny_config('unet', 'identity'), 15)
    with pytest.raises(ValueError, match=r"encoder='vit'.*'identity'.*'impala'.*'resnet18'"):
        get_encoder(tiny_config('mlp', 'vit'))
    with pytest.raises(ValueError, match=r"timestep_embedding='learned'.*'fourier'"):
        get_network(tiny_config('mlp', 'identity', timestep_embedding='learned'), 15)
    with pytest.raises(ValueError, match='divisible by n_heads'):
        get_network(tiny_config('chitransformer', 'identity', d_model=10, n_heads=3), 15)
    with pytest.raises(ValueError, match='divisible by 8 groups'):
        get_network(tiny_config('chiunet', 'identity', model_dim=12), 15)
    with pytest.raises(ValueError, match='attention_impl'):
        get_network(tiny_config('chitransformer', 'identity', attention_impl='flash'), 15)
    with pytest.raises(ValueError, match='horizon_length'):
        get_network(tiny_config('mlp', 'identity', horizon=0), 15)
    config = tiny_config('mlp', 'identity')
    del config['shape_meta']
    with pytest.raises(ValueError, match="no field 'shape_meta'"):
        get_network_and_encoder(config)
    with pytest.raises(ValueError, match='"obs" and "action"'):
        config = tiny_config('mlp', 'identity')
        config.shape_meta = {'obs': {}}
        get_encoder(config)
    for network in NETWORKS:
        net = get_network(tiny_config(network, 'identity'), 15)
        with pytest.raises(ValueError, match=r'cond must be \(B=2, To=2, D=15\)'):
            net(torch.randn(2, 4, 7), 0.0, 0.0, torch.randn(2, 2, 14))
        with pytest.raises(ValueError, match='A=7'):
            net(torch.randn(2, 4, 6), 0.0, 0.0, torch.randn(2, 2, 15))
    with pytest.raises(ValueError, match='built for horizon_length Tp=4'):
        get_network(tiny_config('chitransformer', 'identity'), 15)(torch.randn(2, 5, 7), 0.0, 0.0,
                                                                   torch.randn(2, 2, 15))
    value = get_value(tiny_config('mlp', 'identity'), 15)
    with pytest.raises(ValueError, match='actions must be'):
        value(torch.randn(2, 2, 15), torch.randn(2, 5, 7))


@pytest.mark.parametrize('times', ['floats', 'per_row'])
def test_mlp_conditioned_matches_forward(times):
    """MLP.conditioned(cond)(x, s, t) gives forward(x, s, t, cond)'s outputs and gradients (up to round-off),
    with float times (one embedding row) and (B,) times; a wrong x shape names the network."""
    torch.manual_seed(0)
    net = get_network(tiny_config('mlp', 'identity', obs_steps=2, horizon=4), 15)
    x, cond = torch.randn(5, 4, 7), torch.randn(5, 2, 15, requires_grad=True)
    s, t = (0.25, 0.75) if times == 'floats' else (torch.rand(5), torch.rand(5))
    grads = []
    for fn in (lambda: net(x, s, t, cond), lambda: net.conditioned(cond)(x, s, t)):
        net.zero_grad()
        cond.grad = None
        y, scalar = fn()
        (y.pow(2).sum() + scalar.sum() * 3).backward()
        grads.append((y.detach(), [p.grad.clone() for p in net.parameters()], cond.grad.clone()))
    (y0, g0, c0), (y1, g1, c1) = grads
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'MLP: x must be'):
        net.conditioned(cond)(torch.randn(5, 3, 7), s, t)
