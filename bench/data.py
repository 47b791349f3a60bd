"""Benchmarks of the data path: sampling speed and peak memory, RAM vs on-disk cache storage.

    python -m bench.data write --path /tmp/bench.hdf5 --size_gb 1.1   # synthetic file, no simulator
    python -m bench.data measure --path /tmp/bench.hdf5 --storage cache --ram_budget_gb 0.25
    python -m bench.data all --path /tmp/bench.hdf5 --size_gb 1.1 --ram_budget_gb 0.25

`measure` runs in its own process, so the peak RSS it prints (ru_maxrss) is that of one loading + sampling
run. `all` writes the file if missing, then measures each storage mode in a fresh subprocess.
`bench_sampling(path, ...)` is the function a later `python -m bench` can call.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def write_bench_file(path, size_gb: float, demo_length: int = 200, image_size: int = 84) -> Path:
    """Write a synthetic 2-camera image file of about `size_gb` GB of images (refuses to overwrite)."""
    from envs.synthetic import write_robomimic_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(f'{path} exists; remove it or pick another --path')
    step_bytes = 2 * image_size * image_size * 3
    num_demos = max(1, int(round(size_gb * 2**30 / (step_bytes * demo_length))))
    return write_robomimic_file(path, lengths=[demo_length] * num_demos, image_size=image_size,
                                next_obs=False)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sampling(path, storage: str = 'auto', ram_budget_gb: float = 0.25, batch_size: int = 64,
                   obs_steps: int = 2, horizon: int = 16, batches: int = 200, seed: int = 0) -> dict:
    """Load `path` as an image dataset and time `batches` sample_sequence calls; returns the numbers."""
    from envs.robomimic_utils import load_datasets

    rss_start = peak_rss_mb()
    t0 = time.perf_counter()
    train, _ = load_datasets(path, 'image', ram_budget_gb=ram_budget_gb, storage=storage, seed=seed)
    load_s = time.perf_counter() - t0
    rss_loaded = peak_rss_mb()
    train.sample_sequence(batch_size, horizon, obs_steps=obs_steps)   # warm-up
    t0 = time.perf_counter()
    for _ in range(batches):
        train.sample_sequence(batch_size, horizon, obs_steps=obs_steps)
    sample_s = time.perf_counter() - t0
    return {
        'path': str(path), 'file_gb': round(Path(path).stat().st_size / 2**30, 3),
        'storage': train.storage_mode, 'ram_budget_gb': ram_budget_gb, 'steps': len(train),
        'load_s': round(load_s, 2), 'samples_per_s': round(batches * batch_size / sample_s),
        'batch_ms': round(1000 * sample_s / batches, 2),
        'peak_rss_mb_after_imports': round(rss_start), 'peak_rss_mb_after_load': round(rss_loaded),
        'peak_rss_mb': round(peak_rss_mb()),
        'batch': f'B={batch_size} To={obs_steps} Tp={horizon}, obs + next_obs',
    }


def main(argv=None):
    """Command line entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', choices=['write', 'measure', 'all'])
    parser.add_argument('--path', required=True)
    parser.add_argument('--size_gb', type=float, default=1.1)
    parser.add_argument('--storage', choices=['auto', 'ram', 'cache'], default='auto')
    parser.add_argument('--ram_budget_gb', type=float, default=0.25)
    parser.add_argument('--batches', type=int, default=200)
    args = parser.parse_args(argv)
    if args.command == 'write':
        t0 = time.perf_counter()
        write_bench_file(args.path, args.size_gb)
        print(json.dumps({'wrote': args.path, 'bytes': Path(args.path).stat().st_size,
                          'seconds': round(time.perf_counter() - t0, 1)}))
    elif args.command == 'measure':
        print(json.dumps(bench_sampling(args.path, args.storage, args.ram_budget_gb, batches=args.batches)))
    else:
        if not Path(args.path).exists():
            write_bench_file(args.path, args.size_gb)
        for storage in ('ram', 'cache', 'cache'):   # the second cache run reuses the cache built by the first
            cmd = [sys.executable, '-m', 'bench.data', 'measure', '--path', args.path,
                   '--storage', storage, '--ram_budget_gb', str(args.ram_budget_gb),
                   '--batches', str(args.batches)]
            subprocess.run(cmd, check=True)


if __name__ == '__main__':
    main()
