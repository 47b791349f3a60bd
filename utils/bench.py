"""Benchmarks for this machine: `python -m utils.bench [--quick] [--skip data,models,agents,eval]`.

Runs the other areas' benchmark modules when present (utils/bench_data.py: loader samples/s,
utils/bench_models.py: network step times, utils/bench_agents.py: train step time and sample_actions latency
per agent x network x obs type), each through its `main()`, then measures evaluation env-steps/s on scripted
Lift with 1 and 2 worker processes (state, and image at the cheap render setting).
"""

import argparse
import importlib
import os
import sys
import time

import numpy as np

SECTIONS = {'data': 'utils.bench_data', 'models': 'utils.bench_models', 'agents': 'utils.bench_agents'}


def run_section(name, module_name, argv):
    """Import a benchmark module and call its main(); a missing module is reported, not fatal."""
    print(f'\n=== {name} ({module_name}) ===', flush=True)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f'{module_name} is not present; skipped')
            return
        raise
    main = getattr(module, 'main', None)
    if main is None:
        print(f'{module_name} has no main(); skipped')
        return
    main(argv)


def bench_eval(obs_type, workers_list=(1, 2), episodes=4, max_steps=100, seed=0):
    """Evaluation env-steps/s (random actions, episodes run to max_steps) with 1 and 2 workers."""
    from envs.env_utils import EnvFactory
    from envs.evaluation import evaluate
    from envs.generate_demos import env_spec

    spec = env_spec('lift', obs_type, render_quality='cheap')
    factory = EnvFactory(spec['env_meta'], spec['shape_meta'], max_steps)
    action_dim = spec['shape_meta']['action']['shape'][0]
    rng = np.random.default_rng(seed)

    def policy(obs):  # (B, To, ...) -> (B, Tp=8, A) random actions
        batch = len(next(iter(obs.values())))
        return rng.uniform(-1, 1, size=(batch, 8, action_dim)).astype(np.float32)

    rows = []
    for workers in workers_list:
        start = time.perf_counter()
        stats, _ = evaluate(policy, factory, episodes, obs_steps=2, action_steps=8, max_steps=max_steps,
                            seed=seed, num_workers=workers)
        wall = time.perf_counter() - start
        rows.append((obs_type, workers, episodes, max_steps, stats['env_steps_per_s'], wall))
        print(f'eval {obs_type:5s} workers={workers} episodes={episodes} x {max_steps} steps: '
              f'{stats["env_steps_per_s"]:7.1f} env-steps/s (incl. worker start-up; {wall:.1f} s wall)',
              flush=True)
    return rows


def main(argv=None):
    """Run every benchmark section and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--skip', default='', help='sections to skip: data,models,agents,eval')
    parser.add_argument('--quick', action='store_true', help='fewer episodes / steps (passed on to sections)')
    args, rest = parser.parse_known_args(argv)
    skip = {s for s in args.skip.split(',') if s}
    print(f'machine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}')
    try:
        import torch

        print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, '
              f'cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}')
    except ImportError:
        pass
    section_argv = rest + (['--quick'] if args.quick else [])
    for name, module_name in SECTIONS.items():
        if name not in skip:
            run_section(name, module_name, section_argv)
    if 'eval' not in skip:
        print('\n=== eval (envs.evaluation) ===', flush=True)
        episodes, max_steps = (2, 50) if args.quick else (4, 200)
        bench_eval('state', episodes=episodes, max_steps=max_steps)
        bench_eval('image', episodes=episodes, max_steps=max_steps // 2)


if __name__ == '__main__':
    main()
