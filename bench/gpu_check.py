"""GPU check: `python -m bench.gpu_check` on a lent GPU machine; `--smoke` runs every section on CPU at tiny
sizes (the test does that). Finishes within `--budget_s` (default 270 s, compile included): a section that
would start past the deadline is reported as skipped, a run that outlives it is stopped and reported.

Sections, in this order (the cheap ones first, the compile probe of 2 last):
  1. latency: `sample_actions` of FBC (10 Euler steps) against MFBC (one step) on the Diffusion Policy image
     recipe (2x ResNet-18, ChiUNet, To 2, Tp 16), B=1 and B=64, median over repeats, eager fp32.
  2. meanflow: MFBC's image loss under bf16 autocast against fp32 on the device (the JVP runs in fp32 by
     design, agents/mfbc.py); and, last of all, a probe: does the whole JVP compile on CUDA, and match eager?
  3. train_bc.py with agents/fbc_image.py (2x ResNet-18, ChiUNet, B=64) on a synthetic 2-camera 84x84 file
     (envs/synthetic.py), `--eval_episodes=0`: fp32 / bf16 x eager / compiled, `--steps` steps each, and a
     1-GPU `torchrun --nproc_per_node=1 train_bc.py ...` (eager fp32). Each prints steps/s of train.csv's
     last log window (after compilation and warm-up), peak GPU memory (its gpu_mem_max_gb column,
     torch.cuda.max_memory_allocated) and GPU utilization (nvidia-smi, sampled every 0.5 s while it ran).
The summary is printed and written to `<out>/gpu_check.json`.

The GPU machine (nvidia-h200) has Python 3.12, torch 2.11, numpy 2, absl-py, PyYAML, six, h5py and tqdm, and
lacks ml_collections (the agents' configs), robosuite, mujoco and wandb: this module imports none of them
at module level, train_bc.py runs with `--wandb_mode=disabled` and no evaluation (no robosuite), and
ml_collections travels as a wheel. Once, in the repository root of the checkout the device tool sends:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl ml_collections==1.0.0

(ml_collections 1.0.0 needs absl-py, six and PyYAML, all present there.) Then the device tool's `run`, with
`carry=[".whl"]` and `timeout_s=420` (the 270 s budget, pip and imports; with the machine's start that call
takes about 7-8 of the 15 device minutes, so a rerun must be shorter, e.g. `--skip=compiled --budget_s=150`):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site
    .whl/*.whl && export PYTHONPATH=/tmp/site || exit; nvidia-smi; PYTHONUNBUFFERED=1 python3 -m
    bench.gpu_check --out=$OUT 2>&1 | tee $OUT/gpu_check.log

(one line). CPU: `python -m bench.gpu_check --smoke --out=/tmp/gpu_check`.
"""

import argparse
import copy
import csv
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny sizes of --smoke (CPU): the same sections, a few steps, an IMPALA encoder on 32x32 images.
SMOKE_FIELDS = {'batch_size': 4, 'encoder': 'impala', 'crop_shape': (28, 28), 'impala_channels': (4, 8),
                'impala_out_dim': 16, 'impala_res_blocks': 1, 'model_dim': 8, 'dim_mult': (1, 2),
                'kernel_size': 3, 'emb_dim': 8}
RUNS = (('fp32 eager', False, False), ('bf16 eager', True, False), ('bf16 compiled', True, True),
        ('fp32 compiled', False, True))


class Deadline:
    """Seconds left of the check's budget."""

    def __init__(self, budget_s):
        self.end = time.monotonic() + budget_s

    def left(self):
        """Seconds until the deadline (negative once past it)."""
        return self.end - time.monotonic()


class GpuSampler:
    """nvidia-smi utilization.gpu and memory.used sampled every 0.5 s in a thread, while inside the block."""

    def __init__(self):
        self.samples, self._proc, self._thread = [], None, None

    def __enter__(self):
        if shutil.which('nvidia-smi') is None:
            return self
        cmd = ['nvidia-smi', '--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits',
               '-lms', '500']
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(',')[:2])
            except ValueError:
                continue
            self.samples.append((util, mem))

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        return False

    def summary(self, skip_first=0.5):
        """Mean and max utilization (%) and max memory used (MiB) over the later `1 - skip_first` of the
        samples (the first part is start-up and compilation); None without nvidia-smi."""
        if not self.samples:
            return None
        later = self.samples[int(len(self.samples) * skip_first):] or self.samples
        utils = [u for u, _ in later]
        return {'util_mean_pct': round(statistics.mean(utils), 1), 'util_max_pct': max(utils),
                'smi_mem_max_mib': max(m for _, m in self.samples), 'samples': len(self.samples)}


def write_data(folder, smoke):
    """A synthetic 2-camera robomimic image file (envs/synthetic.py; no simulator)."""
    from envs.synthetic import write_robomimic_file

    lengths, size = ([30] * 4, 32) if smoke else ([150] * 20, 84)
    return str(write_robomimic_file(os.path.join(folder, 'synthetic_image.hdf5'), lengths=lengths,
                                    image_size=size, next_obs=False))


def train_args(data, save_dir, device, steps, smoke, bf16, compiled):
    """train_bc.py flags: the image recipe on the synthetic file, no evaluation, wandb off."""
    log_interval = max(1, steps // 3)
    args = ['--env_name=lift-ph-image', f'--dataset_path={data}', '--agent=agents/fbc_image.py',
            f'--offline_steps={steps}', f'--log_interval={log_interval}', '--save_interval=0',
            '--eval_episodes=0', '--wandb_mode=disabled', f'--save_dir={save_dir}', f'--device={device}',
            f'--agent.use_bf16={bf16}', f'--agent.compile={compiled}']
    if smoke:
        args += [f'--agent.{k}={v}'.replace(' ', '') for k, v in SMOKE_FIELDS.items()]
    return args


def read_train_csv(save_dir):
    """The last row of the run's train.csv (steps/s of the last log window, peak GPU memory)."""
    paths = glob.glob(os.path.join(save_dir, '*', '*', 'train.csv'))
    if not paths:
        return {}
    with open(paths[0], newline='') as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    last = rows[-1]
    out = {'steps_per_s': round(float(last['steps_per_s']), 2), 'last_step': int(last['step']),
           'windows_steps_per_s': [round(float(r['steps_per_s']), 2) for r in rows]}
    if last.get('gpu_mem_max_gb'):
        out['gpu_mem_max_gb'] = float(last['gpu_mem_max_gb'])
    return out


def run_train(name, cmd, save_dir, deadline, reserve_s, env=None):
    """Run one training command with the time left minus `reserve_s`; returns its result row (with the
    stderr tail when it failed or ran out of time)."""
    timeout = deadline.left() - reserve_s
    row = {'name': name, 'command': ' '.join(cmd)}
    if timeout < 20:
        row.update(rc=None, skipped=f'{deadline.left():.0f} s left of the budget')
        print(f'{name}: skipped ({row["skipped"]})', flush=True)
        return row
    start = time.monotonic()
    with GpuSampler() as gpu:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                  env=None if env is None else {**os.environ, **env})
            row['rc'] = proc.returncode
            if proc.returncode != 0:
                row['stderr_tail'] = proc.stderr[-2000:]
        except subprocess.TimeoutExpired as e:
            row.update(rc=None, timed_out_after_s=round(timeout))
            err = e.stderr.decode(errors='replace') if isinstance(e.stderr, bytes) else (e.stderr or '')
            row['stderr_tail'] = err[-2000:]
    row['wall_s'] = round(time.monotonic() - start, 1)
    row.update(read_train_csv(save_dir))
    row['gpu'] = gpu.summary()
    print(f'{name}: ' + json.dumps({k: v for k, v in row.items() if k != 'command'}), flush=True)
    return row


def write_profile(prof_path, txt_path, top=45):
    """The cProfile stats of a run as text (top functions by cumulative and by own time); returns the path."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(prof_path, stream=buf).strip_dirs()
    stats.sort_stats('cumulative').print_stats(top)
    stats.sort_stats('tottime').print_stats(top)
    with open(txt_path, 'w') as fh:
        fh.write(buf.getvalue())
    print(f'profile: wrote {txt_path}', flush=True)
    return txt_path


def median_ms(fn, repeats, sync):
    """Median wall time of fn() in ms over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def image_agent(name, device, smoke, **fields):
    """An agent with agents/fbc_image.py's recipe (MFBC: its own fields on top) for the synthetic layout."""
    import importlib

    import torch

    from agents import AGENTS
    from bench.agents import SHAPE_METAS
    from utils.shape_meta import rgb_keys

    recipe, fbc = importlib.import_module('agents.fbc_image').get_config(), AGENTS['fbc'].get_config()
    config = AGENTS[name].get_config()
    for key, value in recipe.items():  # the fields the recipe changes from FBC's defaults
        if key != 'agent_name' and value != fbc[key]:
            config[key] = value
    meta = SHAPE_METAS['image']
    if smoke:
        config.update(SMOKE_FIELDS)
        meta = copy.deepcopy(meta)
        for key in rgb_keys(meta):  # 32x32 cameras
            meta['obs'][key]['shape'] = [3, 32, 32]
    config.update(fields)
    # stand-in chunks for a 'chunk_cov' noise prior (MFBC): its cost, not its values, is measured
    shape = (256, int(config.horizon_length), meta['action']['shape'][0])
    chunks = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return AGENTS[name].create(meta, config, seed=0, device=device, action_chunks=chunks)


def latency(device, smoke, repeats):
    """sample_actions ms of FBC (flow_steps Euler steps) and MFBC (one step), B=1 and B=64."""
    import numpy as np
    import torch

    from utils.shape_meta import random_obs

    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    rows = []
    for name in ('fbc', 'mfbc'):
        agent = image_agent(name, device, smoke)
        steps = agent.config.get('sample_steps', agent.config.flow_steps)  # network calls per chunk
        for batch in (1, 64):
            obs = random_obs(agent.shape_meta, batch, int(agent.config.obs_steps), np.random.default_rng(0))
            obs = {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
            ms = median_ms(lambda a=agent, o=obs: a.sample_actions(o, seed=0), repeats, sync)
            rows.append({'agent': name, 'sampler_steps': int(steps), 'batch': batch, 'ms': ms})
            print('latency: ' + json.dumps(rows[-1]), flush=True)
    for batch in (1, 64):
        fbc, mfbc = (next(r['ms'] for r in rows if r['agent'] == a and r['batch'] == batch)
                     for a in ('fbc', 'mfbc'))
        print(f'latency: B={batch} one-step MFBC is {fbc / mfbc:.2f}x faster than 10-step FBC', flush=True)
    return rows


def meanflow_numerics(device, smoke, probe_compile):
    """MFBC on the device: image loss under bf16 autocast vs fp32; with `probe_compile` instead, the
    compiled vs the eager JVP target."""
    import numpy as np
    import torch

    from agents.mfbc import meanflow_target
    from utils.shape_meta import random_obs

    agent = image_agent('mfbc', device, smoke)
    rng = np.random.default_rng(0)
    raw = {'observations': random_obs(agent.shape_meta, 16, int(agent.config.obs_steps), rng),
           'actions': rng.uniform(-1, 1, (16, int(agent.config.horizon_length), 7)).astype(np.float32)}
    batch = agent.prepare_batch(raw)
    out = {}

    def info(bf16):
        agent.rng.manual_seed(3)
        torch.manual_seed(3)
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            return {k: float(v) for k, v in agent.total_loss(batch)[1].items()}

    if not probe_compile:
        full, half = info(False), info(True)
        out['bf16_rel_diff'] = {k: round(abs(half[k] - full[k]) / max(abs(full[k]), 1e-12), 5) for k in full}
        print('meanflow: ' + json.dumps(out), flush=True)
        return out
    net = agent.model['actor'].eval()
    with torch.no_grad():
        cond = agent.model['encoder'].eval()(batch['observations'])
    s, t, x, v = agent.draw_points(batch['actions'])
    u_fn = lambda x_, s_, t_: net(x_, s_, t_, cond)[0]  # noqa: E731
    start = time.monotonic()
    u0, tgt0 = meanflow_target(u_fn, x, s, t, v)
    try:  # the agents keep the JVP eager (agents/mfbc.jvp_along_s); this probes whether compiling it works
        u1, tgt1 = meanflow_target(u_fn, x, s, t, v, compiled=True)
        out['compiled_jvp_rel_diff'] = {'u': float((u1 - u0).norm() / u0.norm()),
                                        'target': float((tgt1 - tgt0).norm() / tgt0.norm())}
    except Exception as e:
        out['compiled_jvp_error'] = f'{type(e).__name__}: {str(e)[:300]}'
    out['compiled_jvp_s'] = round(time.monotonic() - start, 1)
    print('meanflow compile probe: ' + json.dumps(out), flush=True)
    return out


def section(name, fn, deadline, min_left_s):
    """Run a section if at least `min_left_s` remain; an exception is reported, not raised."""
    if deadline.left() < min_left_s:
        print(f'{name}: skipped ({deadline.left():.0f} s left)', flush=True)
        return {'skipped': True}
    try:
        return fn()
    except Exception as e:  # a failing section must not hide the others' numbers
        print(f'{name}: FAILED {type(e).__name__}: {e}', flush=True)
        return {'error': f'{type(e).__name__}: {e}'}


def main(argv=None):
    """Run the sections, print and write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true', help='CPU, tiny sizes, a few steps')
    parser.add_argument('--budget_s', type=float, default=None, help='deadline (default 270; smoke 600)')
    parser.add_argument('--steps', type=int, default=None, help='train steps per run (default 300; smoke 6)')
    parser.add_argument('--out', default=None, help='folder for gpu_check.json (default: a temp folder)')
    parser.add_argument('--skip', default='',
                        help='comma-separated: latency,meanflow,train,torchrun,compiled (the compiled runs)')
    parser.add_argument('--runs', default='',
                        help="comma-separated train runs to keep, e.g. 'fp32 eager,fp32 compiled' (default all)")
    parser.add_argument('--profile', action='store_true',
                        help="run 'fp32 eager' under cProfile; the main thread's top functions go to "
                             '<out>/profile_fp32_eager.txt')
    parser.add_argument('--torch_logs', default='',
                        help="TORCH_LOGS for the compiled runs (e.g. 'recompiles'); seen in their stderr tail")
    args = parser.parse_args(argv)
    budget = args.budget_s or (600.0 if args.smoke else 270.0)
    deadline = Deadline(budget)
    steps = args.steps or (6 if args.smoke else 300)
    skip = {s for s in args.skip.split(',') if s}
    keep = {r.strip() for r in args.runs.split(',') if r.strip()}
    unknown = keep - {name for name, _, _ in RUNS} - {'torchrun 1 proc'}
    if unknown:
        parser.error(f'--runs={args.runs}: unknown {sorted(unknown)}; expected names of {[r[0] for r in RUNS]} '
                     "or 'torchrun 1 proc'")
    import torch

    device = 'cpu' if args.smoke else 'cuda'
    if device == 'cuda' and not torch.cuda.is_available():
        sys.exit('bench.gpu_check: no CUDA device; use --smoke on a CPU machine')
    try:
        import ml_collections  # noqa: F401  (the agents' configs; a wheel on the GPU machine)
    except ImportError:
        sys.exit('bench.gpu_check: ml_collections is missing; carry its wheel (see this module\'s docstring)')
    summary = {'torch': torch.__version__, 'python': sys.version.split()[0], 'device': device,
               'gpu': torch.cuda.get_device_name(0) if device == 'cuda' else None, 'steps': steps,
               'budget_s': budget, 'smoke': args.smoke}
    print(json.dumps(summary), flush=True)
    if device == 'cuda':
        torch.backends.cudnn.benchmark = True
    repeats = 3 if args.smoke else 20
    if 'latency' not in skip:
        summary['latency'] = section('latency', lambda: latency(device, args.smoke, repeats), deadline, 30)
    if 'meanflow' not in skip:
        summary['meanflow'] = section('meanflow', lambda: meanflow_numerics(device, args.smoke, False),
                                      deadline, 20)
    out = args.out or tempfile.mkdtemp(prefix='gpu_check_')
    os.makedirs(out, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(tmp, args.smoke)
        plan = []
        torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1']
        for name, bf16, compiled in RUNS:
            if 'train' not in skip and not (compiled and 'compiled' in skip):
                save = os.path.join(tmp, name.replace(' ', '_'))
                plan.append((name, [sys.executable, 'train_bc.py',
                                    *train_args(data, save, device, steps, args.smoke, bf16, compiled)]))
            if name == 'bf16 eager' and 'torchrun' not in skip:  # before the compiled runs: it is cheap
                save = os.path.join(tmp, 'torchrun')
                plan.append(('torchrun 1 proc', [*torchrun, 'train_bc.py',
                                                 *train_args(data, save, device, steps, args.smoke, False,
                                                             False)]))
        plan = [(name, cmd) for name, cmd in plan if not keep or name in keep]
        profile = os.path.join(tmp, 'fp32_eager.prof')
        for i, (name, cmd) in enumerate(plan):
            save_dir = next(a.split('=', 1)[1] for a in cmd if a.startswith('--save_dir='))
            reserve = 5.0 * (len(plan) - i - 1) + 30  # later runs' skip lines, the compile probe
            if args.profile and name == 'fp32 eager':
                cmd = [cmd[0], '-m', 'cProfile', '-o', profile, *cmd[1:]]
            env = {'TORCH_LOGS': args.torch_logs} if args.torch_logs and 'compiled' in name else None
            runs.append(run_train(name, cmd, save_dir, deadline, reserve, env))
        if args.profile and os.path.exists(profile):
            summary['profile'] = write_profile(profile, os.path.join(out, 'profile_fp32_eager.txt'))
    summary['train_runs'] = runs
    if 'meanflow' not in skip:  # last: compiling the JVP may take a while, and the runs matter more
        summary['meanflow_compile'] = section(
            'meanflow compile probe', lambda: meanflow_numerics(device, args.smoke, True), deadline, 30)
    summary['wall_s'] = round(budget - deadline.left(), 1)
    path = os.path.join(out, 'gpu_check.json')
    with open(path, 'w') as fh:
        json.dump(summary, fh, indent=2)
    print('\n=== summary ===')
    for r in runs:
        gpu = r.get('gpu') or {}
        print(f"{r['name']:16s} rc={r.get('rc')} steps/s={r.get('steps_per_s')} "
              f"(windows {r.get('windows_steps_per_s')}) gpu_mem_max_gb={r.get('gpu_mem_max_gb')} "
              f"util_mean={gpu.get('util_mean_pct')}% wall={r.get('wall_s')} s"
              + (f" skipped: {r['skipped']}" if 'skipped' in r else '')
              + (f" TIMED OUT after {r['timed_out_after_s']} s" if 'timed_out_after_s' in r else ''))
    print(f'wrote {path}; {summary["wall_s"]} s of the {budget:.0f} s budget', flush=True)
    return summary


if __name__ == '__main__':
    main()
