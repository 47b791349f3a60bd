"""Benchmarks for this machine: `python -m bench [--quick] [--skip data,models,agents,eval]`.

Runs the benchmark modules of bench/ (bench/data.py: loader samples/s on a small
synthetic image file; bench/models.py: network step times; bench/agents.py: train step time and
sample_actions latency per agent x network x obs type), then measures evaluation env-steps/s on scripted Lift
with 1 and 2 worker processes (state, and image at the cheap render setting).
"""

import argparse
import importlib
import os
import sys
import time

import numpy as np


def bench_data(module, quick):
    """Loader samples/s on a small synthetic 2-camera image file, RAM and on-disk cache storage."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = module.write_bench_file(os.path.join(tmp, 'bench.hdf5'), size_gb=0.05 if quick else 0.2)
        for storage, budget in (('ram', 4.0), ('cache', 0.01)):
            print(json.dumps(module.bench_sampling(path, storage=storage, ram_budget_gb=budget,
                                                   batches=50 if quick else 200)), flush=True)


def bench_main(module, quick):
    """Sections whose module has main(argv) taking --quick."""
    module.main(['--quick'] if quick else [])


# section -> (module, how to run it)
SECTIONS = {'data': ('bench.data', bench_data), 'models': ('bench.models', bench_main),
            'agents': ('bench.agents', bench_main)}


def run_section(name, module_name, runner, quick):
    """Import a benchmark module and run it; a missing module is reported, not fatal."""
    print(f'\n=== {name} ({module_name}) ===', flush=True)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(f'{module_name} is not present; skipped')
            return
        raise
    runner(module, quick)


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
              f'{stats["env_steps_per_s"]:7.1f} env-steps/s (rollouts; {wall:.1f} s wall incl. start-up)',
              flush=True)
    return rows


def main(argv=None):
    """Run every benchmark section and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--skip', default='', help='sections to skip: data,models,agents,eval')
    parser.add_argument('--quick', action='store_true', help='fewer episodes / steps (passed on to sections)')
    args = parser.parse_args(argv)
    skip = {s for s in args.skip.split(',') if s}
    print(f'machine: {os.cpu_count()} CPU cores, python {sys.version.split()[0]}')
    import torch

    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, '
          f'cuda {torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}')
    for name, (module_name, runner) in SECTIONS.items():
        if name not in skip:
            run_section(name, module_name, runner, args.quick)
    if 'eval' not in skip:
        print('\n=== eval (envs.evaluation) ===', flush=True)
        episodes, max_steps = (2, 50) if args.quick else (8, 200)
        bench_eval('state', episodes=episodes, max_steps=max_steps)
        bench_eval('image', episodes=episodes, max_steps=max_steps // 2)


if __name__ == '__main__':
    main()
