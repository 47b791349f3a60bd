"""Offline-to-online fine-tuning: the replay file, episode collection and its seeds (envs/online.py), and
train_bc.py's online phase end to end (episodes appended, update-to-data ratio, LR span, kill + resume)."""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

from agents import AGENTS
from envs.env_utils import EnvFactory
from envs.experts import EXPERTS
from envs.hdf5_reader import read_env_meta, read_robomimic
from envs.online import (
    EpisodeCollector,
    ReplayFile,
    check_seed_ranges,
    chunk_noise_seed,
    chunk_sizes,
    collection_seed,
)
from envs.robomimic_utils import load_datasets
from envs.synthetic import lift_env_args, write_robomimic_file
from tests.helpers import (
    ROOT,
    TINY,
    assert_same_train_log,
    read_csv,
    run_cli,
    run_dirs,
    shape_meta,
    sigterm_once,
    tensors_equal,
)
from utils.shape_meta import random_obs
from utils.training import load_checkpoint, lr_lambda


def test_chunk_sizes():
    assert chunk_sizes(10, 4) == [4, 4, 2]
    assert chunk_sizes(8, 4) == [4, 4]
    assert chunk_sizes(3, 5) == [3]
    with pytest.raises(ValueError, match='length=0'):
        chunk_sizes(0, 4)


def test_collection_seeds_never_overlap_evaluation_seeds():
    # evaluation seeds [1000, 1050); 100 online env steps reserve collection seeds [c, c + 100)
    for ok in (1050, 900, 0, 10**9):
        check_seed_ranges(ok, 100, eval_seed=1000, eval_episodes=50)
    for bad in (901, 1000, 1049, 960):
        with pytest.raises(ValueError, match=f'--collect_seed={bad}: .* overlaps the evaluation seeds'):
            check_seed_ranges(bad, 100, eval_seed=1000, eval_episodes=50)
    check_seed_ranges(1000, 0, eval_seed=1000, eval_episodes=50)  # no online phase, nothing to collide
    with pytest.raises(ValueError, match='>= 0'):
        check_seed_ranges(-1, 10, eval_seed=1000, eval_episodes=50)
    assert [collection_seed(7, j) for j in range(3)] == [7, 8, 9]
    noise = {chunk_noise_seed(s, k) for s in (7, 8) for k in range(50)}
    assert len(noise) == 100 and all(0 <= n < 2**64 for n in noise)


def fake_episode(meta, length, seed, rng, success=False):
    """An episode record with random content in the layout of envs/online.py."""
    obs = {k: v[:, 0] for k, v in random_obs(meta, length, 1, rng).items()}  # (L, *shape)
    dones = np.zeros(length, np.float32)
    dones[-1] = float(success)
    return {'obs': obs, 'actions': rng.uniform(-1, 1, (length, 7)).astype(np.float32),
            'rewards': dones.copy(), 'dones': dones, 'states': rng.standard_normal((length, 5)),
            'seed': seed, 'success': success, 'length': length, 'return': float(dones.sum()),
            'end': 'success' if success else 'step_limit'}


def test_replay_file_is_append_only_robomimic_layout(tmp_path):
    meta = shape_meta(image_hw=(6, 8))  # rgb keys too: stored H x W x 3, read back C x H x W
    env_meta = {'env_args': lift_env_args(image_size=6), 'render_quality': 'cheap', 'source_file': 'x.hdf5'}
    rng = np.random.default_rng(0)
    path = tmp_path / 'replay.hdf5'
    replay = ReplayFile.create(path, env_meta, meta)
    episodes = [fake_episode(meta, n, 100 + j, rng, success=j == 1) for j, n in enumerate((5, 3, 7))]
    for j, ep in enumerate(episodes[:2]):
        assert replay.append(ep, attrs={'env_step': 5 * (j + 1)}) == j
    assert replay.num_episodes == 2
    with pytest.raises(FileExistsError):
        ReplayFile.create(path, env_meta, meta)  # never overwritten
    assert replay.num_episodes == 2

    # an append interrupted before its commit leaves a remnant group: dropped when the file is opened again
    with h5py.File(path, 'a') as f:
        f['data'].create_group('demo_2').create_dataset('actions', data=np.zeros((4, 7)))
        f['data'].attrs['total'] = 999
    replay = ReplayFile.open(path, meta)
    with h5py.File(path, 'r') as f:
        assert 'demo_2' not in f['data'] and f['data'].attrs['total'] == 8
    assert replay.append(episodes[2]) == 2

    for j, ep in enumerate(episodes):
        back = replay.read(j)
        for key in meta['obs']:
            np.testing.assert_array_equal(back['obs'][key], ep['obs'][key])
        for key in ('actions', 'rewards', 'dones', 'states'):
            np.testing.assert_array_equal(back[key], ep[key])
        assert (back['seed'], back['success'], back['length'], back['end']) == (
            ep['seed'], ep['success'], ep['length'], ep['end'])
    assert replay.read(1)['attrs']['env_step'] == 10
    with pytest.raises(IndexError, match='not committed'):
        replay.read(3)

    # any robomimic reader sees one demo per episode, images in the file's H x W x 3 layout
    data = read_robomimic(path, list(meta['obs']), valid_fraction=0.0)
    assert data.demo_names == ['demo_0', 'demo_1', 'demo_2'] and data.lengths.tolist() == [5, 3, 7]
    np.testing.assert_array_equal(data.actions, np.concatenate([e['actions'] for e in episodes]))
    np.testing.assert_array_equal(data.obs['agentview_image'],
                                  np.concatenate([e['obs']['agentview_image'] for e in episodes]))
    with h5py.File(path, 'r') as f:
        assert f['data/demo_0/obs/agentview_image'].shape == (5, 6, 8, 3)
    assert read_env_meta(path)['env_args'] == env_meta['env_args']
    assert read_env_meta(path)['render_quality'] == 'cheap'

    with pytest.raises(ValueError, match='the run expects'):
        ReplayFile.open(path, shape_meta())
    other = write_robomimic_file(tmp_path / 'demos.hdf5')
    with pytest.raises(ValueError, match='is not an online replay file'):
        ReplayFile.open(other, meta)


def test_collector_stores_success_truncation_and_budget(lift_state_file):
    train, _ = load_datasets(lift_state_file, 'state')
    env = EnvFactory(train.env_meta, train.shape_meta, max_episode_steps=200)()
    expert = {}

    def expert_policy(obs):  # the scripted expert, one action per chunk (Ta = 1)
        if 'e' not in expert:
            expert['e'] = EXPERTS['lift'](env)  # built after the reset, as envs.generate_demos does
        return expert['e'].act()[None, None]

    chunks = []
    collector = EpisodeCollector(lambda: env, obs_steps=2, action_steps=1, max_steps=200)
    ep = collector.run(expert_policy, seed=2_000_000, after_chunk=lambda n: chunks.append(n) or True)
    n = ep['length']
    assert ep['success'] and ep['end'] == 'success' and 20 < n < 200
    assert ep['dones'].tolist() == [0.0] * (n - 1) + [1.0]  # a success stores done = 1
    assert ep['rewards'].tolist() == [0.0] * (n - 1) + [1.0] and ep['return'] == 1.0  # raw sparse rewards
    assert chunks == chunk_sizes(n, 1)
    assert {k: v.shape for k, v in ep['obs'].items()} == {
        k: (n, *m['shape']) for k, m in train.shape_meta['obs'].items()}
    assert ep['actions'].shape == (n, 7) and ep['states'].shape[0] == n

    def zeros(obs):
        return np.zeros((1, 4, 7), np.float32)

    short = EpisodeCollector(lambda: env, obs_steps=2, action_steps=4, max_steps=12)
    chunks.clear()
    limit = short.run(zeros, seed=5, after_chunk=lambda n: chunks.append(n) or True)
    assert (limit['end'], limit['length'], chunks) == ('step_limit', 12, [4, 4, 4])
    assert not limit['dones'].any() and not limit['success']  # a step-limit end is a truncation: done = 0
    chunks.clear()
    cut = short.run(zeros, seed=5, budget=6, after_chunk=lambda n: chunks.append(n) or True)
    assert (cut['end'], cut['length'], chunks) == ('budget', 6, [4, 2]) and not cut['dones'].any()
    np.testing.assert_array_equal(cut['states'], limit['states'][:6])
    assert short.run(zeros, seed=5, after_chunk=lambda n: False) is None  # stopped inside: discarded

    # the same seed in a fresh env gives the same episode (what resume relies on)
    fresh = EpisodeCollector(EnvFactory(train.env_meta, train.shape_meta, 200), 2, 4, 12)
    again = fresh.run(zeros, seed=5)
    np.testing.assert_array_equal(again['states'], limit['states'])
    fresh.close()

    # stored raw, shifted when sampled (ARCHITECTURE.md batch contract): success r - 1 = 0 with mask 0 at the
    # last step; a truncated end r - 1 = -1 with mask 1 (the critic bootstraps)
    for episode, reward, mask in ((ep, 0.0, 0.0), (limit, -1.0, 1.0)):
        train.add_episode(episode['obs'], episode['actions'], episode['rewards'], episode['dones'])
        batch = train.sample_sequence(1, 1, idxs=[len(train) - 1])
        assert (batch['rewards'][0], batch['masks'][0]) == (reward, mask)
    collector.close()


@pytest.mark.parametrize('changes, message', [
    ({'online_steps': 10, 'utd_ratio': 0}, '--utd_ratio=0: expected an integer >= 1'),
    ({'online_steps': -1}, '--online_steps=-1: expected an integer >= 0'),
    ({'offline_steps': 0}, 'nothing to train'),
    ({'online_steps': 10, 'collect_seed': 999_995}, 'overlaps the evaluation seeds [1000000, 1000050)'),
    ({'online_steps': 10, 'eval_seed': 2_000_005}, 'overlaps the evaluation seeds [2000005, 2000055)'),
    ({'online_steps': 10, 'collect_temperature': -0.5}, '--collect_temperature=-0.5: expected a float >= 0'),
    ({'online_steps': 10, 'collect_temperature': float('nan')}, '--collect_temperature=nan: expected a'),
])
def test_online_flag_values_are_checked(changes, message):
    import train_bc

    run_flags = {name: train_bc.FLAGS[name].default for name in train_bc.EXPERIMENT_FLAGS}
    train_bc.check_run_flags({**run_flags, 'online_steps': 10**6, 'offline_steps': 0})  # defaults: disjoint
    with pytest.raises(train_bc.UserError, match=re.escape(message)):
        train_bc.check_run_flags({**run_flags, **changes})


def test_overlapping_seeds_fail_before_anything_is_made(tmp_path):
    proc = run_cli(['--online_steps=10', '--collect_seed=1000000', '--wandb_mode=disabled'], tmp_path,
                   check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert '--collect_seed=1000000: online episodes reset with seeds [1000000, 1000010)' in proc.stderr
    assert not os.path.exists(tmp_path / 'default')


def test_collection_samples_at_the_collect_temperature_and_evaluation_at_the_agents():
    """--collect_temperature: the collecting policy's chunk is sample_actions at that temperature (the
    prior's noise times it) with the chunk's seed, whatever the agent's own sample_temperature, which stays
    in force for evaluation afterwards."""
    import train_bc

    meta = shape_meta()
    config = AGENTS['fbc'].get_config()
    config.update(network_type='mlp', hidden_dims=(16,), horizon_length=4, action_steps=4, obs_steps=1)
    agent = AGENTS['fbc'].create(meta, config, seed=0)
    agent.config.sample_temperature = 0.0  # as a task recipe sets it (Can, Square)
    obs = random_obs(meta, 1, 1, np.random.default_rng(0))
    seed = chunk_noise_seed(2_000_000, 0)
    explore = train_bc.collection_policy(agent, 2_000_000, 1.0)(obs)
    np.testing.assert_array_equal(explore, agent.sample_actions(obs, seed=seed, temperature=1.0).numpy())
    assert agent.config.sample_temperature == 0.0, 'collection must not change how the agent evaluates'
    greedy = agent.sample_actions(obs, seed=seed).numpy()
    np.testing.assert_array_equal(greedy, agent.sample_actions(obs, seed=seed + 1).numpy())  # T = 0
    assert not np.array_equal(explore, greedy)
    np.testing.assert_array_equal(train_bc.collection_policy(agent, 2_000_000, 0.0)(obs), greedy)


def test_a_collect_temperature_the_agent_cannot_sample_at_fails_before_anything_is_made(tmp_path):
    """ACFQL's best-of-N at collection temperature 0 would draw N equal chunks: refused up front."""
    proc = run_cli(['--agent=agents/fql.py', '--agent.best_of_n=4', '--online_steps=10',
                    '--collect_temperature=0', '--wandb_mode=disabled'], tmp_path, check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert ('--collect_temperature=0.0: the online phase samples at this temperature and the agent cannot '
            '(config.best_of_n=4 is invalid') in proc.stderr
    assert not os.path.exists(tmp_path / 'default')


def test_a_resumed_run_keeps_its_collect_temperature(monkeypatch):
    """--resume: a run from before the flag collected at its agent's sample_temperature and keeps it; a
    different --collect_temperature on resume is refused, as the other online flags are."""
    import train_bc

    saved = {'online_steps': 100, 'utd_ratio': 1, 'collect_seed': 2_000_000, 'offline_steps': 10}
    resumed = train_bc.online_flags_of_resumed_run
    assert resumed(saved, {'sample_temperature': 0.0})['collect_temperature'] == 0
    assert resumed(saved, {})['collect_temperature'] == 1.0
    new = {**saved, 'collect_temperature': 1.0}
    monkeypatch.chdir(ROOT)  # --agent's default config file is a path from the repository root
    train_bc.FLAGS(['train_bc.py', '--collect_temperature=0.5'])
    try:
        keeps = '--collect_temperature=0.5: a resumed run keeps its --collect_temperature=1.0'
        with pytest.raises(train_bc.UserError, match=re.escape(keeps)):
            resumed(new, {})
        train_bc.FLAGS(['train_bc.py', '--collect_temperature=1.0'])
        assert resumed(new, {})['collect_temperature'] == 1.0
    finally:
        train_bc.FLAGS.unparse_flags()


SPY = """
import json, sys
sys.path.insert(0, sys.argv[1])
import train_bc
from absl import app

seen = []
collection_policy = train_bc.collection_policy


def spy(agent, episode_seed, temperature):
    seen.append((temperature, float(agent.config.sample_temperature)))
    return collection_policy(agent, episode_seed, temperature)


train_bc.collection_policy = spy
try:
    app.run(train_bc.entry, argv=['train_bc.py', *sys.argv[3:]])
finally:
    json.dump(seen, open(sys.argv[2], 'w'))
"""


@pytest.mark.slow
def test_the_online_phase_collects_at_collect_temperature(lift_state_file, tmp_path):
    """train_bc.py hands --collect_temperature to every online episode's collecting policy, and the agent's
    own sample_temperature (what evaluation uses) is what the run was given."""
    spy, seen = tmp_path / 'spy.py', tmp_path / 'seen.json'
    spy.write_text(SPY)
    args = ['--agent=agents/fql.py', f'--dataset_path={lift_state_file}', '--offline_steps=2',
            '--online_steps=20', '--eval_max_steps=8', '--eval_episodes=0', '--agent.sample_temperature=0',
            '--collect_temperature=0.5', f'--save_dir={tmp_path}', *TINY]
    proc = subprocess.run([sys.executable, str(spy), ROOT, str(seen), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(seen)) == [[0.5, 0.0]] * 3  # 8 + 8 + 4 env steps: three episodes
    (run_dir,) = run_dirs(tmp_path)
    assert json.load(open(os.path.join(run_dir, 'flags.json')))['collect_temperature'] == 0.5


OFFLINE, ONLINE, UTD, TA, LIMIT = 4, 30, 2, 4, 12  # TINY's action_steps is 4


@pytest.mark.slow
@pytest.mark.parametrize('agent', sorted(AGENTS))
def test_online_phase(agent, lift_state_file, tmp_path):
    """Every agent fine-tunes online: episodes appended to the replay, utd_ratio gradient steps per env
    step, collection seeds apart from evaluation seeds, the LR schedule over both phases."""
    run_cli([f'--agent={AGENTS[agent].config_file()}', f'--dataset_path={lift_state_file}',
             f'--offline_steps={OFFLINE}', f'--online_steps={ONLINE}', f'--utd_ratio={UTD}',
             f'--eval_max_steps={LIMIT}', '--eval_episodes=1', '--eval_interval=0', '--log_interval=1',
             '--agent.warmup_steps=0', '--agent.lr_schedule=cosine', *TINY], tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    total = OFFLINE + UTD * ONLINE

    # episodes: 12 + 12 steps at the step limit, then 6 at the env-step budget, each in the replay file
    online = read_csv(os.path.join(run_dir, 'online.csv'))
    collect = 2_000_000  # --collect_seed's default
    assert [(r['episode'], r['seed'], r['length'], r['end']) for r in online] == [
        ('0', str(collect), '12', 'step_limit'), ('1', str(collect + 1), '12', 'step_limit'),
        ('2', str(collect + 2), '6', 'budget')]
    replay = load_datasets(os.path.join(run_dir, 'replay.hdf5'), 'state', valid_fraction=0.0)[0]
    assert replay.num_episodes == 3 and len(replay) == ONLINE
    with h5py.File(os.path.join(run_dir, 'replay.hdf5'), 'r') as f:
        demos = [f['data'][f'demo_{j}'] for j in range(3)]
        assert [int(d.attrs['seed']) for d in demos] == [collect, collect + 1, collect + 2]
        assert not any(d['dones'][()].any() for d in demos)  # no success: truncations, done = 0

    # the update-to-data ratio: utd_ratio * n gradient steps after each chunk of n env steps, so at episode
    # ends (chunk boundaries) step == offline_steps + utd_ratio * env_step, and inside a chunk's updates the
    # step lags by less than one chunk
    assert all(int(r['step']) - OFFLINE == UTD * int(r['env_step']) for r in online)
    rows = read_csv(os.path.join(run_dir, 'train.csv'))
    assert [int(r['step']) for r in rows] == list(range(1, total + 1))
    for r in rows:
        step, env_step = int(r['step']), int(r['env_step'])
        if step <= OFFLINE:
            assert env_step == 0
        else:
            assert UTD * (env_step - TA) < step - OFFLINE <= UTD * env_step, r
    summary = json.load(open(os.path.join(run_dir, 'summary.json')))
    assert (summary['step'], summary['env_steps'], summary['online_episodes']) == (total, ONLINE, 3)

    # the cosine spans both phases: at step s the logged LR is lr * lr_lambda(s - 1) with decay end `total`
    lr = json.load(open(os.path.join(run_dir, 'flags.json')))['agent']['lr']
    for r in rows:
        expected = lr * lr_lambda(int(r['step']) - 1, 0, total, 'cosine')
        assert float(r['train/lr']) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert float(rows[OFFLINE]['train/lr']) > 0.9 * lr  # first online step: far from the end of the decay

    # evaluations at the end of each phase, on the evaluation seeds only
    evals = read_csv(os.path.join(run_dir, 'eval.csv'))
    assert [(r['step'], r['env_step']) for r in evals] == [(str(OFFLINE), '0'), (str(total), str(ONLINE))]
    eval_seeds = {int(r['seed']) for r in read_csv(os.path.join(run_dir, 'episodes.csv'))}
    assert eval_seeds == {1_000_000} and not eval_seeds & {int(r['seed']) for r in online}


@pytest.mark.slow
def test_sigterm_and_resume_in_online_phase_matches_uninterrupted_run(lift_state_file, tmp_path):
    """SIGTERM inside the online phase, then --resume: the same replay file, logs and weights (exactly, on
    CPU) as a run that was never stopped. save_interval=0: latest.pt is the one at the end of the offline
    steps, so the resumed run replays the updates of the episodes the killed run collected, then collects
    the interrupted episode again."""
    args = ['--agent=agents/fql.py', f'--dataset_path={lift_state_file}', '--offline_steps=10',
            '--online_steps=120', '--eval_max_steps=12', '--eval_episodes=0', '--save_interval=0',
            '--log_interval=5', '--seed=3', *TINY]
    save_dir = tmp_path / 'stopped'
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}', *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stopped, err = sigterm_once(proc, save_dir, 'online.csv', 'an online episode')  # first one committed
    assert not os.path.exists(os.path.join(stopped, 'summary.json'))
    stopped_episodes = len(read_csv(os.path.join(stopped, 'online.csv')))
    assert 1 <= stopped_episodes < 10, 'the run finished before it could be stopped; make it longer'

    run_cli([f'--resume={stopped}', '--wandb_mode=disabled'], save_dir)
    run_cli(args, tmp_path / 'full')
    (full,) = run_dirs(tmp_path / 'full')

    a = load_checkpoint(os.path.join(full, 'checkpoints', 'latest.pt'))
    b = load_checkpoint(os.path.join(stopped, 'checkpoints', 'latest.pt'))
    assert b['extra']['trainer']['online'] == a['extra']['trainer']['online']
    assert b['extra']['trainer']['online']['env_steps'] == 120 and b['extra']['trainer']['step'] == 130
    tensors_equal(a['trainer'], b['trainer'])  # weights, optimizer, LR schedule
    tensors_equal(a['extra_state'], b['extra_state'], 'target critic')
    tensors_equal(a['rng'], b['rng'], 'rng')
    assert_same_train_log(full, stopped)
    assert read_csv(os.path.join(full, 'online.csv')) == read_csv(os.path.join(stopped, 'online.csv'))
    with h5py.File(os.path.join(full, 'replay.hdf5'), 'r') as fa, \
            h5py.File(os.path.join(stopped, 'replay.hdf5'), 'r') as fb:
        da, db = fa['data'], fb['data']
        assert da.attrs['committed_episodes'] == db.attrs['committed_episodes'] == 10
        assert da.attrs['total'] == db.attrs['total'] == 120
        assert sorted(da) == sorted(db)
        for name in da:
            assert dict(da[name].attrs) == dict(db[name].attrs), name
            for key in ('actions', 'rewards', 'dones', 'states', *(f'obs/{k}' for k in da[name]['obs'])):
                np.testing.assert_array_equal(da[name][key][()], db[name][key][()], err_msg=f'{name}/{key}')
