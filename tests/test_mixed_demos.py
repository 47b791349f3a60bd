"""Mixed-quality (robomimic MH-like) demos: operators around the experts, groups, masks, determinism."""

import json

import h5py
import numpy as np
import pytest

from envs import generate_demos as gd
from envs.experts import EXPERTS, OPERATORS, Operator, Skill
from envs.generate_demos import Recipe, demo_slot, env_spec, generate_demos, operator_groups
from envs.robosuite_env import RobosuiteEnv
from tests.helpers import hdf5_contents

GROUPS = ('better', 'okay', 'worse')


def _names(f, mask):
    return [x.decode() for x in f[f'mask/{mask}'][()]]




def test_operator_groups_are_contiguous_weighted_blocks():
    assert operator_groups(300) == ('better',) * 100 + ('okay',) * 100 + ('worse',) * 100
    assert operator_groups(10) == ('better',) * 4 + ('okay',) * 3 + ('worse',) * 3  # largest remainder
    assert operator_groups(4, {'better': 1, 'worse': 3}) == ('better',) + ('worse',) * 3
    for bad in ({'best': 1}, {'better': -1, 'okay': 2}, {'better': 0}, {}):
        with pytest.raises(ValueError, match='mix'):
            operator_groups(6, bad)
    with pytest.raises(ValueError, match='mixed'):
        generate_demos('lift', 3, 'low_dim', '/nonexistent/x.hdf5', mix={'better': 1})


def test_the_expert_operator_is_the_expert():
    """Skill() changes nothing: the same actions as the bare expert, step for step."""
    env = RobosuiteEnv(**env_spec('lift', 'low_dim'))
    runs = []
    for wrap in (False, True):
        env.reset(seed=5)
        env.reset_to(env.get_state())
        agent = EXPERTS['lift'](env)
        if wrap:
            agent = Operator(agent, Skill(), np.random.default_rng(0))
        actions = []
        for _ in range(40):
            actions.append(agent.act())
            env.step(actions[-1])
        runs.append(np.stack(actions))
    env.close()
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.slow
def test_mixed_file_layout_and_masks(lift_mixed_file):
    """robomimic layout; mask/better|okay|worse partition the demos in thirds, the pairs are their unions,
    train/valid hold out demos of every group; each demo records its operator, success and length."""
    with h5py.File(lift_mixed_file, 'r') as f:
        names = sorted(f['data'], key=lambda n: int(n.split('_')[1]))
        assert names == [f'demo_{i}' for i in range(12)]
        groups = {g: _names(f, g) for g in GROUPS}
        assert groups == {g: [f'demo_{i}' for i in range(4 * k, 4 * k + 4)] for k, g in enumerate(GROUPS)}
        assert set(_names(f, 'okay_better')) == set(groups['okay'] + groups['better'])
        assert set(_names(f, 'worse_better')) == set(groups['worse'] + groups['better'])
        assert set(_names(f, 'worse_okay')) == set(groups['worse'] + groups['okay'])
        train, valid = set(_names(f, 'train')), set(_names(f, 'valid'))
        assert train | valid == set(names) and not train & valid
        assert all(valid & set(groups[g]) for g in GROUPS) and all(train & set(groups[g]) for g in GROUPS)
        info = json.loads(f['data'].attrs['acfql_generator'])
        assert info['mixed'] and info['mix'] == {'better': 4, 'okay': 4, 'worse': 4}
        assert info['operators']['worse'] == json.loads(json.dumps(OPERATORS['worse']._asdict()))
        total = 0
        for g, members in groups.items():
            for name in members:
                demo = f[f'data/{name}']
                n = demo['actions'].shape[0]
                total += n
                assert demo.attrs['operator'] == g and demo.attrs['num_samples'] == n
                assert bool(demo.attrs['success']) and isinstance(json.loads(demo.attrs['events']), list)
                assert demo['rewards'][-1] == 1 and demo['dones'][-1] == 1 and demo['dones'][:-1].sum() == 0
                assert np.abs(demo['actions'][()]).max() <= 1.0 and demo['states'].shape[0] == n
        assert f['data'].attrs['total'] == total


@pytest.mark.slow
def test_groups_really_differ(lift_mixed_file):
    """Worse demos are longer and rougher than okay ones, okay ones than the expert's (better); the worse
    operator's events (a wrong approach, a drop) show in its demos."""
    length, roughness, events = {}, {}, {}
    with h5py.File(lift_mixed_file, 'r') as f:
        for g in GROUPS:
            demos = [f[f'data/{n}'] for n in _names(f, g)]
            length[g] = np.mean([d['actions'].shape[0] for d in demos])
            # mean |second difference| of the translation actions: 0 for a straight constant-speed move
            roughness[g] = np.mean([np.abs(np.diff(d['actions'][:, :3], 2, axis=0)).mean() for d in demos])
            events[g] = sum((json.loads(d.attrs['events']) for d in demos), [])
    assert length['worse'] > length['okay'] > length['better'], length
    assert roughness['worse'] > roughness['okay'] > 1.5 * roughness['better'], roughness
    assert events['better'] == []
    assert {'miss', 'drop'} & set(events['worse']), events


@pytest.mark.slow
def test_generation_is_deterministic_under_a_seed(tmp_path):
    """Same seed: identical files (every array and attribute); another seed: other demos."""
    paths = [generate_demos('lift', 3, 'low_dim', tmp_path / f'{k}.hdf5', seed=seed, mixed=True,
                            progress=False) for k, seed in enumerate((4, 4, 5))]
    a, b, c = (hdf5_contents(p) for p in paths)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    assert not np.array_equal(a['data/demo_2/actions'], c['data/demo_2/actions'])


def test_refuses_to_overwrite_a_mixed_file(tmp_path):
    out = tmp_path / 'mixed.hdf5'
    out.write_bytes(b'keep me')
    with pytest.raises(FileExistsError, match='mixed.hdf5'):
        generate_demos('lift', 3, 'low_dim', out, mixed=True, progress=False)
    assert out.read_bytes() == b'keep me' and sorted(p.name for p in tmp_path.iterdir()) == ['mixed.hdf5']


def test_keep_failures_keeps_true_rewards(tmp_path, monkeypatch):
    """With a step limit no operator can meet, retries give up with a clear error; --keep_failures keeps
    the failed demos instead, marked unsuccessful, with their true (zero) rewards and no done."""
    monkeypatch.setitem(gd.TASK_SPECS['lift'], 'max_steps', 15)
    with pytest.raises(RuntimeError, match="'better' operator failed 2 attempts for demo 0"):
        generate_demos('lift', 3, 'low_dim', tmp_path / 'retry.hdf5', mixed=True, max_attempts=2,
                       progress=False)
    assert not list(tmp_path.iterdir())  # no partial file, no temporary
    path = generate_demos('lift', 3, 'low_dim', tmp_path / 'kept.hdf5', mixed=True, keep_failures=True,
                          progress=False)
    with h5py.File(path, 'r') as f:
        assert json.loads(f['data'].attrs['acfql_generator'])['keep_failures'] is True
        for name in ('demo_0', 'demo_1', 'demo_2'):
            demo = f[f'data/{name}']
            assert demo.attrs['num_samples'] == 15 and not demo.attrs['success']
            assert demo['rewards'][()].sum() == 0 and demo['dones'][()].sum() == 0


def test_a_demo_slot_is_a_function_of_its_seeds():
    """Demo slot i comes from seeds (seed, i, attempt) only: the same recipe and slot give the same demo."""
    env = RobosuiteEnv(**env_spec('lift', 'low_dim'))
    recipe = Recipe('lift', seed=0, groups=GROUPS)
    ep_a, info_a = demo_slot(env, recipe, 2)
    ep_b, info_b = demo_slot(env, recipe, 2)
    env.close()
    assert info_a == info_b and info_a['operator'] == 'worse'
    np.testing.assert_array_equal(ep_a['actions'], ep_b['actions'])


@pytest.mark.slow
def test_a_mixed_name_generates_its_file_on_first_use(tmp_path, monkeypatch, capsys):
    """ensure_dataset('lift-mixed-low_dim') writes <data_dir>/lift/mixed/low_dim.hdf5 once, then reuses it."""
    from envs.env_utils import ensure_dataset

    monkeypatch.setenv('ROBOMIMIC_DATA_DIR', str(tmp_path))
    path = ensure_dataset('lift-mixed-low_dim', num_demos=3, workers=1)
    assert path == tmp_path / 'lift' / 'mixed' / 'low_dim.hdf5'
    assert 'generating 3 mixed demos' in capsys.readouterr().err
    with h5py.File(path, 'r') as f:
        assert [_names(f, g) for g in GROUPS] == [['demo_0'], ['demo_1'], ['demo_2']]
    stamp = path.stat().st_mtime_ns
    assert ensure_dataset('lift-mixed-low_dim') == path and path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == ['low_dim.hdf5']


@pytest.mark.parametrize('flags, kind, obs', [
    ([], 'scripted', 'low_dim'), (['--obs', 'image'], 'scripted', 'image'), (['--mixed'], 'mixed', 'low_dim'),
    (['--careless'], 'careless', 'low_dim'), (['--careless', '--obs', 'image'], 'careless', 'image')])
def test_the_command_line_writes_as_many_demos_as_first_use(tmp_path, monkeypatch, flags, kind, obs):
    """The generator's command line without --num_demos asks for the count ensure_dataset generates."""
    from envs import env_utils

    asked = {}
    monkeypatch.setattr(gd, 'generate_demos', lambda task, n, *a, **k: asked.setdefault('cli', n))
    gd.main(['--task', 'can', '--out', str(tmp_path / 'x.hdf5'), *flags])
    monkeypatch.setenv('ROBOMIMIC_DATA_DIR', str(tmp_path))
    monkeypatch.setattr(gd, 'generate_demos', lambda task, n, *a, **k: asked.setdefault('use', n))
    monkeypatch.setattr(env_utils, 'get_dataset_path', lambda parsed, path: path)
    env_utils.ensure_dataset(f'can-{kind}-{obs}', workers=1)
    assert asked['cli'] == asked['use'] == gd.DEFAULT_NUM_DEMOS[kind][obs]
    assert gd.DEFAULT_NUM_DEMOS['careless']['low_dim'] == 300  # the README's careless file: 100 better + 200


@pytest.mark.slow
def test_files_of_older_operators_are_flagged(lift_mixed_file, lift_state_file, tmp_path):
    import shutil

    from envs.experts import OPERATOR_VERSION
    from envs.generate_demos import stale_operator_version

    assert stale_operator_version(lift_mixed_file) is None and stale_operator_version(lift_state_file) is None
    old = tmp_path / 'old.hdf5'
    shutil.copy(lift_mixed_file, old)
    with h5py.File(old, 'r+') as f:
        info = json.loads(f['data'].attrs['acfql_generator'])
        info['operator_version'] = OPERATOR_VERSION - 1
        f['data'].attrs['acfql_generator'] = json.dumps(info)
    assert stale_operator_version(old) == OPERATOR_VERSION - 1


def test_the_careless_operator_puts_the_can_in_another_bin_and_the_demo_fails():
    """'careless' is as fast as the expert and carries the can to the nearest other bin region: the demo is
    kept only with keep_failures, fails with zero rewards and no done, and ends once its plan has run out
    (FINISH_STEPS in the last phase), not at the 400-step limit. Its draws leave the other groups' demos
    unchanged."""
    from envs.experts import FINISH_STEPS
    env = RobosuiteEnv(**env_spec('can', 'low_dim'))
    recipe = Recipe('can', seed=0, max_attempts=1, groups=('better', 'careless'), keep_failures=True)
    ep, info = demo_slot(env, recipe, 1)
    raw = env.raw
    can = raw.sim.data.body_xpos[raw.obj_body_id['Can']]
    places = np.asarray(raw.target_bin_placements)
    own = [o.name for o in raw.objects].index('Can')
    nearest = int(np.argmin(np.linalg.norm(places[:, :2] - can[:2], axis=1)))
    assert info['operator'] == 'careless' and info['events'] == ['misplace'] and not info['success']
    assert nearest != own and can[2] < places[nearest][2] + 0.1  # resting in another region of the bin
    assert ep['rewards'].sum() == 0 and ep['dones'].sum() == 0
    assert FINISH_STEPS < len(ep['actions']) < 300
    ep_default, _ = demo_slot(env, Recipe('can', seed=0, groups=('better', 'okay')), 0)
    ep_mixed, _ = demo_slot(env, recipe, 0)
    env.close()
    np.testing.assert_array_equal(ep_default['actions'], ep_mixed['actions'])


def test_a_careless_mix_needs_keep_failures_and_a_task_that_places(tmp_path):
    with pytest.raises(ValueError, match="'careless'.*keep_failures"):
        generate_demos('can', 3, 'low_dim', tmp_path / 'a.hdf5', mixed=True, mix={'better': 1, 'careless': 2})
    with pytest.raises(ValueError, match="'careless'.*lift places nothing"):
        generate_demos('lift', 3, 'low_dim', tmp_path / 'b.hdf5', mixed=True, mix={'careless': 1},
                       keep_failures=True)
    assert not list(tmp_path.iterdir())
