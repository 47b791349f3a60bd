"""Training steps/s per torch thread count, alone and with one other busy process on the machine.

    python -m bench.threads [--seconds 20] [--configs state,image] [--threads 1,2,auto]

`state` is `python train_bc.py`'s default (FBC, MLP, To 2, Tp 16, batch 256, 23-D state); `image` is the CPU
image recipe of the README (agents/fbc_image.py with the IMPALA-style encoder, batch 16, two 84x84 cameras).
"Shared" runs a single-threaded busy Python loop in another process while measuring, as a second job on the
machine would. `auto` is `train_bc.py`'s default: `utils.threads.ThreadGovernor` re-fits the count to the
load between steps (here every second; a fresh governor per measurement, made after the busy process has
started); its row also gives the thread count it ended on.
"""

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
import torch

from bench.agents import SHAPE_METAS
from utils.shape_meta import random_obs
from utils.threads import ThreadGovernor


def busy_loop(stop):
    """A single-threaded CPU hog until `stop` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def make_agent(kind):
    """The agent and batch size of a benchmark config."""
    from agents import AGENTS
    from agents.fbc import get_config

    config = get_config()
    if kind == 'image':
        import importlib

        config = importlib.import_module('agents.fbc_image').get_config()
        config.encoder = 'impala'
        config.batch_size = 16
    config.obs_type = kind
    return AGENTS['fbc'].create(SHAPE_METAS[kind], config, seed=0), int(config.batch_size)


def steps_per_s(agent, batch_size, seconds, governor=None, row=None, phase=''):
    """Median-free rate: updates completed in `seconds` (after two warm-up updates); `governor` ticks
    before every update, as in train_bc.py."""
    rng = np.random.default_rng(0)
    c = agent.config
    actions = rng.uniform(-1, 1, (batch_size, int(c.horizon_length), agent.action_dim)).astype(np.float32)
    obs = random_obs(agent.shape_meta, batch_size, int(c.obs_steps), rng)
    batch = {'observations': obs, 'actions': actions}
    for _ in range(2):
        agent.update(batch)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        if governor is not None:
            governor.tick()
        agent.update(batch)
        n += 1
    if governor is not None:
        row[f'{phase}_threads_end'], row[f'{phase}_thread_changes'] = governor.threads, governor.changes
    return n / (time.perf_counter() - start)


def main(argv=None):
    """Print one JSON line per (config, threads, alone/shared)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--configs', default='state,image')
    counts = [str(t) for t in range(1, (os.cpu_count() or 1) + 1)]
    parser.add_argument('--threads', default=','.join(counts + ['auto']),
                        help="comma-separated counts, and 'auto' (train_bc.py's default)")
    args = parser.parse_args(argv)
    ctx = mp.get_context('spawn')
    for kind in args.configs.split(','):
        agent, batch_size = make_agent(kind)
        for threads in args.threads.split(','):
            auto = threads == 'auto'
            governor = (lambda: ThreadGovernor(None, interval_s=1.0)) if auto else (lambda: None)  # noqa: E731
            if not auto:
                torch.set_num_threads(int(threads))
            row = {'config': kind, 'batch': batch_size, 'threads': threads, 'cores': os.cpu_count()}
            rate = steps_per_s(agent, batch_size, args.seconds, governor(), row, 'alone')
            row['alone_steps_per_s'] = round(rate, 2)
            stop = ctx.Event()
            hog = ctx.Process(target=busy_loop, args=(stop,), daemon=True)
            hog.start()
            try:
                time.sleep(0.5)
                rate = steps_per_s(agent, batch_size, args.seconds, governor(), row, 'shared')
                row['shared_steps_per_s'] = round(rate, 2)
            finally:
                stop.set()
                hog.join(timeout=5)
            row['slowdown_shared'] = round(row['alone_steps_per_s'] / max(row['shared_steps_per_s'], 1e-9), 2)
            print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
