"""Screen MFBC / IMFBC settings on synthetic action chunks (no simulator): one-step samples vs the data.

    OMP_NUM_THREADS=1 python -m bench.meanflow_screen [--settings mf_default,imf_w1,...] [--steps 5000]

Data (`chunk_batch`): o ~ U(-1, 1) (one conditional dimension), chunks of Tp = 8 positions, two action dims.
Dim 0 is a smooth trajectory a_k = base + slope * k / Tp + noise (base depends on o), so the positions are
strongly but not fully correlated; dim 1 is bimodal (a constant offset at -0.6 or +0.6, 50/50, plus noise).
The noise is smooth along the chunk, as in real action chunks (see NOISE_STD).
Each setting trains one agent (MLP 3 x 256, batch 256) and prints one markdown row of the five metrics
(`chunk_metrics`), each the worst over the observations in OBS_POINTS; the test module reuses both.
"""

import argparse
import importlib
import time

import numpy as np
import torch
from torch import nn

from agents import AGENTS
from agents.imfbc import IMFBCAgent

TP, ACTION_DIM = 8, 2
SHAPE_META = {'obs': {'obs': {'shape': [1], 'type': 'low_dim'}}, 'action': {'shape': [ACTION_DIM]}}
STATS = {'actions': {'min': np.array([-1.6, -1.6]), 'max': np.array([1.6, 1.6])},
         'obs': {'min': np.array([-1.0]), 'max': np.array([1.0])}}
BASE_GAIN, BASE_STD = 0.5, 0.25  # dim 0: base = 0.5 o + 0.25 N(0, 1)
SLOPE_MEAN, SLOPE_STD = 0.4, 0.3  # dim 0: slope ~ N(0.4, 0.3^2), a_k = base + slope * (k / Tp - 0.5)
MODES, OFFSET_STD = (-0.6, 0.6), 0.1  # dim 1: mode + 0.1 N(0, 1), the same for the whole chunk
# Noise per chunk and dim: a smooth Gaussian process over the positions (squared-exponential kernel, length
# NOISE_LENGTH positions), not white noise. Real action chunks are smooth: the mean squared second difference
# of normalized 8-step chunks over the per-position variance is 0.01-0.05 for the arm dims of our scripted
# Lift / Can / Square data (0.1-0.3 for the gripper); white noise would give 6, this noise with dim 0's
# spread gives 0.014 (dim 1: 0.006; `python -m bench.meanflow_screen --roughness [files]` prints them).
NOISE_STD, NOISE_LENGTH = 0.05, 1.2
OBS_POINTS = (-0.5, 0.0, 0.5)
PRIOR_CHUNKS = 20000  # training chunks that fit a 'chunk_cov' noise prior (`train`)
# pass bounds of the five metrics (per observation): |mean error| / data std, |std ratio - 1|,
# |mass of the upper mode - 0.5|, |corr(a_0, a_{Tp-1}) error|, |mean squared 2nd difference ratio - 1|
BOUNDS = {'mean': 0.1, 'std': 0.15, 'mode': 0.1, 'corr': 0.05, 'd2': 0.2}


def noise_cholesky():
    """Cholesky factor (Tp, Tp) of the noise covariance NOISE_STD^2 exp(-(i - j)^2 / (2 NOISE_LENGTH^2))."""
    k = np.arange(TP)
    cov = NOISE_STD ** 2 * np.exp(-(k[:, None] - k[None]) ** 2 / (2 * NOISE_LENGTH ** 2))
    return np.linalg.cholesky(cov + 1e-10 * np.eye(TP))


def sample_chunks(rng, o):
    """Raw chunks (N, Tp, 2) for observations o (N,)."""
    n = o.shape[0]
    k = np.arange(TP) / TP - 0.5  # (Tp,)
    base = BASE_GAIN * o + BASE_STD * rng.standard_normal(n)
    slope = SLOPE_MEAN + SLOPE_STD * rng.standard_normal(n)
    a0 = base[:, None] + slope[:, None] * k[None]  # (N, Tp)
    a1 = rng.choice(MODES, n)[:, None] + OFFSET_STD * rng.standard_normal((n, 1)) + 0 * k[None]
    a = np.stack([a0, a1], axis=-1)  # (N, Tp, 2)
    noise = np.einsum('ij,njd->nid', noise_cholesky(), rng.standard_normal(a.shape))  # smooth along Tp
    return (a + noise).astype(np.float32)


def chunk_batch(rng, batch_size):
    """Raw training batch: o ~ U(-1, 1) as (B, To=1, 1), chunks (B, Tp, 2)."""
    o = rng.uniform(-1, 1, batch_size).astype(np.float32)
    return {'observations': {'obs': o[:, None, None]}, 'actions': sample_chunks(rng, o)}


def rl_chunk_batch(rng, batch_size):
    """`chunk_batch` with the RL fields ACFQL's update reads: zero rewards, no ends, every position valid,
    next observations drawn like the observations (the screen runs ACFQL with its Q term off, so only its
    BC flow and the one-step distillation learn anything)."""
    batch = chunk_batch(rng, batch_size)
    o = rng.uniform(-1, 1, batch_size).astype(np.float32)
    batch.update(next_observations={'obs': o[:, None, None]}, rewards=np.zeros(batch_size, np.float32),
                 masks=np.ones(batch_size, np.float32), valid=np.ones((batch_size, TP), np.float32))
    return batch


def chunk_stats(a):
    """Statistics of chunks a (N, Tp, 2): dim-0 per-position mean and std, upper-mode mass of dim 1,
    corr(a_0, a_{Tp-1}) of dim 0, mean squared second difference along the chunk (both dims)."""
    d2 = a[:, 2:] - 2 * a[:, 1:-1] + a[:, :-2]
    return {'mean': a[..., 0].mean(0), 'std': a[..., 0].std(0),
            'mode': float((a[..., 1].mean(1) > np.mean(MODES)).mean()),
            'corr': float(np.corrcoef(a[:, 0, 0], a[:, -1, 0])[0, 1]), 'd2': float((d2 ** 2).mean())}


def roughness(chunks):
    """Mean squared second difference along the chunk over the per-position variance, per dim: (D,)."""
    d2 = chunks[:, 2:] - 2 * chunks[:, 1:-1] + chunks[:, :-2]
    return (d2 ** 2).mean((0, 1)) / chunks.var(0).mean(0)


def file_chunks(path, stride=4):
    """Normalized (min/max to [-1, 1]) action chunks (N, Tp, A) of every demo of a robomimic file."""
    import h5py  # here: the screen itself needs no file reader
    with h5py.File(path, 'r') as f:
        demos = [f['data'][k]['actions'][:] for k in f['data']]
    lo, hi = np.concatenate(demos).min(0), np.concatenate(demos).max(0)
    return np.stack([2 * (d[i:i + TP] - lo) / np.maximum(hi - lo, 1e-9) - 1
                     for d in demos for i in range(0, len(d) - TP + 1, stride)])


def chunk_metrics(agent, n=4000, seed=1):
    """The five signed errors of the agent's samples vs the data, each the largest in size over OBS_POINTS
    (std, corr and d2 > 0: too wide, too correlated, too rough)."""
    worst = dict.fromkeys(BOUNDS, 0.0)
    rng = np.random.default_rng(seed)
    for o in OBS_POINTS:
        data = chunk_stats(sample_chunks(rng, np.full(n, o, np.float32)))
        obs = {'obs': np.full((n, 1, 1), o, np.float32)}
        got = chunk_stats(agent.sample_actions(obs, seed=seed).numpy())
        std = got['std'] / data['std'] - 1
        errs = {'mean': np.abs(got['mean'] - data['mean']).max() / data['std'].min(),
                'std': std[np.abs(std).argmax()],
                'mode': got['mode'] - 0.5,
                'corr': got['corr'] - data['corr'],
                'd2': got['d2'] / data['d2'] - 1}
        worst = {k: float(v) if abs(v) > abs(worst[k]) else worst[k] for k, v in errs.items()}
    return worst


def screen_config(name, steps, hidden=(256, 256, 256), **overrides):
    """The agent's get_config() resized for the screen (MLP `hidden`, emb 64, To 1, Tp 8, a cosine schedule
    of `steps` with 100 warmup steps), adaptive_p = 0, then `overrides`. Every other field is the default."""
    module = SCREEN_AGENTS[name][1] if name in SCREEN_AGENTS else name
    config = importlib.import_module(f'agents.{module}').get_config()
    config.obs_steps, config.horizon_length, config.action_steps = 1, TP, TP
    config.encoder = 'identity'
    config.mlp_hidden_dims = tuple(hidden)
    config.emb_dim = 64
    config.warmup_steps, config.lr_decay_steps = 100, steps
    if 'adaptive_p' in config:
        config.adaptive_p = 0.0
    config.update(overrides)
    return config


class VelocityHeadMLP(nn.Module):
    """The MLP plus iMF's auxiliary velocity head: a second linear output on the same trunk. `forward` is
    the MLP's (u); `velocity(x, s, t, cond)` is the head's instantaneous velocity at x, conditioned on both
    times as in the official iMF (its v-head shares the u pass's inputs, and is read at zero gap for the
    JVP tangent)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp
        self.v_out = nn.Linear(mlp.out.in_features, mlp.out.out_features)

    def forward(self, x, s, t, cond):
        return self.mlp(x, s, t, cond)

    def velocity(self, x, s, t, cond):
        return self.v_out(self.mlp.features(x, s, t, cond)).reshape(x.shape)


class VelocityHeadIMFBC(IMFBCAgent):
    """IMFBC with iMF's separate velocity head (screen only; the agent uses u(x, s, s) of the same output):
    the head at (x_s, s, s) is the JVP tangent, and it is trained at the sample's own (x_s, s, t) toward
    v_cond with `velocity_loss_weight`, beside the compound loss."""

    def build_modules(self, config):
        modules = super().build_modules(config)
        modules['actor'] = VelocityHeadMLP(modules['actor'])
        return modules

    def velocities(self, net, u_fn, cond, x_s, s, t):
        with torch.no_grad():
            tangent = net.velocity(x_s, s, s, cond)
        return tangent, net.velocity(x_s, s, t, cond)


SCREEN_AGENTS = {'imfbc_vhead': (VelocityHeadIMFBC, 'imfbc')}  # name -> (class, module of its get_config)


def train(name, config, steps, seed=0, batch_size=256, draw=chunk_batch):
    """Train agent `name` (of AGENTS or SCREEN_AGENTS) with `config` on batches from `draw` (`chunk_batch`,
    or `rl_chunk_batch` for an agent that reads RL fields) for `steps` steps; returns (agent, seconds)."""
    rng = np.random.default_rng(seed)
    chunks = chunk_batch(rng, PRIOR_CHUNKS)['actions']  # the data a noise prior is fitted on
    cls = SCREEN_AGENTS[name][0] if name in SCREEN_AGENTS else AGENTS[name]
    agent = cls.create(SHAPE_META, config, normalizer_stats=STATS, seed=seed, action_chunks=chunks)
    start = time.perf_counter()
    for _ in range(steps):
        agent.update(draw(rng, batch_size))
    return agent, time.perf_counter() - start


# setting -> (agent, overrides of screen_config[, batch function, default chunk_batch]). ln(mu, sigma): the
# ordered pair of logit-normal draws; fr: flow_ratio; end: one_step_ratio; gap: time_cond='t_gap';
# p / c: adaptive weight; w: IMFBC's velocity_loss_weight.
LN02 = dict(time_mu=0.0, time_sigma=2.0, flow_ratio=0.5, lr=1e-3)
SETTINGS = {
    'mf_ln0.4_1_fr0.75': ('mfbc', dict(LN02, time_mu=0.4, time_sigma=1.0, flow_ratio=0.75)),
    'mf_ln0.4_1_fr0.5': ('mfbc', dict(LN02, time_mu=0.4, time_sigma=1.0)),
    'mf_ln0_1.5_fr0.5': ('mfbc', dict(LN02, time_sigma=1.5)),
    'mf_ln0_2_fr0.5': ('mfbc', LN02),
    'mf_ln0_2_fr0.25': ('mfbc', dict(LN02, flow_ratio=0.25)),
    'mf_ln0_2_fr0.25_end0.25': ('mfbc', dict(LN02, flow_ratio=0.25, one_step_ratio=0.25)),
    'mf_ln0_2_fr0.5_end0.25': ('mfbc', dict(LN02, one_step_ratio=0.25)),
    'mf_ln0_2_fr0.5_gap': ('mfbc', dict(LN02, time_cond='t_gap')),
    'mf_ln0_2_fr0.5_p1': ('mfbc', dict(LN02, adaptive_p=1.0, adaptive_c=1e-2)),
    'mf_ln0_2_fr0.5_p0.5': ('mfbc', dict(LN02, adaptive_p=0.5, adaptive_c=1e-3)),
    'mf_ln0_2_fr0.5_lr3e-4': ('mfbc', dict(LN02, lr=3e-4)),
    'mf_ln0_2_fr0.5_lr1e-4': ('mfbc', dict(LN02, lr=1e-4)),
    'imf_w0': ('imfbc', dict(LN02, velocity_loss_weight=0.0)),
    'imf_w0.5': ('imfbc', dict(LN02, velocity_loss_weight=0.5)),
    'imf_w1': ('imfbc', dict(LN02, velocity_loss_weight=1.0)),
    'imf_fr0.25_w0': ('imfbc', dict(LN02, flow_ratio=0.25, velocity_loss_weight=0.0)),
    'imf_fr0.25_w0.5': ('imfbc', dict(LN02, flow_ratio=0.25, velocity_loss_weight=0.5)),
    'imf_fr0.25_w1': ('imfbc', dict(LN02, flow_ratio=0.25, velocity_loss_weight=1.0)),
    'fbc_10_euler': ('fbc', dict(lr=1e-3)),  # reference: FBC's default 10 Euler steps, same net and data
    # get_config() as it stands, as the numerics tests train it (p 0, lr 1e-3)
    'mf_default': ('mfbc', dict(lr=1e-3)),
    'imf_default': ('imfbc', dict(lr=1e-3)),
    'mf_default_p0.5': ('mfbc', dict(lr=1e-3, adaptive_p=0.5, adaptive_c=1e-3)),  # with its adaptive weight
    'mf_default_fourier': ('mfbc', dict(lr=1e-3, timestep_embedding='fourier')),
    # the network's output: 'u' (MeanFlow's average velocity) against 'x' (the chunk at t = 1)
    'mf_u': ('mfbc', dict(lr=1e-3, prediction='u')),
    'mf_x': ('mfbc', dict(lr=1e-3, prediction='x')),
    'mf_x_fr0.5': ('mfbc', dict(lr=1e-3, prediction='x', flow_ratio=0.5)),
    'imf_u_w1': ('imfbc', dict(lr=1e-3, prediction='u', velocity_loss_weight=1.0)),
    'imf_x_w0': ('imfbc', dict(lr=1e-3, prediction='x', velocity_loss_weight=0.0)),
    'imf_x_w1': ('imfbc', dict(lr=1e-3, prediction='x', velocity_loss_weight=1.0)),
    # the noise prior: N(0, I) ('std') against N(0, Sigma) of the data's chunks ('cov', the default now)
    'mf_std_x': ('mfbc', dict(noise_prior='standard', prediction='x')),  # the previous default
    'mf_std_u': ('mfbc', dict(noise_prior='standard', prediction='u')),
    'mf_cov_x': ('mfbc', dict(noise_prior='chunk_cov', prediction='x')),
    'mf_cov_u': ('mfbc', dict(noise_prior='chunk_cov', prediction='u')),  # = get_config()
    'mf_cov_u_fr0.5': ('mfbc', dict(flow_ratio=0.5)),
    'mf_cov_u_gap': ('mfbc', dict(time_cond='t_gap')),
    'imf_cov_u_w0': ('imfbc', dict(velocity_loss_weight=0.0)),
    'imf_cov_u_w0.5': ('imfbc', dict(velocity_loss_weight=0.5)),
    'imf_cov_u_w1': ('imfbc', dict(velocity_loss_weight=1.0)),  # = get_config()
    'imf_std_x_w1': ('imfbc', dict(noise_prior='standard', prediction='x')),  # the previous default
    # iMF's separate velocity head (the official code's form) against u(x, s, s) above
    'imf_vhead_w1': ('imfbc_vhead', dict(velocity_loss_weight=1.0)),
    'imf_vhead_w0.5': ('imfbc_vhead', dict(velocity_loss_weight=0.5)),
    'fbc_cov': ('fbc', dict(lr=1e-3, noise_prior='chunk_cov')),  # FBC's 10 Euler steps from the same prior
    # ACFQL's one-step policy distilled from its BC flow, Q term off: its default (N(0, I), the network
    # outputs the chunk) against the chunk prior with the one-step policy z + net(z, 0, 1)
    'fql_noq_std_x': ('fql', dict(use_q_loss=False), rl_chunk_batch),
    'fql_noq_cov_u': ('fql', dict(use_q_loss=False, noise_prior='chunk_cov', onestep_prediction='u'),
                      rl_chunk_batch),
}


def main(argv=None):
    """Train each selected setting once and print a markdown table of the five metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', default=','.join(SETTINGS), help='comma-separated keys of SETTINGS')
    parser.add_argument('--steps', type=int, default=5000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--hidden', default='256,256,256', help='MLP hidden widths')
    parser.add_argument('--batch', type=int, default=256)
    parser.add_argument('--roughness', nargs='*', default=None, metavar='HDF5',
                        help='only print the roughness (mean squared 2nd difference / variance) per action '
                             'dim of the synthetic chunks and of the given robomimic files')
    args = parser.parse_args(argv)
    if args.roughness is not None:
        o = np.random.default_rng(0).uniform(-1, 1, 20000).astype(np.float32)
        print('synthetic chunks:', np.round(roughness(sample_chunks(np.random.default_rng(1), o)), 4))
        for path in args.roughness:
            print(f'{path}:', np.round(roughness(file_chunks(path)), 4))
        return
    torch.set_num_threads(1)
    keys = list(BOUNDS)
    print('| setting | ' + ' | '.join(keys) + ' | pass | train s |')
    print('|---' * (len(keys) + 3) + '|')
    for key in args.settings.split(','):
        name, overrides, *draw = SETTINGS[key]  # an optional third entry: the batch function
        hidden = tuple(int(h) for h in args.hidden.split(','))
        config = screen_config(name, args.steps, hidden=hidden, **overrides)
        agent, secs = train(name, config, args.steps, args.seed, args.batch, *draw)
        m = chunk_metrics(agent)
        ok = all(abs(m[k]) <= BOUNDS[k] for k in keys)
        print(f'| {key} | ' + ' | '.join(f'{m[k]:+.3f}' for k in keys) + f' | {"yes" if ok else "no"} '
              f'| {secs:.0f} |', flush=True)


if __name__ == '__main__':
    main()
