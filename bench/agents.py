"""Agent benchmarks: sample_actions latency (B=1, B=64), encoder share, train-step time, one-step speed-up,
and the cost of an ACFQL update against an FBC update.

`python -m bench.agents [--quick] [--threads N] [--networks chiunet,...] [--obs-types state,image]`
prints one JSON line per agent x network x obs type and a summary of the MFBC/IMFBC one-step speed-up over
FBC's `flow_steps` Euler steps on the same network. `python -m bench` calls `main`.
`python -m bench.agents --update-ratio [--rounds N]` prints the FQL / FBC update-time ratio instead, with the
shares of its parts (the Euler distillation target, the critic loss and the actor loss, each forward +
backward) in units of one FBC update.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from agents import AGENTS
from agents.fbc import euler_flow
from utils.shape_meta import random_obs
from utils.training import eval_mode

SHAPE_METAS = {  # robomimic Lift/Can/Square layout: 2 cameras at 84x84 + proprioception
    'state': {'obs': {'object': {'shape': [14], 'type': 'low_dim'},
                      'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
                      'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
                      'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'}},
              'action': {'shape': [7]}},
    'image': {'obs': {'agentview_image': {'shape': [3, 84, 84], 'type': 'rgb'},
                      'robot0_eye_in_hand_image': {'shape': [3, 84, 84], 'type': 'rgb'},
                      'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
                      'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
                      'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'}},
              'action': {'shape': [7]}},
}


def stand_in_chunks(horizon, action_dim):
    """Random chunks (256, horizon, action_dim) for a 'chunk_cov' noise prior: the benchmarks measure its
    cost, not its values."""
    return np.random.default_rng(0).uniform(-1, 1, (256, horizon, action_dim))


def make_agent(name, network, obs_type, device='cpu'):
    """The agent's default config with the network and Diffusion Policy's horizons (To 2, Tp 16, Ta 8)."""
    config = AGENTS[name].get_config()
    config.network_type, config.obs_type = network, obs_type
    config.obs_steps, config.horizon_length, config.action_steps = 2, 16, 8
    config.encoder = None  # identity for state, resnet18 for images
    chunks = stand_in_chunks(16, SHAPE_METAS[obs_type]['action']['shape'][0])
    return AGENTS[name].create(SHAPE_METAS[obs_type], config, seed=0, device=device, action_chunks=chunks)


def timed(fn, repeats):
    """Median wall time in ms of `fn()` over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_one(name, network, obs_type, batch_sizes=(1, 64), repeats=3, train_batch=None):
    """Latency of sample_actions per batch size, the encoder's share of it, and optionally a train step."""
    agent = make_agent(name, network, obs_type)
    rng = np.random.default_rng(0)
    to = int(agent.config.obs_steps)
    row = {'agent': name, 'network': network, 'obs_type': obs_type,
           'params_M': round(sum(p.numel() for p in agent.model.parameters()) / 1e6, 2),
           'threads': torch.get_num_threads()}
    model = agent.trainer.eval_model()
    for b in batch_sizes:
        obs = random_obs(agent.shape_meta, b, to, rng)
        total = timed(lambda obs=obs: agent.sample_actions(obs, seed=0), repeats)
        normalized = agent.normalizer.normalize_obs({k: torch.as_tensor(v) for k, v in obs.items()})

        def encode(normalized=normalized):
            with torch.no_grad(), eval_mode(model):
                agent.encode(model, normalized)
        enc = timed(encode, repeats)
        row[f'sample_ms_B{b}'] = round(total, 2)
        row[f'encoder_share_B{b}'] = round(min(1.0, enc / total), 3)
    if train_batch:
        batch = {'observations': random_obs(agent.shape_meta, train_batch, to, rng),
                 'next_observations': random_obs(agent.shape_meta, train_batch, to, rng),
                 'actions': rng.uniform(-1, 1, (train_batch, 16, 7)).astype(np.float32),
                 'valid': np.ones((train_batch, 16), np.float32),
                 'rewards': np.zeros(train_batch, np.float32), 'masks': np.ones(train_batch, np.float32)}
        row[f'train_step_ms_B{train_batch}'] = round(timed(lambda: agent.update(batch), repeats), 1)
    return row


LIFT_STATE = {'obs': {'object': {'shape': [10], 'type': 'low_dim'},  # scripted Lift, state observations
                      'robot0_eef_pos': {'shape': [3], 'type': 'low_dim'},
                      'robot0_eef_quat': {'shape': [4], 'type': 'low_dim'},
                      'robot0_gripper_qpos': {'shape': [2], 'type': 'low_dim'}},
              'action': {'shape': [7]}}


def update_ratio(rounds=15, batch_size=256, network='mlp', agent='fql', ref='fbc'):
    """Median time of one `agent` update over one `ref` update, both at `agent`'s default horizons, on the
    Lift state shapes. The two updates alternate in one process (one of each per round), so load from other
    processes hits both alike. Times are process CPU time (time.process_time), which a busy machine's
    descheduling does not inflate; returns the medians and the median of the per-round ratios."""
    base = AGENTS[agent].get_config()
    agents = {}
    for name in (ref, agent):
        config = AGENTS[name].get_config()
        config.network_type, config.obs_type = network, 'state'
        config.obs_steps, config.horizon_length = base.obs_steps, base.horizon_length
        config.action_steps = base.action_steps
        chunks = stand_in_chunks(int(config.horizon_length), LIFT_STATE['action']['shape'][0])
        agents[name] = AGENTS[name].create(LIFT_STATE, config, seed=0, action_chunks=chunks)
    to, tp, a = int(base.obs_steps), int(base.horizon_length), LIFT_STATE['action']['shape'][0]
    rng = np.random.default_rng(0)
    batch = {'observations': random_obs(LIFT_STATE, batch_size, to, rng),
             'next_observations': random_obs(LIFT_STATE, batch_size, to, rng),
             'actions': rng.uniform(-1, 1, (batch_size, tp, a)).astype(np.float32),
             'valid': np.ones((batch_size, tp), np.float32),
             'rewards': -rng.uniform(0, 1, batch_size).astype(np.float32),
             'masks': np.ones(batch_size, np.float32)}
    # The distillation target alone: flow_steps no-grad Euler steps of the BC flow, a floor under the update.
    fql = agents[agent]
    obs = fql.normalizer.normalize_obs({k: torch.as_tensor(v) for k, v in batch['observations'].items()})
    z = torch.randn(batch_size, tp, a)

    def euler_target():
        with torch.no_grad():
            euler_flow(fql.model['actor'], fql.model['encoder'](obs), z, int(fql.config.flow_steps))

    prepared = fql.prepare_batch(batch)

    def loss_part(part):  # one loss of the update, forward and backward, no optimizer step
        def run():
            fql.model.zero_grad(set_to_none=True)
            getattr(fql, part)(prepared)[0].backward()
        return run

    steps = {ref: lambda: agents[ref].update(batch), agent: lambda: fql.update(batch), 'euler': euler_target,
             'critic_loss': loss_part('critic_loss'), 'actor_loss': loss_part('actor_loss')}
    times = {name: [] for name in steps}
    for i in range(rounds + 1):  # round 0 warms up
        for name, fn in steps.items():
            start = time.process_time()
            fn()
            if i > 0:
                times[name].append((time.process_time() - start) * 1e3)
    ratios = [q / f for q, f in zip(times[agent], times[ref], strict=True)]
    ref_ms = statistics.median(times[ref])
    return {'update_ratio': f'{agent}/{ref}', 'network': network, 'batch': batch_size, 'obs_steps': to,
            'horizon_length': tp, 'threads': torch.get_num_threads(), 'rounds': rounds,
            f'{ref}_cpu_ms': round(statistics.median(times[ref]), 1),
            f'{agent}_cpu_ms': round(statistics.median(times[agent]), 1),
            'ratio_of_medians': round(statistics.median(times[agent]) / statistics.median(times[ref]), 2),
            'median_ratio': round(statistics.median(ratios), 2),
            'euler_target_over_ref': round(statistics.median(times['euler']) / ref_ms, 2),
            'critic_loss_over_ref': round(statistics.median(times['critic_loss']) / ref_ms, 2),
            'actor_loss_over_ref': round(statistics.median(times['actor_loss']) / ref_ms, 2)}


def main(argv=None):
    """Run the agent benchmark and print JSON lines; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='state only, B=1 and B=64, one repeat')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--networks', default='chiunet', help='comma-separated network types')
    parser.add_argument('--obs-types', default='state,image', help='comma-separated: state,image')
    parser.add_argument('--agents', default=','.join(AGENTS), help=f'comma-separated, of {list(AGENTS)}')
    parser.add_argument('--repeats', type=int, default=3, help='timed calls per measurement (median)')
    parser.add_argument('--train-batch', type=int, default=0, help='also time one update at this batch size')
    parser.add_argument('--update-ratio', action='store_true',
                        help='only time FQL against FBC updates (MLP, FQL horizons, Lift state, B=256)')
    parser.add_argument('--rounds', type=int, default=15, help='--update-ratio: alternating update pairs')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.update_ratio:
        if args.rounds < 1:
            parser.error(f'--rounds must be >= 1, got {args.rounds}')
        row = update_ratio(args.rounds)
        print(json.dumps(row), flush=True)
        return [row]
    obs_types = ['state'] if args.quick else args.obs_types.split(',')
    repeats = 1 if args.quick else args.repeats
    for name in args.agents.split(','):
        if name not in AGENTS:
            parser.error(f'--agents: unknown agent {name!r}; choose from {list(AGENTS)}')
    rows = []
    for network in args.networks.split(','):
        for obs_type in obs_types:
            if obs_type not in SHAPE_METAS:
                parser.error(f'--obs-types: unknown {obs_type!r}; choose from {list(SHAPE_METAS)}')
            for name in args.agents.split(','):
                row = bench_one(name, network, obs_type, repeats=repeats, train_batch=args.train_batch)
                print(json.dumps(row), flush=True)
                rows.append(row)
    for row in rows:  # one-step speed-up over FBC's Euler sampler on the same network and obs type
        if row['agent'] in ('mfbc', 'imfbc'):
            ref = next((r for r in rows if r['agent'] == 'fbc' and r['network'] == row['network']
                        and r['obs_type'] == row['obs_type']), None)
            if ref is not None:
                speedup = {f'speedup_B{b}': round(ref[f'sample_ms_B{b}'] / row[f'sample_ms_B{b}'], 2)
                           for b in (1, 64)}
                print(json.dumps({'speedup_vs_fbc': row['agent'], 'network': row['network'],
                                  'obs_type': row['obs_type'], **speedup}), flush=True)
    return rows


if __name__ == '__main__':
    main()
