"""The agent class every algorithm shares: construction, config checks, update, validation, sampling,
save / load. An algorithm file in agents/ subclasses `Agent` and supplies the math:

    flow_loss(net, cond, actions) -> (loss, info)      # the training loss on normalized actions (B,Tp,A)
    sample_chunk(model, features, z, generator) -> (B,Tp,A) in [-1, 1], normalized units
    encode(model, obs) -> features                      # optional; default: model['encoder'](obs) (B,To,D)

`features` is whatever the agent's `sample_chunk` consumes: the base's `encode` gives the policy encoder's
(B,To,D) tensor; FQL returns a small named tuple (policy and critic features). Optional hooks:
`build_modules`, `total_loss`, `after_step`, `extra_state` / `load_extra_state`, `validate_config`.
"""

import importlib
import inspect
import warnings

import ml_collections
import numpy as np
import torch
from ml_collections import config_dict
from torch import nn

from utils.datasets import DEFAULT_DISCOUNT
from utils.network_factory import get_network_and_encoder, get_network_config
from utils.normalizer import Normalizer
from utils.shape_meta import OBS_TYPES, obs_type_of, quaternion_identity_stats, validate_shape_meta
from utils.torch_utils import host_floats, pick_device, to_torch
from utils.training import (
    Trainer,
    autocast,
    eval_mode,
    load_checkpoint,
    save_checkpoint,
)

CHECKPOINT_FORMAT = 'acfql_pytorch-agent-v1'
# Config fields that say how to run, not what is learned: `Agent.load` may override them, and a checkpoint
# written before a field existed gets its default.
RUNTIME_FIELDS = ('use_bf16', 'compile', 'fused_adamw', 'channels_last')
NOISE_PRIORS = ('standard', 'chunk_cov')  # config.noise_prior (get_base_config)


def get_base_config():
    """The fields every agent reads (network fields from utils.network_factory.get_network_config()); an
    agent's `get_config()` sets `agent_name` and adds its own."""
    config = get_network_config()
    config.agent_name = config_dict.placeholder(str)  # registry key in agents.AGENTS, set by the agent file
    # 'state' (low-dim keys) or 'image' (rgb + proprioceptive keys); None = from the data (env name or
    # obs_keys). train_bc.py fills it in; a value that contradicts the data is an error.
    config.obs_type = config_dict.placeholder(str)
    config.obs_steps = 2  # To: observations fed to the policy, steps i-To+1 .. i
    config.horizon_length = 16  # Tp: predicted action chunk, steps i .. i+Tp-1
    config.action_steps = 8  # Ta: actions of a chunk executed before predicting again (Ta <= Tp)
    config.batch_size = 256  # training batch size per process (train_bc.py; torchrun: N x this in all)
    config.lr = 1e-4  # AdamW learning rate (peak, after warmup)
    config.betas = (0.95, 0.999)  # AdamW betas
    config.weight_decay = 1e-6  # AdamW weight decay
    config.lr_schedule = 'cosine'  # 'cosine' (decay to 0 at lr_decay_steps) or 'constant' after warmup
    config.warmup_steps = 500  # linear LR warmup steps
    config.lr_decay_steps = -1  # end of the cosine decay; -1 = the whole run (training.resolve_decay_steps)
    config.grad_clip_norm = 0.0  # max global grad norm; 0 disables clipping
    config.use_ema = True  # keep an EMA of the weights and sample / evaluate with it
    config.ema_power = 0.75  # EMA decay warmup power (Diffusion Policy)
    config.ema_max_decay = 0.9999  # EMA decay ceiling
    # GPU-path levers. Each may change the numerics slightly; none changes what a checkpoint holds, so a run
    # saved with them loads without them and back (Agent.load(..., overrides={...}), RUNTIME_FIELDS).
    config.use_bf16 = False  # bf16 autocast for the forward passes on CUDA (ignored on CPU)
    # torch.compile every network in place (training, validation and sampling; inside MeanFlow's JVP the
    # network runs eagerly, agents/mfbc.jvp_along_s). The first steps pay the compile; state-dict keys are
    # those of the eager modules.
    config.compile = False
    config.fused_adamw = config_dict.placeholder(bool)  # fused AdamW kernel; None = on CUDA only, else off
    # (channels_last, the image backbones' memory layout, is a network field: utils.network_factory)
    # reward discount gamma per env step (dataset chunk returns); FQL's critic bootstraps with gamma ** Tp
    config.discount = DEFAULT_DISCOUNT
    # the flow's noise z: 'standard' N(0, I), or 'chunk_cov' N(0, Sigma) with Sigma the covariance of the
    # training data's normalized action chunks (a data-shaped prior, as PriorGrad's, Lee et al. 2022): the
    # noise then already has the chunks' correlations and roughness, and the flow only moves it
    config.noise_prior = 'standard'
    # sampling only: z is drawn from the prior and scaled by this (1: the prior itself; below 1 pulls the
    # chunks toward the flow's output at z = 0, trading diversity for precision; 0: deterministic)
    config.sample_temperature = 1.0
    return config


def _require(ok, field, value, allowed):
    """Raise ValueError naming the config field, its value and what is allowed."""
    if not ok:
        raise ValueError(f'config.{field}={value!r} is invalid; allowed: {allowed}')


class Agent:
    """What every agent shares; a subclass sets `name` and supplies `flow_loss` and `sample_chunk`."""

    name = None  # registry key in agents.AGENTS
    # config fields that change only how a trained agent samples (`train_bc.py --eval_only` takes --agent.x)
    eval_fields = ('sample_temperature',)

    def __init__(self, shape_meta, config, normalizer, seed, device):
        self.shape_meta, self.config, self.seed = shape_meta, config, seed
        self.device = device
        self.normalizer = normalizer
        self.action_dim = int(shape_meta['action']['shape'][0])
        with torch.random.fork_rng(devices=[]):  # deterministic init without touching the global RNG
            torch.manual_seed(seed)
            self.model = nn.ModuleDict(self.build_modules(config)).to(device)
        self.trainer = Trainer(self.model, config)
        self.rng = torch.Generator(device).manual_seed(seed)  # training noise and times
        self.noise_factor = None  # F (Tp*A, Tp*A) with z = F eps, eps ~ N(0, I); None: z ~ N(0, I)
        self.sample_rng = torch.Generator(device).manual_seed(seed + 1)  # sampling noise when seed is None

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, shape_meta, config, normalizer_stats=None, seed=0, device='cpu', action_chunks=None):
        """Build the agent from `shape_meta` (obs keys/shapes, action shape) and a `get_config()` config.

        `action_chunks` (N, Tp, A), raw units (`Dataset.action_chunks(Tp)`), fit the noise prior when
        `config.noise_prior` is 'chunk_cov'; without them that prior falls back to N(0, I) with a warning."""
        validate_shape_meta(shape_meta)
        config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, 'to_dict') else dict(config))
        config.shape_meta = ml_collections.ConfigDict(shape_meta)
        cls.validate_config(config)
        device = pick_device(device)
        # quaternion dims stay unscaled: the encoders turn them into rotation-matrix columns
        normalizer = Normalizer(quaternion_identity_stats(normalizer_stats, shape_meta), device=device)
        agent = cls(shape_meta, config, normalizer, seed, device)
        if config.noise_prior == 'chunk_cov':
            agent.fit_noise_prior(action_chunks)
        if config.compile:  # after every copy (EMA, FQL's target) is made: compiled modules are not copied
            agent.compile_modules()
        return agent

    def compile_modules(self):
        """torch.compile each module of the model and of its EMA copy in place (`nn.Module.compile`: the
        state-dict keys stay those of the eager module). Compilation happens at the first call."""
        for model in {id(m): m for m in (self.model, self.trainer.eval_model())}.values():
            for module in model.values():
                module.compile()

    @classmethod
    def get_config(cls):
        """The agent's default config: `get_config()` of the file that defines the class."""
        return importlib.import_module(cls.__module__).get_config()

    @classmethod
    def config_file(cls):
        """Path of the file that defines the class (what `train_bc.py --agent=` takes)."""
        return inspect.getfile(cls)

    @classmethod
    def validate_config(cls, config):
        """Check every field the agent reads once, with errors that name the field."""
        c = config
        _require(c.agent_name == cls.name, 'agent_name', c.agent_name, f"'{cls.name}' for {cls.__name__}")
        _require(c.obs_type in (None, *OBS_TYPES), 'obs_type', c.obs_type, f'None or one of {OBS_TYPES}')
        data = obs_type_of(c.shape_meta)
        _require(c.obs_type in (None, data), 'obs_type', c.obs_type,
                 f'None or {data!r}, the observation type of shape_meta (keys {sorted(c.shape_meta.obs)})')
        _require(int(c.obs_steps) >= 1, 'obs_steps', c.obs_steps, 'an integer >= 1')
        _require(int(c.horizon_length) >= 1, 'horizon_length', c.horizon_length, 'an integer >= 1')
        _require(1 <= int(c.action_steps) <= int(c.horizon_length), 'action_steps', c.action_steps,
                 f'1 <= action_steps <= horizon_length ({c.horizon_length})')
        _require(c.lr > 0, 'lr', c.lr, 'a positive float')
        _require(len(tuple(c.betas)) == 2 and all(0 <= b < 1 for b in c.betas), 'betas', c.betas,
                 'two floats in [0, 1)')
        _require(c.weight_decay >= 0, 'weight_decay', c.weight_decay, 'a float >= 0')
        _require(c.lr_schedule in ('cosine', 'constant'), 'lr_schedule', c.lr_schedule,
                 "'cosine' or 'constant'")
        _require(int(c.warmup_steps) >= 0, 'warmup_steps', c.warmup_steps, 'an integer >= 0')
        _require(c.grad_clip_norm >= 0, 'grad_clip_norm', c.grad_clip_norm, 'a float >= 0 (0 = off)')
        _require(0 <= c.ema_max_decay < 1, 'ema_max_decay', c.ema_max_decay, 'a float in [0, 1)')
        _require(c.ema_power > 0, 'ema_power', c.ema_power, 'a positive float')
        _require(0 < c.discount <= 1, 'discount', c.discount, 'a float in (0, 1]')
        _require(c.noise_prior in NOISE_PRIORS, 'noise_prior', c.noise_prior, f'one of {NOISE_PRIORS}')
        _require(float(c.sample_temperature) >= 0, 'sample_temperature', c.sample_temperature, 'a float >= 0')
        for name in ('use_bf16', 'compile', 'channels_last'):
            _require(isinstance(c[name], bool), name, c[name], 'True or False')
        _require(c.fused_adamw in (None, True, False), 'fused_adamw', c.fused_adamw,
                 'None (fused on CUDA only), True or False')

    def build_modules(self, config):
        """Trainable modules of the agent (all optimised and EMA-averaged together)."""
        actor, encoder = get_network_and_encoder(config)
        return {'encoder': encoder, 'actor': actor}

    # ----------------------------------------------------------------- math (each agent's own)
    def flow_loss(self, net, cond, actions):
        """The training loss (loss, info) on normalized actions (B,Tp,A) with features cond (B,To,D)."""
        raise NotImplementedError(f'{type(self).__name__} must define flow_loss')

    def encode(self, model, obs):
        """Features `sample_chunk` consumes, computed once per `sample_actions` call. Default: the policy
        encoder's (B, To, D) tensor; an agent may return any structure its `sample_chunk` reads."""
        return model['encoder'](obs)

    def sample_chunk(self, model, features, z, generator):
        """A normalized chunk (B,Tp,A) in [-1, 1] from noise z (B,Tp,A) and `encode`'s features."""
        raise NotImplementedError(f'{type(self).__name__} must define sample_chunk')

    # ----------------------------------------------------------------- noise
    def fit_noise_prior(self, action_chunks):
        """Set `noise_factor` to the symmetric square root of the covariance of the normalized chunks
        (N, Tp, A); eigenvalues are floored at 1e-4 of their mean (constant or padded dims keep a little
        noise). None: N(0, I), with a warning."""
        if action_chunks is None:
            warnings.warn(f"config.noise_prior='chunk_cov' but {type(self).__name__}.create got no "
                          'action_chunks: the flow noise is N(0, I)', stacklevel=3)
            self.noise_factor = None
            return
        chunks = torch.as_tensor(np.asarray(action_chunks), dtype=torch.float64)
        want = (int(self.config.horizon_length), self.action_dim)
        if chunks.dim() != 3 or tuple(chunks.shape[1:]) != want or len(chunks) < 2:
            raise ValueError(f'action_chunks has shape {tuple(chunks.shape)}, expected (N >= 2, *{want}) '
                             '(horizon_length, action dim)')
        flat = self.normalizer.normalize('actions', chunks).flatten(1)  # (N, Tp*A), normalized units
        eigvals, eigvecs = torch.linalg.eigh(torch.cov(flat.T))
        eigvals = eigvals.clamp(min=max(1e-4 * eigvals.mean().item(), 1e-12))
        self.noise_factor = ((eigvecs * eigvals.sqrt()) @ eigvecs.T).float().to(self.device)

    def noise(self, shape, generator, dtype=torch.float32):
        """Flow noise z of `shape` (B, Tp, A) from the prior (config.noise_prior), drawn with `generator`."""
        eps = torch.randn(shape, device=self.device, dtype=dtype, generator=generator)
        if self.noise_factor is None:
            return eps
        with torch.autocast(torch.device(self.device).type, enabled=False):  # z in `dtype`, not bf16
            return (eps.flatten(1) @ self.noise_factor.to(dtype).T).view(shape)

    def sampling_noise(self, shape, generator, dtype=torch.float32):
        """The noise z a trained agent samples from: the prior's, times config.sample_temperature."""
        return self.noise(shape, generator, dtype) * float(self.config.sample_temperature)

    def randn_like(self, x):
        """Flow noise shaped like x (B, Tp, A) from the prior, drawn with the agent's training generator."""
        return self.noise(x.shape, self.rng, x.dtype)

    # ----------------------------------------------------------------- training
    def actor_loss(self, batch):
        """BC loss on a normalized batch on the agent's device."""
        cond = self.model['encoder'](batch['observations'])  # (B, To, D)
        return self.flow_loss(self.model['actor'], cond, batch['actions'])

    def total_loss(self, batch):
        """Everything optimised in one step (FQL adds the critic)."""
        return self.actor_loss(batch)

    def after_step(self):
        """Hook run after each optimizer step (FQL: target network update)."""

    def prepare_batch(self, batch):
        """Move a raw `sample_sequence` batch to the device and normalize observations and actions."""
        for key in ('observations', 'actions'):
            if key not in batch:
                raise KeyError(f'batch has no {key!r}; expected the keys of Dataset.sample_sequence, '
                               f'got {list(batch)}')
        out = to_torch(dict(batch), self.device)
        for key in ('observations', 'next_observations'):
            if key in out:
                self.check_observations(out[key])
                out[key] = self.normalizer.normalize_obs(out[key])
        out['actions'] = self.normalizer.normalize('actions', out['actions'])
        return out

    def update(self, batch):
        """One optimisation step on a raw batch; returns float logging info."""
        batch = self.prepare_batch(batch)
        self.model.train()
        with autocast(self.device, self.config.use_bf16):
            loss, info = self.total_loss(batch)
        info.update(self.trainer.apply(loss))
        self.after_step()
        info['train/step'] = self.trainer.step
        return host_floats(info)

    @torch.no_grad()
    def validation_losses(self, batch, generator):
        """The training losses on a held-out raw batch, in eval mode (center crops, no dropout), with all
        noise and times drawn from `generator`; no update, no draw from the agent's or the global RNGs."""
        batch = self.prepare_batch(batch)
        train_rng, self.rng = self.rng, generator
        try:
            with eval_mode(self.model), autocast(self.device, self.config.use_bf16):
                _, info = self.total_loss(batch)
        finally:
            self.rng = train_rng
        return info

    # ----------------------------------------------------------------- sampling
    def check_observations(self, obs):
        """Raise a clear error when an observation key is missing or has the wrong shape."""
        to = int(self.config.obs_steps)
        for key, meta in self.shape_meta['obs'].items():
            if key not in obs:
                raise KeyError(f'observations lack key {key!r}; expected {sorted(self.shape_meta["obs"])}')
            want = (to, *meta['shape'])
            if tuple(obs[key].shape[1:]) != want:
                raise ValueError(f'observations[{key!r}] has shape {tuple(obs[key].shape)}, '
                                 f'expected (B, {want})')

    @torch.no_grad()
    def sample_actions(self, observations, seed=None, temperature=None):
        """Action chunks (B,Tp,A) in the dataset's action units, from EMA weights in eval mode.

        observations: dict of (B, To, ...) raw arrays/tensors. `seed` makes the noise reproducible;
        without it the agent's own sampling generator advances. `temperature` replaces
        config.sample_temperature for this call (online collection: train_bc.py --collect_temperature).
        """
        if temperature is not None:
            _require(float(temperature) >= 0, 'sample_temperature', temperature, 'a float >= 0')
            saved = self.config.sample_temperature
            self.config.sample_temperature = float(temperature)
            try:
                return self.sample_actions(observations, seed)
            finally:
                self.config.sample_temperature = saved
        obs = to_torch(dict(observations), self.device)
        self.check_observations(obs)
        obs = self.normalizer.normalize_obs(obs)
        generator = self.sample_rng if seed is None else torch.Generator(self.device).manual_seed(int(seed))
        model = self.trainer.eval_model()
        batch_size = next(iter(obs.values())).shape[0]
        with eval_mode(model), autocast(self.device, self.config.use_bf16):
            features = self.encode(model, obs)  # encoders run once per call, not per integration step
            shape = (batch_size, int(self.config.horizon_length), self.action_dim)
            z = self.sampling_noise(shape, generator)
            chunk = self.sample_chunk(model, features, z, generator)
        return self.normalizer.unnormalize('actions', chunk.float())

    # ----------------------------------------------------------------- checkpoints
    def extra_state(self):
        """Modules outside the optimiser to checkpoint (FQL: target critic)."""
        return {}

    def load_extra_state(self, state):
        """Restore `extra_state()`."""

    def save(self, path, extra=None, overwrite=False):
        """Write the agent's state: config, shape_meta, normalizer, weights, optimizer, scheduler, EMA, step
        and the agent's own generators; `extra` (the run's state: step, dataset and global RNGs) is stored
        as is and never read by the agent."""
        payload = {
            'format': CHECKPOINT_FORMAT, 'agent_name': self.name, 'seed': self.seed,
            'config': self.config.to_dict(), 'shape_meta': self.shape_meta,
            'normalizer': self.normalizer.state_dict(), 'trainer': self.trainer.state_dict(),
            'extra_state': self.extra_state(),
            'rng': {'train': self.rng.get_state(), 'sample': self.sample_rng.get_state()},
            'noise_factor': None if self.noise_factor is None else self.noise_factor.cpu(),
            'extra': extra,
        }
        save_checkpoint(path, payload, overwrite=overwrite)

    @classmethod
    def load(cls, path, device=None, overrides=None):
        """Rebuild an agent saved with `save` (device None = 'auto'); `extra` comes back as `agent.extra`.
        `overrides` may set RUNTIME_FIELDS (e.g. {'compile': False} for a checkpoint trained compiled).

        The global RNGs belong to the run, not the agent: they are left alone (older checkpoints that also
        hold them under rng['global'] load the same way)."""
        payload = load_checkpoint(path, device='cpu')
        if payload.get('format') != CHECKPOINT_FORMAT:
            raise ValueError(f'{path!r} is not an agent checkpoint (format {payload.get("format")!r}, '
                             f'expected {CHECKPOINT_FORMAT!r})')
        if payload['agent_name'] != cls.name:
            name = payload['agent_name']
            raise ValueError(f'{path!r} holds agent {name!r}, cannot load it as {cls.name!r}; '
                             f'use agents.AGENTS[{name!r}].load')
        config = ml_collections.ConfigDict(payload['config'])
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
        if bad:
            raise ValueError(f'Agent.load overrides {bad} are not runtime fields; allowed: {RUNTIME_FIELDS}')
        defaults = get_base_config()
        for name in RUNTIME_FIELDS:  # checkpoints written before a field existed get its default
            if name in overrides or name not in config:
                config[name] = overrides.get(name, defaults[name])
        if 'noise_prior' not in config:  # written before the field: standard normal noise
            config.noise_prior = 'standard'
        if 'sample_temperature' not in config:  # written before the field: the prior's noise as drawn
            config.sample_temperature = 1.0
        with warnings.catch_warnings():  # the fitted prior comes from the checkpoint below
            warnings.simplefilter('ignore')
            agent = cls.create(payload['shape_meta'], config, None, payload['seed'], pick_device(device))
        factor = payload.get('noise_factor')
        agent.noise_factor = None if factor is None else factor.to(agent.device)
        agent.normalizer = Normalizer.from_state_dict(payload['normalizer'], device=agent.device)
        agent.trainer.load_state_dict(payload['trainer'])
        agent.load_extra_state(payload['extra_state'])
        agent.rng.set_state(payload['rng']['train'].cpu())
        agent.sample_rng.set_state(payload['rng']['sample'].cpu())
        agent.extra = payload['extra']
        return agent
