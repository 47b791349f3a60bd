"""Success against network evaluations per action chunk: each checkpoint evaluated at several sampler steps.

    python -m bench.nfe --out docs/results/round4/nfe --nfe 1,2,4,10 --episodes 50 \
        runs/.../checkpoints/latest.pt runs/.../checkpoints/latest.pt ...

The sampler's step count is the agent's own field: `sample_steps` for the MeanFlow agents (flow-map steps),
`flow_steps` for FBC (Euler steps); each is one network call per step. Every evaluation is `train_bc.py`'s
(`run_evaluation`): the checkpoint's env, its `eval_seed` and `action_steps`, `--episodes` episodes. Writes
`<out>/nfe.csv` (one row per checkpoint and step count, with the 95% Wilson interval) and `<out>/nfe.png`
(success against network calls per chunk, the mean over the checkpoints of each env and agent, with their
min-max). Arguments ending in `.csv` are earlier `nfe.csv` files: their rows join the new ones, so that
`python -m bench.nfe --out both a/nfe.csv b/nfe.csv` draws one plot from two earlier runs.
"""

import argparse
import csv
import os
import statistics
from collections import defaultdict

import torch

FIELDS = ['env', 'agent', 'checkpoint', 'step', 'nfe', 'success_rate', 'successes', 'num_episodes',
          'success_ci_low', 'success_ci_high']


def steps_field(config) -> str:
    """The config field that sets the sampler's network calls per chunk."""
    return 'sample_steps' if 'sample_steps' in config else 'flow_steps'


def evaluate_at(path, nfes, episodes, workers=1):
    """Rows of FIELDS: the checkpoint at `path` evaluated once per step count in `nfes`."""
    import train_bc  # here: its flags stay undefined until this tool is used
    from agents import AGENTS

    extra = train_bc.load_extra(path)
    config = extra['config']
    agent = AGENTS[config['agent_name']].load(path, device='cpu')
    field = steps_field(agent.config)
    flags = {**extra['flags'], 'eval_episodes': episodes, 'eval_workers': workers, 'video_episodes': 0,
             'video_failures': 0}
    rows = []
    for nfe in nfes:
        agent.config[field] = int(nfe)
        stats, _ = train_bc.run_evaluation(agent, agent.config, extra['shape_meta'], extra['env'], flags)
        rows.append({'env': flags['env_name'], 'agent': config['agent_name'], 'checkpoint': path,
                     'step': extra['trainer']['step'], 'nfe': nfe,
                     **{k: stats[k] for k in FIELDS if k in stats}})
        print(f"{flags['env_name']} {config['agent_name']} step {rows[-1]['step']} {field}={nfe}: "
              f"{stats['success_rate']:.2f} [{stats['success_ci_low']:.3f}, {stats['success_ci_high']:.3f}]",
              flush=True)
    return rows


def plot(path, rows):
    """Success against network calls per chunk, one line per (env, agent), mean with min-max over runs."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        groups[(r['env'], r['agent'])][int(r['nfe'])].append(float(r['success_rate']))
    envs = sorted({env for env, _ in groups})
    fig, axes = plt.subplots(1, len(envs), figsize=(4.5 * len(envs), 3.5), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for (e, agent), by_nfe in sorted(groups.items()):
            if e != env:
                continue
            xs = sorted(by_nfe)
            mean = [statistics.mean(by_nfe[x]) for x in xs]
            low = [min(by_nfe[x]) for x in xs]
            high = [max(by_nfe[x]) for x in xs]
            runs = len(by_nfe[xs[0]])
            ax.plot(xs, mean, marker='o', label=f'{agent} ({runs} run{"s" if runs > 1 else ""})')
            ax.fill_between(xs, low, high, alpha=0.2)
        ax.set_xscale('log', base=2)
        ax.set_xticks(sorted({int(r['nfe']) for r in rows}), labels=[str(x) for x in
                      sorted({int(r['nfe']) for r in rows})])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel('network evaluations per action chunk')
        ax.set_ylabel('success rate')
        ax.set_title(env)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    """Evaluate every checkpoint at every step count; write nfe.csv and nfe.png under --out."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoints', nargs='+', help='checkpoint files (or earlier nfe.csv files)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--nfe', default='1,2,4,10', help='comma-separated network calls per chunk')
    parser.add_argument('--episodes', type=int, default=50)
    parser.add_argument('--workers', type=int, default=1)
    args = parser.parse_args(argv)
    nfes = [int(x) for x in args.nfe.split(',') if x]
    if not nfes or min(nfes) < 1:
        parser.error(f'--nfe={args.nfe}: expected comma-separated integers >= 1')
    for path in args.checkpoints:
        if not os.path.isfile(path):
            parser.error(f'checkpoint {path!r} does not exist')
    if os.path.exists(os.path.join(args.out, 'nfe.csv')):
        parser.error(f'{os.path.join(args.out, "nfe.csv")} exists: pick another --out (results are never '
                     'overwritten)')
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for path in args.checkpoints:
        if path.endswith('.csv'):
            with open(path, newline='') as f:
                rows.extend(csv.DictReader(f))
        else:
            rows.extend(evaluate_at(path, nfes, args.episodes, args.workers))
    with open(os.path.join(args.out, 'nfe.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(os.path.join(args.out, 'nfe.png'), rows)
    print(f"{len(rows)} rows -> {os.path.join(args.out, 'nfe.csv')}, {os.path.join(args.out, 'nfe.png')}")
    return 0


if __name__ == '__main__':
    main()
