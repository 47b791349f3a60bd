"""The one place that maps names to network, encoder and critic classes.

Agents merge `get_network_config()` into their flat config (so `--agent.model_dim=128` works) and call
`get_network_and_encoder(config)` / `get_value(config, cond_dim)`. The factory also reads three agent
fields: `shape_meta` (filled from the dataset), `obs_steps` (To) and `horizon_length` (Tp).
"""

import os

import ml_collections
import torch
import torch.nn as nn
from ml_collections import config_dict

from utils.encoders import (
    IdentityEncoder,
    ImpalaCNN,
    MLPEncoder,
    MultiImageObsEncoder,
)
from utils.networks.chitransformer import ChiTransformer
from utils.networks.chiunet import ChiUNet
from utils.networks.mlp import MLP
from utils.networks.value import Value
from utils.shape_meta import rgb_keys, validate_shape_meta


def get_network_config() -> ml_collections.ConfigDict:
    """Network, encoder and critic hyperparameters, to be merged into an agent's flat config."""
    config = ml_collections.ConfigDict()
    # Which modules.
    config.network_type = 'mlp'  # policy network: 'mlp' | 'chiunet' | 'chitransformer'
    # Observation encoder: None picks 'identity' without rgb keys and 'resnet18' with them; or one of
    # 'identity' | 'mlp' | 'resnet18' | 'resnet34' | 'resnet50' | 'impala'.
    config.encoder = config_dict.placeholder(str)
    # Flow-time embedding, used by every policy network for both s and t.
    config.timestep_embedding = 'sinusoidal'  # 'sinusoidal' | 'fourier' | 'positional' (learnable)
    # Multiplier on s, t before embedding; None = the embedding's default (1000 sinusoidal/positional, as
    # Diffusion Policy's integer timesteps; 1 fourier). MeanFlow agents use 1: a JVP through a 1000x scale
    # makes du/ds ~100x larger than u at initialisation.
    config.timestep_scale = config_dict.placeholder(float)
    config.emb_dim = 256  # size of emb(s) and of emb(t) (each)
    # MLP policy.
    config.mlp_hidden_dims = (512, 512, 512, 512)  # hidden layer widths
    config.mlp_layer_norm = False  # LayerNorm after each hidden Linear
    # ChiUNet policy (Diffusion Policy's conditional 1-D U-Net).
    config.model_dim = 128  # channels of the first level
    config.dim_mult = (1, 2, 2)  # channel multiplier per level; Tp is padded to a multiple of 2^(levels-1)
    config.kernel_size = 5  # Conv1d kernel size
    config.n_groups = 8  # GroupNorm groups in the residual blocks
    config.cond_predict_scale = True  # FiLM predicts scale and bias (False: bias only)
    config.obs_as_global_cond = True  # True: obs features enter FiLM; False: added per position (local)
    # ChiTransformer policy.
    config.d_model = 384  # token width
    config.n_heads = 6  # attention heads (d_model must be divisible by n_heads)
    config.num_layers = 8  # decoder layers (causal self-attention + cross-attention + MLP)
    config.transformer_dropout = 0.0  # dropout on attention weights, residual branches and embeddings
    config.attention_impl = 'sdpa'  # 'sdpa': torch kernels; 'math': explicit softmax(QK^T)V (forward-AD safe)
    # Observation encoders.
    config.encoder_dropout = 0.0  # dropout on the encoder's output features
    config.encoder_hidden_dims = (256, 256)  # 'mlp' encoder widths; output dim is the last one
    config.resize_shape = config_dict.placeholder(tuple)  # (H, W) images are resized to first; None: keep
    config.crop_shape = config_dict.placeholder(tuple)  # (h, w) crop; None: round(0.9 * H), round(0.9 * W)
    config.random_crop = True  # random crop in train mode, center crop in eval; False: center crop always
    config.share_backbone = False  # one image backbone for all cameras (True) or one per camera (False)
    config.use_group_norm = True  # replace the ResNet's BatchNorm by GroupNorm(C/16)
    # image backbones' weights and inputs in channels_last memory layout (a GPU speed lever; same weights)
    config.channels_last = False
    config.pretrained_path = config_dict.placeholder(str)  # ResNet state_dict on disk; never downloaded
    config.impala_channels = (16, 32, 32)  # 'impala' encoder: channels of its three conv stages
    config.impala_out_dim = 256  # 'impala' encoder: feature size per camera
    config.impala_res_blocks = 2  # 'impala' encoder: residual blocks per stage
    # Critic ensemble (Value).
    config.value_hidden_dims = (512, 512, 512, 512)  # hidden layer widths of each head
    config.num_qs = 2  # number of heads K
    config.value_layer_norm = True  # LayerNorm after each hidden Linear
    return config


def _field(config, key: str):
    """config[key], or a ValueError saying which field is missing and where it comes from."""
    try:
        return config[key]
    except (KeyError, AttributeError):
        raise ValueError(
            f'config has no field {key!r}; merge utils.network_factory.get_network_config() into the agent '
            'config (shape_meta, obs_steps and horizon_length come from the agent config)'
        ) from None


def _positive_int(config, key: str) -> int:
    """A config field that must be a positive integer."""
    value = _field(config, key)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f'config.{key} must be a positive integer, got {value!r}')
    return value


def _shape_meta(config) -> dict:
    """The validated config.shape_meta."""
    shape_meta = _field(config, 'shape_meta')
    validate_shape_meta(shape_meta)
    return shape_meta


def encoder_name(config) -> str:
    """The encoder name to build: config.encoder, or picked from shape_meta when it is None."""
    name = _field(config, 'encoder')
    if name is None:
        return 'resnet18' if rgb_keys(_shape_meta(config)) else 'identity'
    valid = sorted(set(LOW_DIM_ENCODERS) | set(IMAGE_BACKBONES))
    if name not in valid:
        raise ValueError(f'config.encoder={name!r} is unknown; valid names: {valid} '
                         '(or None to pick from shape_meta)')
    return name


def get_encoder(config) -> nn.Module:
    """Build the observation encoder named by config.encoder for config.shape_meta."""
    shape_meta = _shape_meta(config)
    name = encoder_name(config)
    dropout = _field(config, 'encoder_dropout')
    if name in LOW_DIM_ENCODERS:
        cls, kwargs = LOW_DIM_ENCODERS[name]
        return cls(shape_meta, dropout=dropout, **kwargs(config))
    return MultiImageObsEncoder(
        shape_meta,
        make_backbone=IMAGE_BACKBONES[name](config, name),
        share_backbone=_field(config, 'share_backbone'),
        resize_shape=_field(config, 'resize_shape'),
        crop_shape=_field(config, 'crop_shape'),
        random_crop=_field(config, 'random_crop'),
        dropout=dropout,
        use_group_norm=_field(config, 'use_group_norm'),
        channels_last=_field(config, 'channels_last'),
    )


def _impala_backbone(config, name: str):
    """input_shape (C, h, w) -> ImpalaCNN, sized by the impala_* fields."""
    channels = tuple(_field(config, 'impala_channels'))
    out_dim = _positive_int(config, 'impala_out_dim')
    blocks = _field(config, 'impala_res_blocks')
    return lambda shape: ImpalaCNN(shape, channels=channels, out_dim=out_dim, res_blocks=blocks)


def _resnet_backbone(config, name: str):
    """input_shape (C, h, w) -> torchvision ResNet `name` without its fc (random init or pretrained_path)."""
    path = _field(config, 'pretrained_path')
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(
            f'config.pretrained_path={path!r}: no such file. Pretrained {name} weights are never downloaded; '
            'save a torchvision state_dict there or leave pretrained_path=None (random init)'
        )

    def make(input_shape):
        import torchvision  # here: importing it costs ~2 s, which a state run never needs

        net = getattr(torchvision.models, RESNETS[name])(weights=None)
        if path is not None:
            # Loaded before BatchNorm is swapped for GroupNorm (use_group_norm), which re-initialises norms.
            net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        net.fc = nn.Identity()  # (N, 3, h, w) -> (N, 512) for resnet18/34, (N, 2048) for resnet50
        return net

    return make


def _common_network_kwargs(config) -> dict:
    """Keyword arguments every policy network takes from the config (time embedding)."""
    return dict(emb_dim=_positive_int(config, 'emb_dim'),
                timestep_embedding=_field(config, 'timestep_embedding'),
                timestep_scale=config.get('timestep_scale'))


def _mlp_kwargs(config) -> dict:
    """MLP's own keyword arguments."""
    return dict(hidden_dims=tuple(_field(config, 'mlp_hidden_dims')),
                layer_norm=_field(config, 'mlp_layer_norm'))


def _chiunet_kwargs(config) -> dict:
    """ChiUNet's own keyword arguments."""
    return dict(model_dim=_positive_int(config, 'model_dim'), dim_mult=tuple(_field(config, 'dim_mult')),
                kernel_size=_positive_int(config, 'kernel_size'), n_groups=_positive_int(config, 'n_groups'),
                cond_predict_scale=_field(config, 'cond_predict_scale'),
                obs_as_global_cond=_field(config, 'obs_as_global_cond'))


def _chitransformer_kwargs(config) -> dict:
    """ChiTransformer's own keyword arguments."""
    return dict(d_model=_positive_int(config, 'd_model'), n_heads=_positive_int(config, 'n_heads'),
                num_layers=_positive_int(config, 'num_layers'), dropout=_field(config, 'transformer_dropout'),
                attention_impl=_field(config, 'attention_impl'))


def _no_kwargs(config) -> dict:
    """No keyword arguments from the config."""
    return {}


# The name tables: the only place that knows network and encoder names. Adding a network is one class with
# the common signature net(x (B,Tp,A), s (B,), t (B,), cond (B,To,D)) -> (y, scalar (B,1)) plus one entry:
# name -> (class, config -> its own keyword arguments). Every network also takes action_dim, horizon,
# obs_steps, cond_dim and _common_network_kwargs.
NETWORKS = {
    'mlp': (MLP, _mlp_kwargs),
    'chiunet': (ChiUNet, _chiunet_kwargs),
    'chitransformer': (ChiTransformer, _chitransformer_kwargs),
}

# Low-dim encoders: name -> (class(shape_meta, dropout, **kwargs) -> (B,To,D), config -> kwargs).
LOW_DIM_ENCODERS = {
    'identity': (IdentityEncoder, _no_kwargs),
    'mlp': (MLPEncoder, lambda config: dict(hidden_dims=tuple(_field(config, 'encoder_hidden_dims')))),
}

RESNETS = {'resnet18': 'resnet18', 'resnet34': 'resnet34', 'resnet50': 'resnet50'}  # torchvision.models names

# Image encoders are MultiImageObsEncoder around one backbone per camera: name -> builder(config, name),
# which returns input_shape (C, h, w) -> backbone module.
IMAGE_BACKBONES = {**dict.fromkeys(RESNETS, _resnet_backbone), 'impala': _impala_backbone}


def get_network(config, cond_dim: int | None = None) -> nn.Module:
    """Build the policy network config.network_type for cond of shape (B, To, cond_dim).

    cond_dim is the encoder's output_dim; when None an encoder is built just to read it.
    """
    name = _field(config, 'network_type')
    if name not in NETWORKS:
        raise ValueError(f'config.network_type={name!r} is unknown; valid names: {sorted(NETWORKS)}')
    shape_meta = _shape_meta(config)
    if cond_dim is None:
        cond_dim = get_encoder(config).output_dim
    cls, kwargs = NETWORKS[name]
    return cls(
        action_dim=int(shape_meta['action']['shape'][0]),
        horizon=_positive_int(config, 'horizon_length'),
        obs_steps=_positive_int(config, 'obs_steps'),
        cond_dim=int(cond_dim),
        **_common_network_kwargs(config),
        **kwargs(config),
    )


def get_network_and_encoder(config) -> tuple[nn.Module, nn.Module]:
    """Build (policy network, observation encoder) with the network sized to the encoder's output."""
    encoder = get_encoder(config)
    return get_network(config, encoder.output_dim), encoder


def get_value(config, cond_dim: int) -> Value:
    """Build the critic ensemble Value(cond (B,To,cond_dim), actions (B,Tp,A)) -> (num_qs, B)."""
    shape_meta = _shape_meta(config)
    return Value(
        obs_steps=_positive_int(config, 'obs_steps'),
        cond_dim=int(cond_dim),
        horizon=_positive_int(config, 'horizon_length'),
        action_dim=int(shape_meta['action']['shape'][0]),
        hidden_dims=tuple(_field(config, 'value_hidden_dims')),
        num_qs=_positive_int(config, 'num_qs'),
        layer_norm=_field(config, 'value_layer_norm'),
    )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
