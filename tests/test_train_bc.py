"""train_bc.py end to end through its real CLI: every agent, images, kill + resume, eval-only, bad flags."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from agents import AGENTS
from tests.helpers import (
    ROOT,
    TINY,
    assert_same_train_log,
    read_csv,
    run_cli,
    run_dirs,
    sigterm_once,
    tensors_equal,
)
from utils.network_factory import NETWORKS
from utils.shape_meta import rgb_keys
from utils.training import load_checkpoint

EVAL_COLUMNS = ['step', 'success_rate', 'successes', 'success_ci_low', 'success_ci_high', 'episode_length',
                'episode_return', 'num_episodes', 'env_steps_per_s']


def check_run_dir(run_dir, steps, eval_episodes):
    """The run directory holds flags.json, train.csv, eval.csv with the expected columns, and checkpoints."""
    with open(os.path.join(run_dir, 'flags.json')) as f:
        saved = json.load(f)
    assert saved['offline_steps'] == steps and 'agent' in saved and 'code_version' in saved
    train = read_csv(os.path.join(run_dir, 'train.csv'))
    assert int(train[-1]['step']) == steps
    assert any(k.endswith('loss') for k in train[0]) and any(k.startswith('val/') for k in train[0])
    with open(os.path.join(run_dir, 'eval.csv'), newline='') as f:
        assert next(csv.reader(f)) == EVAL_COLUMNS
    rows = read_csv(os.path.join(run_dir, 'eval.csv'))
    assert int(rows[-1]['num_episodes']) == eval_episodes
    assert 0.0 <= float(rows[-1]['success_rate']) <= 1.0 and float(rows[-1]['episode_length']) > 0
    for name in ('latest.pt', 'best.pt'):
        assert os.path.isfile(os.path.join(run_dir, 'checkpoints', name))


@pytest.mark.slow
@pytest.mark.parametrize('agent', sorted(AGENTS))
def test_every_agent_on_state(agent, lift_state_file, tmp_path):
    episodes = 2 if agent == 'fbc' else 1  # fbc also exercises the two evaluation workers
    proc = run_cli([f'--agent={AGENTS[agent].config_file()}', f'--dataset_path={lift_state_file}',
                    '--offline_steps=2', '--log_interval=1', '--eval_interval=2', '--save_interval=2',
                    f'--eval_episodes={episodes}', '--eval_max_steps=30', *TINY], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    check_run_dir(run_dir, steps=2, eval_episodes=episodes)
    ckpt = load_checkpoint(os.path.join(run_dir, 'checkpoints', 'latest.pt'))
    assert ckpt['agent_name'] == agent
    # the 'chunk_cov' noise prior (MFBC, IMFBC, FQL) is fitted on the file's action chunks: (Tp*A)^2, and no
    # run warns that it got none (the flag check's throwaway agent is built without them)
    size = int(ckpt['config']['horizon_length']) * int(ckpt['shape_meta']['action']['shape'][0])
    if ckpt['config']['noise_prior'] == 'chunk_cov':
        assert tuple(ckpt['noise_factor'].shape) == (size, size)
    else:
        assert ckpt['noise_factor'] is None
    assert 'got no action_chunks' not in proc.stderr + proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize('agent', ['fbc', 'mfbc'])
@pytest.mark.parametrize('network', sorted(set(NETWORKS) - {'mlp'}))  # mlp: the state tests
def test_image_agents(agent, network, lift_image_file, tmp_path):
    run_cli([f'--agent={AGENTS[agent].config_file()}', '--env_name=lift-scripted-image',
             f'--dataset_path={lift_image_file}', f'--network_type={network}', '--agent.encoder=impala',
             '--obs_steps=2', '--offline_steps=2', '--log_interval=1', '--eval_interval=2',
             '--save_interval=2', '--eval_episodes=1', '--eval_max_steps=30', *TINY], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    check_run_dir(run_dir, steps=2, eval_episodes=1)
    ckpt = load_checkpoint(os.path.join(run_dir, 'checkpoints', 'latest.pt'))
    assert ckpt['config']['network_type'] == network and rgb_keys(ckpt['shape_meta'])
    assert 'config' not in ckpt['extra'] and 'shape_meta' not in ckpt['extra']  # written once, by the agent


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(lift_state_file, tmp_path):
    steps = 300
    args = [f'--dataset_path={lift_state_file}', f'--offline_steps={steps}', '--log_interval=25',
            '--save_interval=25', '--eval_episodes=0', '--seed=3', *TINY]
    run_cli(args, tmp_path / 'full')
    (full,) = run_dirs(tmp_path / 'full')

    save_dir = tmp_path / 'killed'
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}', *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not glob.glob(str(save_dir / '*' / '*' / 'checkpoints' / 'latest.pt')):
        assert proc.poll() is None, f'run ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}'
        assert time.time() < deadline, 'no checkpoint within 180 s'
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (killed,) = run_dirs(save_dir)
    killed_ckpt = load_checkpoint(os.path.join(killed, 'checkpoints', 'latest.pt'))
    killed_step = killed_ckpt['extra']['trainer']['step']
    assert killed_step < steps, 'the run finished before it could be killed; make it longer'

    run_cli([f'--resume={killed}', '--wandb_mode=disabled'], save_dir)
    a = load_checkpoint(os.path.join(full, 'checkpoints', 'latest.pt'))
    b = load_checkpoint(os.path.join(killed, 'checkpoints', 'latest.pt'))
    assert b['extra']['trainer']['step'] == steps
    tensors_equal(a['trainer'], b['trainer'])  # weights, EMA, optimizer, LR schedule
    tensors_equal(a['rng'], b['rng'], 'rng')
    assert_same_train_log(full, killed)


@pytest.mark.slow
def test_sigterm_writes_latest_and_resume_finishes(lift_state_file, tmp_path):
    steps = 300
    args = [f'--dataset_path={lift_state_file}', f'--offline_steps={steps}', '--log_interval=10',
            '--save_interval=0', '--eval_episodes=0', '--seed=4', *TINY]
    save_dir = tmp_path / 'stopped'
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}', *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped, err = sigterm_once(proc, save_dir, 'train.csv', 'its first log row')
    step = load_checkpoint(os.path.join(stopped, 'checkpoints', 'latest.pt'))['extra']['trainer']['step']
    assert 1 <= step < steps  # save_interval=0: only the signal wrote this checkpoint
    assert not os.path.exists(os.path.join(stopped, 'summary.json'))
    run_cli([f'--resume={stopped}', '--wandb_mode=disabled'], save_dir)
    assert json.load(open(os.path.join(stopped, 'summary.json')))['step'] == steps
    run_cli(args, tmp_path / 'full')
    (full,) = run_dirs(tmp_path / 'full')
    assert_same_train_log(full, stopped)


@pytest.mark.slow
def test_failure_videos_and_episode_log(lift_state_file, tmp_path):
    run_cli([f'--dataset_path={lift_state_file}', '--offline_steps=2', '--eval_interval=2',
             '--eval_episodes=2', '--eval_max_steps=15', '--video_failures=1', '--eval_seed=7', *TINY],
            tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    rows = read_csv(os.path.join(run_dir, 'episodes.csv'))
    assert [(r['step'], r['episode'], r['seed']) for r in rows] == [('2', '0', '7'), ('2', '1', '8')]
    assert all(r['success'] == '0.0' and r['length'] == '15' for r in rows)  # 2 untrained steps: failures
    videos = sorted(os.listdir(os.path.join(run_dir, 'videos')))
    assert len(videos) == 1 and videos[0].endswith('_fail.mp4'), videos  # the first failure only
    (ev,) = read_csv(os.path.join(run_dir, 'eval.csv'))
    assert ev['successes'] == '0' and float(ev['success_ci_high']) == pytest.approx(0.658, abs=1e-3)


TASK_DEFAULTS_SCRIPT = '''
import sys
import envs.task_defaults as td
td.TASK_DEFAULTS['lift'] = {'low_dim': {
    'flags': {'offline_steps': 3, 'eval_interval': 3},
    'agent': {'lr': 0.123, 'batch_size': 6, 'mlp_hidden_dims': (24, 24)},
    'agents': {'fbc': {'flow_steps': 3}, 'mfbc': {'flow_steps': 99}}}}
from absl import app
import train_bc
sys.argv = ['train_bc.py'] + sys.argv[1:]
app.run(train_bc.entry)
'''


def test_task_defaults_fill_only_what_the_user_did_not_give(lift_state_file, tmp_path):
    script = tmp_path / 'run.py'
    script.write_text(TASK_DEFAULTS_SCRIPT)
    cmd = [sys.executable, str(script), f'--dataset_path={lift_state_file}', '--eval_episodes=0',
           '--agent.lr=0.5', '--agent.batch_size=4', '--agent.horizon_length=8', '--agent.action_steps=4',
           '--agent.emb_dim=16', f'--save_dir={tmp_path}', '--wandb_mode=disabled']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)
    saved = json.load(open(os.path.join(run_dir, 'flags.json')))
    assert saved['offline_steps'] == 3 and saved['eval_interval'] == 3  # not given: the recipe's
    agent = saved['agent']
    assert agent['lr'] == 0.5 and agent['batch_size'] == 4  # given on the command line: kept
    assert agent['flow_steps'] == 3 and agent['mlp_hidden_dims'] == [24, 24]  # not given: the recipe's
    assert saved['task_defaults'] == {'offline_steps': 3, 'eval_interval': 3, 'agent.flow_steps': 3,
                                      'agent.mlp_hidden_dims': [24, 24]}
    assert int(read_csv(os.path.join(run_dir, 'train.csv'))[-1]['step']) == 3


@pytest.mark.slow
def test_eval_only_from_checkpoint(lift_state_file, tmp_path):
    run_cli([f'--dataset_path={lift_state_file}', '--offline_steps=2', '--save_interval=2',
             '--eval_episodes=0', *TINY], tmp_path / 'train')
    (run_dir,) = run_dirs(tmp_path / 'train')
    ckpt = os.path.join(run_dir, 'checkpoints', 'latest.pt')
    # No dataset or agent flags: everything comes from the checkpoint.
    proc = run_cli(['--eval_only', f'--checkpoint={ckpt}', '--eval_episodes=1', '--eval_max_steps=20'],
                   tmp_path / 'eval')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['step'] == 2 and result['num_episodes'] == 1 and result['episode_length'] == 20
    assert read_csv(os.path.join(result['eval_dir'], 'eval.csv'))[0]['success_rate'] == '0.0'


@pytest.mark.slow
def test_eval_only_takes_the_sampling_fields_only(lift_state_file, tmp_path):
    """--eval_only with an agent's eval_fields evaluates the checkpoint that way and records them; another
    --agent field is refused, naming it, before any episode runs."""
    run_cli([f'--dataset_path={lift_state_file}', '--agent=agents/fql.py', '--offline_steps=2',
             '--save_interval=2', '--eval_episodes=0', *TINY], tmp_path / 'train')
    (run_dir,) = run_dirs(tmp_path / 'train')
    ckpt = os.path.join(run_dir, 'checkpoints', 'latest.pt')
    base = ['--eval_only', f'--checkpoint={ckpt}', '--eval_episodes=1', '--eval_max_steps=10',
            '--agent=agents/fql.py']
    proc = run_cli([*base, '--agent.sample_policy=flow', '--agent.flow_steps=3',
                    '--agent.sample_temperature=0.5', '--run_group=flow3'], tmp_path / 'eval')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert os.path.dirname(result['eval_dir']) == str(tmp_path / 'eval' / 'flow3')
    assert result['sample_policy'] == 'flow' and result['flow_steps'] == 3 and result['num_episodes'] == 1
    assert result['sample_temperature'] == 0.5
    with open(os.path.join(result['eval_dir'], 'eval_overrides.json')) as fh:
        assert json.load(fh)['sample_policy'] == 'flow'
    proc = run_cli([*base, '--agent.lr=0.1'], tmp_path / 'bad', check=False)
    assert proc.returncode == 2 and '--agent.lr' in proc.stderr and 'sample_policy' in proc.stderr


@pytest.mark.parametrize('args, message', [
    (['--agent=agents/no_such_agent.py'], 'no_such_agent'),
    (['--network_type=resnet_unet'], 'resnet_unet'),
    (['--dataset_path=/nonexistent/lift.hdf5'], '/nonexistent/lift.hdf5'),
    (['--env_name=lift-xx-low_dim'], 'lift-xx-low_dim'),
    # a preset's obs_type that contradicts the data names both (not an encoder error later on)
    (['--agent=agents/fbc_image.py'], "obs_type='image' contradicts the data: env_name 'lift-scripted"),
    (['--obs_type=image'], "obs_type='image' contradicts the data"),
])
def test_bad_flags_fail_clearly(args, message, request, tmp_path):
    if args[0].startswith('--network_type'):  # needs a real file to get as far as building the network
        args = args + [f'--dataset_path={request.getfixturevalue("lift_state_file")}']
    proc = run_cli([*args, '--offline_steps=1', '--eval_episodes=0', '--wandb_mode=disabled'], tmp_path,
                   check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(lift_state_file, tmp_path):
    # An absurd learning rate drives the weights to ~1e30 after one step, so the next loss is inf / nan.
    proc = run_cli([f'--dataset_path={lift_state_file}', '--offline_steps=50', '--save_interval=1',
                    '--log_interval=1', '--eval_episodes=0', '--agent.lr=1e30', '--agent.warmup_steps=0',
                    '--agent.use_ema=False', *TINY], tmp_path, check=False)
    assert proc.returncode != 0
    assert 'non-finite loss' in proc.stderr and 'Traceback' not in proc.stderr
    (run_dir,) = run_dirs(tmp_path)
    ckpt = load_checkpoint(os.path.join(run_dir, 'checkpoints', 'latest.pt'))
    assert 1 <= ckpt['extra']['trainer']['step'] < 50
    weights = [v for v in ckpt['trainer']['model'].values() if torch.is_tensor(v)]
    assert weights and all(torch.isfinite(w).all() for w in weights)


@pytest.mark.parametrize('extra, applied', [
    ([], {'agent.network_type': 'mlp', 'agent.lr': 1e-3, 'agent.action_steps': 4,
          'agent.sample_temperature': 0.0}),
    (['--agent.lr=3e-4'], {'agent.network_type': 'mlp', 'agent.action_steps': 4,
                           'agent.sample_temperature': 0.0}),
    (['--network_type=chiunet', '--agent.model_dim=16', '--agent.dim_mult=(1,2)'], {}),
])
def test_the_can_recipe_a_user_gets(extra, applied, lift_state_file, tmp_path):
    """`--env_name=can-scripted-low_dim` alone resolves to the measured FBC recipe; a given field wins, and
    another network drops the recipe's agent fields (they were tuned for the MLP)."""
    proc = run_cli(['--env_name=can-scripted-low_dim', f'--dataset_path={lift_state_file}',
                    '--offline_steps=1', '--eval_episodes=0', '--agent.batch_size=4', '--wandb_mode=disabled',
                    *extra], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    saved = json.load(open(os.path.join(run_dir, 'flags.json')))
    recipe = {k: v for k, v in saved['task_defaults'].items() if k.startswith('agent.')}
    assert recipe == applied
    assert saved['eval_interval'] == 5000  # the task's flag default, whatever the network
    if not applied:
        assert 'tuned for network_type' in proc.stderr
    else:
        assert saved['agent']['lr'] == (3e-4 if extra else 1e-3) and saved['agent']['action_steps'] == 4
        assert saved['agent']['sample_temperature'] == 0.0
    if extra and extra[0].startswith('--network_type'):
        assert saved['agent']['sample_temperature'] == 1.0  # FBC's own default with another network


@pytest.mark.parametrize('env_name, temperature', [
    ('can-careless-low_dim', 0.0), ('lift-mixed-low_dim', 1.0), ('square-scripted-low_dim', 1.0)])
def test_acfql_acts_from_z_0_on_can_only(env_name, temperature, lift_state_file, tmp_path):
    """ACFQL's Can recipe is its one-step policy at z = 0; its horizons and optimizer stay its own."""
    run_cli([f'--env_name={env_name}', f'--dataset_path={lift_state_file}', '--agent=agents/fql.py',
             '--offline_steps=1', '--eval_episodes=0', '--agent.batch_size=4', '--wandb_mode=disabled'],
            tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    saved = json.load(open(os.path.join(run_dir, 'flags.json')))
    assert saved['agent']['sample_temperature'] == temperature
    assert {k for k in saved['task_defaults'] if k.startswith('agent.')} == (
        {'agent.sample_temperature'} if temperature == 0 else set())
    assert saved['agent']['horizon_length'] == 5 and saved['agent']['lr'] == 1e-3


def test_filter_key_trains_on_one_mask_and_mixed_names_get_the_task_recipe(lift_mixed_file, tmp_path):
    """--filter_key=better trains on mask/better's demos only (its train / valid demos), is recorded in
    flags.json and the run name; a mixed env name gets the same task recipe as the scripted one."""
    import h5py

    proc = run_cli(['--env_name=can-mixed-low_dim', f'--dataset_path={lift_mixed_file}',
                    '--filter_key=better', '--offline_steps=1', '--eval_episodes=0', '--agent.batch_size=4',
                    '--wandb_mode=disabled'], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    saved = json.load(open(os.path.join(run_dir, 'flags.json')))
    assert saved['filter_key'] == 'better' and '_better_' in os.path.basename(run_dir)
    assert saved['task_defaults'] == {'eval_interval': 5000, 'agent.network_type': 'mlp', 'agent.lr': 1e-3,
                                      'agent.action_steps': 4, 'agent.sample_temperature': 0.0}
    with h5py.File(lift_mixed_file, 'r') as f:
        better, train, valid = ({x.decode() for x in f[f'mask/{k}'][()]}
                                for k in ('better', 'train', 'valid'))
    counts = f'{len(better & train)} train / {len(better & valid)} valid demos'
    assert f'--filter_key=better: {counts}' in proc.stderr
    # summary.json names the file and the demos the run trained on
    data = json.load(open(os.path.join(run_dir, 'summary.json')))['dataset']
    assert data == {'file': str(lift_mixed_file), 'filter_key': 'better', 'train_demos': len(better & train),
                    'valid_demos': len(better & valid)}


def test_bad_filter_key_lists_the_files_masks(lift_mixed_file, tmp_path):
    proc = run_cli([f'--dataset_path={lift_mixed_file}', '--filter_key=best', '--offline_steps=1',
                    '--eval_episodes=0', '--wandb_mode=disabled'], tmp_path, check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert ("filter_key='best' is not a mask of this file; its masks: better, okay, okay_better, train, "
            'valid, worse, worse_better, worse_okay') in proc.stderr
    assert not run_dirs(tmp_path)


@pytest.mark.parametrize('args, message', [
    (['--filter_key=better'], 'has masks train, valid'),  # a scripted file has no operator groups
    (['--env_name=can-mixed-low_dim', '--filter_key=best'], 'has masks train, valid, better, okay, worse'),
    (['--env_name=can-careless-low_dim', '--filter_key=okay'], 'has masks train, valid, better, careless, '
                                                               'careless_better'),
    (['--env_name=lift-careless-low_dim'], "the 'careless' operator misplaces the object, and lift places nothing"),
    (['--agent.horizon_length=0'], 'horizon_length'),
    (['--network_type=cnn'], 'cnn'),
    (['--agent.action_steps=32'], 'action_steps'),
    (['--offline_steps=-5'], '--offline_steps=-5'),
    (['--eval_workers=0'], '--eval_workers=0'),
    (['--env_name=can-scripted-image', '--agent.encoder=resnet99'], 'resnet99'),
])
def test_bad_values_fail_before_any_data_is_made(args, message, tmp_path):
    """With no data file yet (a first run), a bad value is reported at once: nothing generated, no run dir."""
    data_dir, save_dir = tmp_path / 'data', tmp_path / 'runs'
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), '--env_name=can-scripted-low_dim',
           f'--save_dir={save_dir}', '--wandb_mode=disabled', *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ROBOMIMIC_DATA_DIR=str(data_dir)))
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert not data_dir.exists() and not save_dir.exists()
    print(f'{args}: error after {seconds:.1f} s')
