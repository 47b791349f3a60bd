"""Numerical tests of the agents' math on synthetic data with known answers (state MLP, CPU).

Each trained model is built once per module and reused across its assertions.
"""

import functools

import numpy as np
import pytest
import torch

from agents import AGENTS
from agents.fbc import get_config as fbc_config
from agents.fql import get_config as fql_config
from agents.imfbc import get_config as imfbc_config
from agents.mfbc import get_config as mfbc_config
from agents.mfbc import meanflow_target
from bench.meanflow_screen import BOUNDS, chunk_metrics, screen_config, train

SHAPE_META = {'obs': {'obs': {'shape': [1], 'type': 'low_dim'}}, 'action': {'shape': [2]}}
# Actions are normalized with these bounds: dimension 0 keeps its scale, dimension 1 is shifted and scaled,
# so the un-normalization path is exercised.
STATS = {'actions': {'min': np.array([-1.0, -1.5]), 'max': np.array([1.0, 0.5])},
         'obs': {'min': np.array([-1.0]), 'max': np.array([1.0])}}
SLOPE, SIGMA = 0.4, 0.3  # action dim 0 ~ N(SLOPE * o, SIGMA^2): its mean depends on the observation
MODES, MODE_STD = (-1.0, 0.0), 0.1  # action dim 1: equal mixture of N(mode, MODE_STD^2)
OBS_POINTS = (-0.5, 0.0, 0.5)
CONFIGS = {'fbc': fbc_config, 'mfbc': mfbc_config, 'imfbc': imfbc_config}
CHUNK_STEPS, CHUNK_BATCH, CHUNK_HIDDEN = 5000, 256, (256, 256, 256)  # the budget: <= 90 s per model


def bc_batch(rng, batch_size):
    """Raw batch of (o, a): o ~ U(-1, 1); a0 ~ N(0.4 o, 0.3^2); a1 bimodal at -1 and 0."""
    o = rng.uniform(-1, 1, (batch_size, 1, 1)).astype(np.float32)  # (B, To=1, 1)
    a0 = SLOPE * o[:, 0, 0] + SIGMA * rng.standard_normal(batch_size)
    a1 = rng.choice(MODES, batch_size) + MODE_STD * rng.standard_normal(batch_size)
    actions = np.stack([a0, a1], axis=-1)[:, None].astype(np.float32)  # (B, Tp=1, 2)
    return {'observations': {'obs': o}, 'actions': actions}


@functools.cache
def trained_bc(name, steps=3000):
    """Train the BC agent `name` on the synthetic data once; returns the agent."""
    config = CONFIGS[name]()
    config.obs_steps, config.horizon_length, config.action_steps = 1, 1, 1
    config.encoder = 'identity'
    config.mlp_hidden_dims = (256, 256, 256)
    config.emb_dim = 64
    config.lr, config.warmup_steps, config.lr_decay_steps = 1e-3, 100, steps
    config.flow_steps = 100  # fine Euler grid: 10 steps shrink a narrow Gaussian's std by ~15%
    if name != 'fbc':
        config.adaptive_p = 0.0  # the adaptive weight biases what is learned; time draws stay the defaults
    rng = np.random.default_rng(0)
    chunks = bc_batch(rng, 20000)['actions']  # the training data a 'chunk_cov' noise prior is fitted on
    agent = AGENTS[name].create(SHAPE_META, config, normalizer_stats=STATS, seed=0, action_chunks=chunks)
    for _ in range(steps):
        agent.update(bc_batch(rng, 256))
    return agent


def check_matches_data(agent, std_tol=0.1):
    """Sampled chunks match the conditional Gaussian dimension and the bimodal one."""
    for o in OBS_POINTS:
        obs = {'obs': np.full((4000, 1, 1), o, np.float32)}
        a = agent.sample_actions(obs, seed=1).numpy()[:, 0]  # (N, 2)
        assert abs(a[:, 0].mean() - SLOPE * o) < 0.1 * SIGMA, (o, a[:, 0].mean())
        assert abs(a[:, 0].std() / SIGMA - 1) < std_tol, (o, a[:, 0].std())
        upper = (a[:, 1] > np.mean(MODES)).mean()
        assert 0.4 <= upper <= 0.6, (o, upper)
        near = np.minimum(*(np.abs(a[:, 1] - m) for m in MODES))
        assert np.mean(near < 3 * MODE_STD) > 0.9, (o, np.mean(near < 3 * MODE_STD))


def gaussian_flow(mu, sigma, noise_std=1.0):
    """Analytic u*(x, s, t) and v*(x, s) for 1-D data N(mu, sigma^2) and noise N(0, noise_std^2), linear
    path x_s = (1 - s) z + s a; mu, sigma broadcast."""
    def m(s):
        return s * mu

    def std(s):
        return torch.sqrt((1 - s) ** 2 * noise_std ** 2 + s ** 2 * sigma ** 2)

    def dstd(s):
        return (-(1 - s) * noise_std ** 2 + s * sigma ** 2) / std(s)

    def u_star(x, s, t):
        s, t = s.view(-1, 1, 1), t.view(-1, 1, 1)
        flow = m(t) + std(t) / std(s) * (x - m(s))  # X_{s,t}(x)
        return (flow - x) / (t - s)

    def v_star(x, s):
        s = s.view(-1, 1, 1)
        return mu + dstd(s) / std(s) * (x - m(s))

    return u_star, v_star


def test_meanflow_target_returns_analytic_u():
    """Fed the exact u* and v*, the code's MeanFlow target must return u* (catches tangent / sign errors)."""
    torch.manual_seed(0)
    mu = torch.tensor([0.3, -0.7], dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.3], dtype=torch.float64)
    u_star, v_star = gaussian_flow(mu, sigma)
    b = 64
    s = torch.rand(b, dtype=torch.float64) * 0.8
    t = s + (1 - s) * torch.rand(b, dtype=torch.float64).clamp_min(0.05)
    x = torch.randn(b, 1, 2, dtype=torch.float64) * 1.5
    u, target = meanflow_target(u_star, x, s, t, v_star(x, s))
    torch.testing.assert_close(u, u_star(x, s, t))
    torch.testing.assert_close(target, u_star(x, s, t), rtol=1e-9, atol=1e-9)
    # the target is not trivially u: with a wrong velocity it moves away
    _, wrong = meanflow_target(u_star, x, s, t, -v_star(x, s))
    assert (wrong - u_star(x, s, t)).abs().max() > 1e-2


def test_fbc_matches_data():
    """FBC samples: conditional mean within 0.1 std, std within 10%, 40-60% per mode."""
    check_matches_data(trained_bc('fbc'))


@pytest.mark.parametrize('name', ['mfbc', 'imfbc'])
def test_meanflow_agents_match_data_and_flow_map(name):
    """One-step MFBC / IMFBC samples match the data and the learned u matches the analytic flow map."""
    agent = trained_bc(name)
    check_matches_data(agent)
    model = agent.trainer.eval_model()
    # the noise of dimension 0: N(0, 1), or with the 'chunk_cov' prior the data's std (the two dims are
    # independent in the data, so the fitted factor is diagonal up to sampling error)
    factor = agent.noise_factor
    noise_std = 1.0 if factor is None else float(factor[0, 0])
    assert factor is None or abs(float(factor[0, 1])) < 0.02 * noise_std, factor
    for o in OBS_POINTS:
        mu = SLOPE * o  # normalized == raw units for dimension 0 (bounds -1, 1)
        u_star, _ = gaussian_flow(torch.tensor(mu), torch.tensor(SIGMA), noise_std)
        s = torch.tensor([0.0, 0.0, 0.3, 0.5])
        t = torch.tensor([1.0, 0.5, 0.9, 1.0])
        x0 = torch.tensor([-0.8, 0.4, 0.1, 0.3])
        x = torch.stack([x0, torch.full_like(x0, 0.5)], dim=-1)[:, None]  # (4, 1, 2); dim 1 at its mode gap
        obs = agent.normalizer.normalize_obs({'obs': torch.full((4, 1, 1), o)})
        with torch.no_grad():
            u = agent.average_velocity(model['actor'], model['encoder'](obs))(x, s, t)[:, 0, 0]
        expected = u_star(x[..., :1], s, t)[:, 0, 0]
        assert (u - expected).abs().max() < 0.1, (o, u, expected)


@functools.cache
def trained_chunk_agent(name):
    """MFBC / IMFBC trained on the synthetic chunks of bench.meanflow_screen with the get_config() defaults
    (flow-matching share, time draws, time conditioning, prediction, velocity weight, lr, sample_steps); only
    the size (MLP, emb_dim, batch, steps, schedule length) and adaptive_p = 0 differ. Returns (agent, s)."""
    config = screen_config(name, CHUNK_STEPS, hidden=CHUNK_HIDDEN)
    return train(name, config, CHUNK_STEPS, batch_size=CHUNK_BATCH)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['mfbc', 'imfbc'])
def test_meanflow_defaults_learn_chunks_in_one_step(name):
    """One-step samples of the default MFBC / IMFBC match correlated, bimodal, smooth chunks (Tp = 8) per
    observation: mean within 0.1 std, std within 15%, 40-60% per mode, corr(a_0, a_{Tp-1}) within 0.05, mean
    squared second difference within 20%."""
    agent, secs = trained_chunk_agent(name)
    assert int(agent.config.sample_steps) == 1
    errors = chunk_metrics(agent)
    bad = {k: round(v, 3) for k, v in errors.items() if abs(v) > BOUNDS[k]}
    assert not bad, (bad, errors, f'{secs:.0f} s')


def test_time_conditioning_and_prediction_reach_the_network():
    """time_cond 't_gap' feeds (t, t - s) in the network's (s, t) slots, 'st' feeds (s, t); prediction 'x'
    reads the output D as the chunk at t = 1: u = (D - x) / (1 - s), so one step from s = 0 returns D."""
    seen = []
    out = torch.tensor([[[0.3, -0.2]], [[0.1, 0.4]]])  # D (2, 1, 2)

    def net(x, s, t, cond):
        seen.append((s.clone(), t.clone()))
        return out, None

    s, t = torch.tensor([0.2, 0.0]), torch.tensor([0.5, 1.0])
    x = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.5]]])
    for time_cond, expected in (('st', (s, t)), ('t_gap', (t, t - s))):
        config = mfbc_config()
        config.time_cond, config.prediction = time_cond, 'u'
        agent = AGENTS['mfbc'].create(SHAPE_META, config, normalizer_stats=STATS, seed=0)
        torch.testing.assert_close(agent.average_velocity(net, None)(x, s, t), out)
        torch.testing.assert_close(seen[-1], expected)
    config = mfbc_config()
    config.prediction = 'x'
    agent = AGENTS['mfbc'].create(SHAPE_META, config, normalizer_stats=STATS, seed=0)
    u = agent.average_velocity(net, None)(x, s, t)
    torch.testing.assert_close(u, (out - x) / (1 - s).view(2, 1, 1))
    one_step = x + (1 - 0) * agent.average_velocity(net, None)(x, torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(one_step, out)


# ------------------------------------------------------------------------------------------------ ACFQL
GAMMA, HORIZON = 0.5, 2
MODE = 0.5  # the two chunk modes are +MODE and -MODE (constant chunks, plus noise)
R_GOOD, R_BAD = -1.0, -1.0 - GAMMA  # chunk returns of -1 / 0 step rewards: one vs two failure steps
Q_GOOD = R_GOOD / (1 - GAMMA ** HORIZON)  # the good mode forever
Q_BAD = R_BAD + GAMMA ** HORIZON * Q_GOOD  # the bad mode once, then the good one


def good_chunk_sign(o):
    """Which mode is the better one depends on the observation: the mode whose sign is o's."""
    return np.where(o > 0, 1.0, -1.0)


def fql_batch(rng, batch_size):
    """Offline data: half the chunks on each mode, independent of o; the better mode is sign(o)'s, so the
    critic must learn how the chunk's value depends on the observation. Never terminates."""
    o = rng.uniform(-1, 1, (batch_size, 1, 1)).astype(np.float32)
    sign = np.where(rng.random(batch_size) < 0.5, 1.0, -1.0)
    good = sign == good_chunk_sign(o[:, 0, 0])
    actions = (sign[:, None, None] * MODE + 0.05 * rng.standard_normal((batch_size, HORIZON, 1)))
    return {'observations': {'obs': o}, 'actions': actions.astype(np.float32),
            'next_observations': {'obs': rng.uniform(-1, 1, (batch_size, 1, 1)).astype(np.float32)},
            'rewards': np.where(good, R_GOOD, R_BAD).astype(np.float32),
            'masks': np.ones(batch_size, np.float32), 'valid': np.ones((batch_size, HORIZON), np.float32)}


@functools.cache
def trained_fql(use_q_loss, steps=2500):
    """Train ACFQL on the two-mode data once per setting."""
    config = fql_config()
    config.obs_steps, config.horizon_length, config.action_steps = 1, HORIZON, HORIZON
    config.encoder = 'mlp'
    config.encoder_hidden_dims = (32,)
    config.mlp_hidden_dims = (128, 128, 128)
    config.value_hidden_dims = (128, 128)
    config.emb_dim = 32
    config.lr = 1e-3
    config.discount = GAMMA
    config.tau = 0.02
    config.alpha = 0.1
    config.use_q_loss = use_q_loss
    shape_meta = {'obs': {'obs': {'shape': [1], 'type': 'low_dim'}}, 'action': {'shape': [1]}}
    rng = np.random.default_rng(1)
    chunks = fql_batch(np.random.default_rng(4), 4096)['actions']  # the default prior's fit, as train_bc's
    agent = AGENTS['fql'].create(shape_meta, config, seed=0, action_chunks=chunks)
    for _ in range(steps):
        agent.update(fql_batch(rng, 256))
    return agent


EVAL_OBS = np.concatenate([np.linspace(-1, -0.1, 32), np.linspace(0.1, 1, 32)]).astype(np.float32)


def good_fraction(agent):
    """Fraction of one-step policy chunks on the better mode of their observation (|o| >= 0.05)."""
    o = np.random.default_rng(2).uniform(-1, 1, 2000)
    o = np.where(np.abs(o) < 0.05, 0.5, o).astype(np.float32)
    chunks = agent.sample_actions({'obs': o.reshape(-1, 1, 1)}, seed=3).numpy()  # (N, Tp, 1)
    return float((np.sign(chunks.mean(axis=(1, 2))) == good_chunk_sign(o)).mean())


def critic_values(agent, sign):
    """Mean critic value, over EVAL_OBS, of the constant chunk sign * good_chunk_sign(o) * MODE."""
    obs = agent.normalizer.normalize_obs({'obs': torch.from_numpy(EVAL_OBS).view(-1, 1, 1)})
    chunks = torch.from_numpy(sign * good_chunk_sign(EVAL_OBS) * MODE).float().view(-1, 1, 1)
    critic = agent.critic_modules(agent.model)
    with torch.no_grad():
        return critic['critic'](critic['encoder'](obs), chunks.expand(-1, HORIZON, 1)).mean()


def test_acfql_prefers_the_better_mode_and_learns_returns():
    """The better chunk depends on the observation. The critic approaches the true chunk values on both
    sides of o = 0; >= 90% of one-step chunks land on their observation's better mode."""
    agent = trained_fql(True)
    q_good, q_bad = critic_values(agent, 1.0), critic_values(agent, -1.0)
    assert abs(q_good - Q_GOOD) < 0.15, (float(q_good), Q_GOOD)
    assert abs(q_bad - Q_BAD) < 0.15, (float(q_bad), Q_BAD)
    assert good_fraction(agent) >= 0.9


def test_acfql_without_q_term_reproduces_bc():
    """With the Q term off, the distilled one-step policy keeps the data's 50/50 split at every o."""
    assert 0.4 <= good_fraction(trained_fql(False)) <= 0.6


@pytest.mark.parametrize('name', ['mfbc', 'imfbc'])
def test_flow_matching_share_keeps_the_earlier_draw(name):
    """The s = t share of the MeanFlow time draw follows the earlier (noisier) of the two logit-normal draws.

    With the logit-normal(mu, sigma) draws, P(draw < 0.2) = p = Phi((logit 0.2 - mu) / sigma), so the earlier
    of two draws is below 0.2 with probability 1 - (1 - p)^2 and the later one with p^2.
    """
    config = CONFIGS[name]()
    config.flow_ratio = 0.5
    agent = AGENTS[name].create(SHAPE_META, config, normalizer_stats=STATS, seed=0)
    s, t = agent.sample_times(200_000, 'cpu')
    assert bool((s <= t).all())
    same = s == t
    assert abs(same.float().mean().item() - 0.5) < 0.01
    p = torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor((np.log(0.2 / 0.8) - config.time_mu)
                                                              / config.time_sigma)).item()
    earlier, later = 1 - (1 - p) ** 2, p ** 2
    assert abs((t[same] < 0.2).float().mean().item() - earlier) < 0.005, 'not the earlier draw'
    assert abs((s[~same] < 0.2).float().mean().item() - earlier) < 0.005  # s of the MeanFlow share too
    assert abs((t[~same] < 0.2).float().mean().item() - later) < 0.002
