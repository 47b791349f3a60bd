"""The results table as a program: a resumable grid of `train_bc.py` runs, collected into tables and a plot.

    python -m bench.experiments run --out sweeps/main --envs lift-scripted-low_dim,can-scripted-low_dim \
        --agents fbc,mfbc --seeds 0,1,2
    python -m bench.experiments collect --out sweeps/main      # tables and plot only

Each cell (env x agent x network x seed) is an ordinary run directory under
`<out>/cells/<cell>/run/<run name>/`, made by `train_bc.py` with its own flags (see `cell_command`). The grid
is resumable: a finished cell (its `summary.json` has reached the step budget) is skipped, a killed cell
continues with `--resume`, and SIGINT / SIGTERM to the sweep reach every running cell, which write their
`latest` checkpoint before they exit. At most `--jobs` cells run at once: by default one per CPU core for
state cells (one torch thread and one evaluation worker each) and one at a time when the grid has image
cells (rendering already uses every core).

`collect` reads every cell's `eval.csv` into `<out>/results.md` and `<out>/results.csv`: per evaluation step
the mean, std (over seeds, ddof 1) and min-max of the success rate, the 95% Wilson score interval of the
pooled successes over seeds x episodes, and Diffusion Policy's two summaries (per seed: the max over
evaluations and the mean of the last five, then averaged over seeds); and draws `<out>/success.png`.
"""

import argparse
import csv
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from utils.stats import wilson_interval

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------- the grid
def agent_label(agent):
    """'fbc' for 'fbc' and for 'agents/fbc.py'; a preset file keeps its stem ('fbc_image')."""
    return Path(agent).stem if agent.endswith('.py') else agent


def agent_file(agent):
    """The --agent file for a registry name or a path."""
    if agent.endswith('.py'):
        return agent
    from agents import AGENTS  # here: the sweep's own start-up stays free of torch
    return os.path.relpath(AGENTS[agent].config_file(), ROOT)


def make_cells(envs, agents, networks, seeds):
    """Every (env, agent, network, seed) cell as a dict with its name."""
    cells = []
    for env in envs:
        for agent in agents:
            for network in networks:
                for seed in seeds:
                    name = f'{env}_{agent_label(agent)}_{network}_s{seed}'
                    cells.append({'name': name, 'env': env, 'agent': agent, 'network': network, 'seed': seed})
    return cells


def cell_dir(out, cell):
    """Where the cell's run directory lives."""
    return Path(out) / 'cells' / cell['name']


def find_run(out, cell):
    """The cell's run directory with the most progress (None if it has none)."""
    runs = [Path(p) for p in glob.glob(str(cell_dir(out, cell) / 'run' / '*')) if Path(p).is_dir()]
    return max(runs, key=lambda p: (run_progress(p), p.name), default=None)


def run_progress(run_dir):
    """Steps reached by a run: summary.json's step when finished, else its latest checkpoint's (-1: none)."""
    summary = run_dir / 'summary.json'
    if summary.is_file():
        return json.loads(summary.read_text())['step']
    if (run_dir / 'checkpoints' / 'latest.pt').is_file():
        rows = read_csv(run_dir / 'train.csv')
        return int(float(rows[-1]['step'])) if rows else 0
    return -1


def cell_state(out, cell, steps):
    """('done' | 'resume' | 'new', run_dir)."""
    run = find_run(out, cell)
    if run is None:
        return 'new', None
    summary = run / 'summary.json'
    if summary.is_file() and json.loads(summary.read_text())['step'] >= steps:
        return 'done', run
    if (run / 'checkpoints' / 'latest.pt').is_file():
        return 'resume', run
    return 'new', None


def is_image(env):
    """True for an image env name."""
    return env.endswith('-image')


def cell_command(out, cell, args, state, run):
    """The train_bc.py command line of a cell (new run or --resume)."""
    common = [f'--offline_steps={args.steps}', f'--eval_episodes={args.eval_episodes}',
              '--wandb_mode=disabled']
    if args.eval_interval is not None:
        common.append(f'--eval_interval={args.eval_interval}')
    if not is_image(cell['env']):
        common.append('--eval_workers=1')
    if args.eval_max_steps is not None:
        common.append(f'--eval_max_steps={args.eval_max_steps}')
    if state == 'resume':
        return [sys.executable, 'train_bc.py', f'--resume={run}', *common]
    cmd = [sys.executable, 'train_bc.py', f'--env_name={cell["env"]}', f'--agent={agent_file(cell["agent"])}',
           f'--seed={cell["seed"]}', f'--save_dir={cell_dir(out, cell)}', '--run_group=run', *common]
    if cell['network'] != 'default':
        cmd.append(f'--network_type={cell["network"]}')
    if args.dataset_path:
        cmd.append(f'--dataset_path={args.dataset_path}')
    return cmd + list(args.extra)


def prepare_data(envs, dataset_path):
    """Generate missing scripted files once, before cells start (parallel cells must not race to write)."""
    if dataset_path:
        return
    from envs.env_utils import ensure_dataset

    for env in envs:
        ensure_dataset(env)


class Sweep:
    """Runs cells as subprocesses, at most `jobs` at once; forwards SIGINT / SIGTERM to them."""

    def __init__(self, out, cells, args):
        self.out, self.cells, self.args = out, cells, args
        self.running = {}  # name -> (Popen, log file)
        self.stopping = None

    def _signal(self, signum, frame):
        self.stopping = signum
        for proc, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def run(self):
        """Run every cell that is not done; returns the number of failed cells."""
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        todo, failed = list(self.cells), 0
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
        try:
            while (todo or self.running) and not (self.stopping and not self.running):
                while todo and len(self.running) < self.args.jobs and not self.stopping:
                    cell = todo.pop(0)
                    state, run = cell_state(self.out, cell, self.args.steps)
                    if state == 'done':
                        print(f'[sweep] {cell["name"]}: done, skipped', flush=True)
                        continue
                    cmd = cell_command(self.out, cell, self.args, state, run)
                    folder = cell_dir(self.out, cell)
                    folder.mkdir(parents=True, exist_ok=True)
                    log = open(folder / 'log.txt', 'a')  # noqa: SIM115  (closed when the cell ends)
                    log.write(f'\n$ {" ".join(cmd)}\n')
                    log.flush()
                    print(f'[sweep] {cell["name"]}: {state} ({folder / "log.txt"})', flush=True)
                    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # the sweep forwards signals itself
                    self.running[cell['name']] = (proc, log)
                for name, (proc, log) in list(self.running.items()):
                    code = proc.poll()
                    if code is None:
                        continue
                    log.close()
                    del self.running[name]
                    if code != 0 and not self.stopping:
                        failed += 1
                    print(f'[sweep] {name}: exit {code}', flush=True)
                time.sleep(0.5)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return failed


# ---------------------------------------------------------------------------------------------- collect
def read_csv(path):
    """Rows of a csv file as dicts ([] if missing)."""
    if not Path(path).is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def eval_rows(run_dir):
    """(step, successes, episodes) per evaluation of a run; old eval.csv files without `successes` too."""
    rows = []
    for r in read_csv(Path(run_dir) / 'eval.csv'):
        n = int(float(r['num_episodes']))
        k = int(float(r['successes'])) if r.get('successes') not in (None, '') else \
            int(round(float(r['success_rate']) * n))
        rows.append((int(float(r['step'])), k, n))
    return rows


def collect(out, cells=None):
    """Group every cell's evaluations over seeds; write results.csv, results.md and success.png."""
    out = Path(out)
    if cells is None:
        cells = json.loads((out / 'grid.json').read_text())['cells']
    groups = {}  # (env, agent, network) -> {seed: [(step, k, n)]}
    for cell in cells:
        run = find_run(out, cell)
        rows = eval_rows(run) if run is not None else []
        if rows:
            key = (cell['env'], agent_label(cell['agent']), cell['network'])
            groups.setdefault(key, {})[cell['seed']] = rows
    table = []
    for (env, agent, network), by_seed in sorted(groups.items()):
        steps = sorted({s for rows in by_seed.values() for s, _, _ in rows})
        for step in steps:
            at = [(seed, k, n) for seed, rows in by_seed.items() for s, k, n in rows if s == step]
            rates = [k / n for _, k, n in at]
            k_all, n_all = sum(k for _, k, _ in at), sum(n for _, _, n in at)
            low, high = wilson_interval(k_all, n_all)
            table.append({
                'env': env, 'agent': agent, 'network': network, 'step': step, 'seeds': len(at),
                'mean': statistics.mean(rates), 'std': statistics.stdev(rates) if len(rates) > 1 else 0.0,
                'min': min(rates), 'max': max(rates), 'successes': k_all, 'episodes': n_all,
                'wilson_low': low, 'wilson_high': high,
            })
    summaries = []
    for (env, agent, network), by_seed in sorted(groups.items()):
        best = [max(k / n for _, k, n in rows) for rows in by_seed.values()]
        last5 = [statistics.mean(k / n for _, k, n in sorted(rows)[-5:]) for rows in by_seed.values()]
        final = [sorted(rows)[-1] for rows in by_seed.values()]
        final_rates = [k / n for _, k, n in final]
        summaries.append({'env': env, 'agent': agent, 'network': network, 'seeds': len(by_seed),
                          'final_step': min(s for s, _, _ in final),
                          'final_mean': statistics.mean(final_rates),
                          'final_std': statistics.stdev(final_rates) if len(final) > 1 else 0.0,
                          'max_over_evals': statistics.mean(best), 'mean_last5': statistics.mean(last5)})
    write_table(out / 'results.csv', table)
    write_markdown(out / 'results.md', table, summaries, cells)
    plot(out / 'success.png', table)
    return table, summaries


def write_table(path, rows):
    """Rows as csv."""
    if not rows:
        Path(path).write_text('')
        return
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path, table, summaries, cells):
    """results.md: the summary per (env, agent, network) and the full curve table."""
    lines = ['# Results', '', f'Cells: {len(cells)}. Success rates over each evaluation\'s episodes; mean, '
             'std (ddof 1) and min-max over training seeds; 95% Wilson interval of the pooled successes.', '',
             '| env | agent | network | seeds | final step | final success (mean ± std) | max over evals '
             '| mean of last 5 |', '|---|---|---|---|---|---|---|---|']
    for s in summaries:
        lines.append(f'| {s["env"]} | {s["agent"]} | {s["network"]} | {s["seeds"]} | {s["final_step"]} '
                     f'| {s["final_mean"]:.3f} ± {s["final_std"]:.3f} | {s["max_over_evals"]:.3f} '
                     f'| {s["mean_last5"]:.3f} |')
    lines += ['', '| env | agent | network | step | seeds | mean | std | min-max | pooled | 95% Wilson |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for r in table:
        lines.append(f'| {r["env"]} | {r["agent"]} | {r["network"]} | {r["step"]} | {r["seeds"]} '
                     f'| {r["mean"]:.3f} | {r["std"]:.3f} | {r["min"]:.2f}-{r["max"]:.2f} '
                     f'| {r["successes"]}/{r["episodes"]} '
                     f'| [{r["wilson_low"]:.3f}, {r["wilson_high"]:.3f}] |')
    Path(path).write_text('\n'.join(lines) + '\n')


def plot(path, table):
    """Success rate against training steps, one panel per env, one line per agent/network (min-max band)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    envs = sorted({r['env'] for r in table})
    if not envs:
        return
    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for label in sorted({(r['agent'], r['network']) for r in table if r['env'] == env}):
            rows = sorted((r for r in table if r['env'] == env and (r['agent'], r['network']) == label),
                          key=lambda r: r['step'])
            steps = [r['step'] for r in rows]
            line, = ax.plot(steps, [r['mean'] for r in rows], marker='o', label=f'{label[0]} ({label[1]})')
            ax.fill_between(steps, [r['min'] for r in rows], [r['max'] for r in rows], alpha=0.2,
                            color=line.get_color())
        ax.set_title(env)
        ax.set_xlabel('training steps')
        ax.set_ylabel('success rate')
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None):
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('command', choices=['run', 'collect'])
    parser.add_argument('--out', required=True, help='sweep directory (cells, results.md, success.png)')
    parser.add_argument('--envs', default='lift-scripted-low_dim', help='comma-separated env names')
    parser.add_argument('--agents', default='fbc', help='comma-separated agent names or agent files')
    parser.add_argument('--networks', default='default', help="comma-separated; 'default' = the recipe's")
    parser.add_argument('--seeds', default='0', help='comma-separated training seeds')
    parser.add_argument('--steps', type=int, default=None, help='step budget (default: the task recipe)')
    parser.add_argument('--eval_interval', type=int, default=None)
    parser.add_argument('--eval_episodes', type=int, default=50)
    parser.add_argument('--eval_max_steps', type=int, default=None)
    parser.add_argument('--dataset_path', default=None, help='one file for every env (tests, custom data)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='cells at once (default: CPU cores for state grids, 1 with image cells)')
    parser.epilog = 'Flags after a lone -- go to every new cell, e.g. -- --agent.lr=1e-3'
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    args = parser.parse_args(argv[:argv.index('--')] if '--' in argv else argv)
    args.extra = extra
    split = lambda s: [x for x in s.split(',') if x]  # noqa: E731
    envs, agents, networks = split(args.envs), split(args.agents), split(args.networks)
    seeds = [int(s) for s in split(args.seeds)]
    out = Path(args.out)
    if args.command == 'collect':
        table, _ = collect(out)
        print(f'{len(table)} rows -> {out / "results.md"}, {out / "success.png"}')
        return 0
    if args.steps is None:
        from envs.robomimic_utils import parse_env_name
        from envs.task_defaults import task_defaults

        names = [parse_env_name(e) for e in envs]
        budgets = {task_defaults(n.task, n.obs_type, agent_label(a))[0].get('offline_steps', 20000)
                   for n in names for a in agents}
        if len(budgets) != 1:
            parser.error(f'--steps: the task recipes differ ({sorted(budgets)}); give one budget')
        args.steps = budgets.pop()
    if args.jobs is None:
        args.jobs = 1 if any(is_image(e) for e in envs) else (os.cpu_count() or 1)
    cells = make_cells(envs, agents, networks, seeds)
    out.mkdir(parents=True, exist_ok=True)
    grid = out / 'grid.json'
    known = json.loads(grid.read_text())['cells'] if grid.is_file() else []
    names = {c['name'] for c in known}
    all_cells = known + [c for c in cells if c['name'] not in names]  # a later call may add cells
    grid.write_text(json.dumps({'cells': all_cells, 'last_call': vars(args)}, indent=2, default=str))
    prepare_data(envs, args.dataset_path)
    sweep = Sweep(out, cells, args)
    failed = sweep.run()
    collect(out, all_cells)
    print(f'[sweep] results: {out / "results.md"}, plot: {out / "success.png"}'
          + (f'; {failed} cell(s) failed, see their log.txt' if failed else ''), flush=True)
    if sweep.stopping:
        return 128 + sweep.stopping
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
