"""bench.experiments: the sweep end to end on a tiny grid (skip done cells, resume, SIGTERM), tables."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import experiments
from utils.stats import wilson_interval

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--agent.batch_size=4', '--agent.horizon_length=8', '--agent.action_steps=4', '--agent.emb_dim=16',
        '--agent.mlp_hidden_dims=(32,32)', '--agent.flow_steps=2', '--log_interval=1', '--save_interval=2']


@pytest.mark.parametrize('k, n, low, high', [
    (24, 50, 0.348, 0.615), (0, 50, 0.0, 0.071), (50, 50, 0.929, 1.0), (1, 2, 0.095, 0.905)])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-4) and hi == pytest.approx(high, abs=5e-4)


def test_wilson_interval_refuses_bad_counts():
    with pytest.raises(ValueError, match='successes'):
        wilson_interval(3, 2)


def sweep_cmd(out, dataset, steps, seeds='0,1'):
    return [sys.executable, '-m', 'bench.experiments', 'run', f'--out={out}', '--envs=lift-scripted-low_dim',
            '--agents=fbc', f'--seeds={seeds}', f'--steps={steps}', '--eval_interval=2', '--eval_episodes=2',
            '--eval_max_steps=10', f'--dataset_path={dataset}', '--jobs=2', '--', *TINY]


def run_sweep(out, dataset, steps, seeds='0,1'):
    proc = subprocess.run(sweep_cmd(out, dataset, steps, seeds), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_sweep_end_to_end(lift_state_file, tmp_path):
    out = tmp_path / 'sweep'
    first = run_sweep(out, lift_state_file, steps=2)
    assert first.count(': new') == 2
    rows = read_csv(out / 'results.csv')
    assert [(r['step'], r['seeds'], r['episodes']) for r in rows] == [('2', '2', '4')]
    assert (out / 'results.md').read_text().count('| lift-scripted-low_dim | fbc | default |') == 2
    assert (out / 'success.png').stat().st_size > 1000

    second = run_sweep(out, lift_state_file, steps=2)  # nothing to do: both cells are done
    assert second.count('done, skipped') == 2 and ': new' not in second

    # A larger budget: both cells continue from their checkpoints with --resume, in the same run directory.
    third = run_sweep(out, lift_state_file, steps=4)
    assert third.count(': resume') == 2
    for cell in ('lift-scripted-low_dim_fbc_default_s0', 'lift-scripted-low_dim_fbc_default_s1'):
        (run_dir,) = glob.glob(str(out / 'cells' / cell / 'run' / '*'))
        assert json.loads(Path(run_dir, 'summary.json').read_text())['step'] == 4
        assert [r['step'] for r in read_csv(Path(run_dir) / 'eval.csv')] == ['2', '4']
    assert [r['step'] for r in read_csv(out / 'results.csv')] == ['2', '4']


@pytest.mark.slow
def test_sigterm_reaches_cells_and_the_next_call_resumes(lift_state_file, tmp_path):
    out = tmp_path / 'sweep'
    cmd = sweep_cmd(out, lift_state_file, steps=400, seeds='0')
    tiny = [a for a in TINY if not a.startswith('--save_interval')]
    cmd[cmd.index('--'):] = ['--', *tiny, '--save_interval=0']
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not glob.glob(str(out / 'cells' / '*' / 'run' / '*' / 'train.csv')):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, 'the cell wrote no train.csv within 240 s'
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    (run_dir,) = glob.glob(str(out / 'cells' / '*' / 'run' / '*'))
    assert os.path.isfile(os.path.join(run_dir, 'checkpoints', 'latest.pt'))  # written on the signal
    assert not os.path.exists(os.path.join(run_dir, 'summary.json'))
    state, _ = experiments.cell_state(out, experiments.make_cells(['lift-scripted-low_dim'], ['fbc'],
                                                                 ['default'], [0])[0], 400)
    assert state == 'resume'


def test_collect_reads_old_eval_csv_without_new_columns(tmp_path):
    """Run directories written before `successes` existed still collect (counts from the rate)."""
    cell = experiments.make_cells(['can-scripted-low_dim'], ['fbc'], ['mlp'], [0])[0]
    run = experiments.cell_dir(tmp_path, cell) / 'run' / 'old_run'
    run.mkdir(parents=True)
    header = 'step,success_rate,episode_length,episode_return,num_episodes,env_steps_per_s\n'
    (run / 'eval.csv').write_text(header + '5000,0.48,300,0,50,100\n10000,0.5,290,0,50,100\n')
    (run / 'summary.json').write_text(json.dumps({'step': 10000}))
    table, summaries = experiments.collect(tmp_path, [cell])
    assert [(r['step'], r['successes'], r['episodes']) for r in table] == [(5000, 24, 50), (10000, 25, 50)]
    assert table[0]['wilson_low'] == pytest.approx(0.348, abs=5e-4)
    assert summaries[0]['max_over_evals'] == 0.5 and summaries[0]['mean_last5'] == pytest.approx(0.49)
