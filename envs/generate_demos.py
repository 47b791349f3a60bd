"""Write scripted robosuite demonstrations as a robomimic hdf5 file.

    python -m envs.generate_demos --task lift --num_demos 100 --obs image [--render cheap] [--workers 2]

    python -m envs.generate_demos --task can --mixed --num_demos 300 [--keep_failures]

Demo slot i is produced from its own seed sequence (seed, i, attempt), so the file content does not depend
on the number of workers. Failed attempts are retried with the next attempt seed; only successes are kept
(`--keep_failures` keeps every slot's first attempt instead, with its true rewards and no done).
The file is written to a temporary name next to the output and renamed at the end; an existing file is
never replaced without --overwrite.

`--mixed` writes robomimic MH-like data: the slots are split into contiguous blocks of operators of mixed
skill (envs.experts.OPERATORS: 'better' is the expert, 'okay' a noisy expert that hesitates and re-grasps,
'worse' a slow, noisier operator that approaches wrongly and drops the object), in equal thirds unless
`--mix` says otherwise. A fourth group, 'careless', is in no default mix: as fast as the expert, it puts the
object in the wrong place (Can: another bin region; Square: the round peg), so its demos fail and need
`--keep_failures`:

    python -m envs.generate_demos --task can --careless --num_demos 300   # = --mixed --mix better=1,careless=2
                                                                          #   --keep_failures, out <task>/careless/
 Besides mask/train and mask/valid (10% of each group held out) the file has
mask/<group> and, as robomimic names them, mask/okay_better, mask/worse_better, mask/worse_okay; every demo
records attrs num_samples (its length), success, operator and events (what the operator did).
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from tqdm import tqdm

from envs.experts import EXPERT_VERSION, EXPERTS, OPERATOR_VERSION, OPERATORS, Operator
from utils.shape_meta import OBS_TYPE_NAMES, canonical_obs_type

TASK_SPECS = {
    'lift': {'env_name': 'Lift', 'object_dim': 10, 'max_steps': 200},
    'can': {'env_name': 'PickPlaceCan', 'object_dim': 14, 'max_steps': 400},
    'square': {'env_name': 'NutAssemblySquare', 'object_dim': 14, 'max_steps': 400},
}
CAMERAS = ('agentview', 'robot0_eye_in_hand')
IMAGE_SIZE = 84
LOW_DIM_KEYS = {'robot0_eef_pos': 3, 'robot0_eef_quat': 4, 'robot0_gripper_qpos': 2}
FILE_OBS_TYPES = {'state': 'low_dim', 'image': 'image'}  # robomimic's file name per observation type
VALID_FRACTION = 0.1
DEFAULT_MIX = {'better': 1, 'okay': 1, 'worse': 1}  # equal thirds, as robomimic MH (2 operators per group)
CARELESS_MIX = {'better': 1, 'careless': 2}  # the careless file: the expert's 100 demos of the mixed file + 200
# What each generated dataset type (env names {task}-{type}-{obs}, files <data_dir>/<task>/<type>/) is made of:
# the keyword arguments of generate_demos.
GENERATED_DATA = {
    'scripted': {},
    'mixed': {'mixed': True},
    'careless': {'mixed': True, 'mix': CARELESS_MIX, 'keep_failures': True},
}
# How many demos a generated file holds unless --num_demos says otherwise, the same from the command line
# and on first use of an env name: scripted 200 (low_dim) / 100 (image); mixed and careless 300 / 150, as
# robomimic MH's 300 per task.
DEFAULT_NUM_DEMOS = {'scripted': {'low_dim': 200, 'image': 100},
                     'mixed': {'low_dim': 300, 'image': 150},
                     'careless': {'low_dim': 300, 'image': 150}}


def _check_task(task):
    """Raise a ValueError naming the supported tasks."""
    if task not in TASK_SPECS:
        raise ValueError(f'scripted demos exist for tasks {sorted(TASK_SPECS)}, got {task!r}')


def _obs_type(obs_type):
    """'low_dim' | 'state' | 'image' -> 'low_dim' | 'image' (the alias rule: utils.shape_meta)."""
    try:
        return FILE_OBS_TYPES[canonical_obs_type(obs_type)]
    except ValueError as e:
        raise ValueError(f'--obs: {e}') from None


def default_out_path(task, obs_type, dataset_type='scripted'):
    """<$ROBOMIMIC_DATA_DIR or ~/.robomimic>/<task>/<scripted|mixed>/<low_dim|image>.hdf5."""
    from envs.robomimic_utils import scripted_dataset_path
    return Path(scripted_dataset_path(task, _obs_type(obs_type), dataset_type))


def generation_env_args(task, obs_type):
    """robomimic env_args (robosuite 1.5 composite controller) written into the generated file."""
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    _check_task(task)
    image = _obs_type(obs_type) == 'image'
    return {
        'env_name': TASK_SPECS[task]['env_name'],
        'env_version': robosuite.__version__,
        'type': 1,
        'env_kwargs': {
            'robots': ['Panda'],
            'controller_configs': load_composite_controller_config(controller='BASIC', robot='Panda'),
            'control_freq': 20,
            'lite_physics': True,
            'has_renderer': False,
            'has_offscreen_renderer': image,
            'ignore_done': True,
            'use_object_obs': True,
            'use_camera_obs': image,
            'camera_names': list(CAMERAS),
            'camera_heights': IMAGE_SIZE,
            'camera_widths': IMAGE_SIZE,
            'camera_depths': False,
            'reward_shaping': False,
            'seed': 0,  # model randomization seed (cube size); episodes are seeded at reset
        },
    }


def generation_shape_meta(task, obs_type):
    """shape_meta of the generated file (sorted keys)."""
    _check_task(task)
    obs = {k: {'shape': [d], 'type': 'low_dim'} for k, d in LOW_DIM_KEYS.items()}
    obs['object'] = {'shape': [TASK_SPECS[task]['object_dim']], 'type': 'low_dim'}
    if _obs_type(obs_type) == 'image':
        for cam in CAMERAS:
            obs[f'{cam}_image'] = {'shape': [3, IMAGE_SIZE, IMAGE_SIZE], 'type': 'rgb'}
    return {'obs': {k: obs[k] for k in sorted(obs)}, 'action': {'shape': [7]}}


def env_spec(task, obs_type, render_quality='cheap', source_file='<generate_demos>'):
    """Picklable RobosuiteEnv spec for generating `task` demos."""
    return {'env_meta': {'env_args': generation_env_args(task, obs_type), 'render_quality': render_quality,
                         'source_file': str(source_file)},
            'shape_meta': generation_shape_meta(task, obs_type),
            'max_episode_steps': TASK_SPECS[task]['max_steps']}


def run_episode(env, task, seed, strategy, skill=None, rng=None):
    """Roll the expert once from a seeded reset; returns (success, episode dict of arrays).

    With a `skill` (envs.experts.Skill) an Operator of that skill drives the expert, drawing from `rng`;
    the episode dict then lists what it did in 'events'. The episode ends at a success, at the step limit, or
    once the plan has run out without a success (`finished`: the operator stops recording). dones are 1 at a
    success only (the other two ends are truncations, 0)."""
    env.reset(seed=seed)
    # Record from a reset_to of the initial state, exactly as a replay of the file starts.
    obs = env.reset_to(env.get_state())
    expert = EXPERTS[task](env, strategy=strategy)
    if skill is not None:
        expert = Operator(expert, skill, rng)
    keys = list(env.shape_meta['obs'])
    ep = {'obs': {k: [] for k in keys}, 'states': [], 'actions': [], 'rewards': [], 'dones': []}
    done, success = False, False
    while not done:
        ep['states'].append(env.get_state())
        for k in keys:
            v = obs[k]
            ep['obs'][k].append(v.transpose(1, 2, 0) if v.ndim == 3 else v)  # file images are (H, W, 3)
        action = expert.act()
        obs, reward, done, info = env.step(action)
        success = info['success']
        ep['actions'].append(action)
        ep['rewards'].append(reward)
        ep['dones'].append(int(success))
        done = done or expert.finished()
    out = {'obs': {k: np.stack(v) for k, v in ep['obs'].items()},
           'states': np.stack(ep['states']).astype(np.float64),
           'actions': np.stack(ep['actions']).astype(np.float64),
           'rewards': np.asarray(ep['rewards'], dtype=np.float64),
           'dones': np.asarray(ep['dones'], dtype=np.int64),
           'events': list(getattr(expert, 'events', []))}
    return success, out


class Recipe(NamedTuple):
    """What every demo slot of a file is made from (picklable: worker processes get a copy)."""

    task: str
    seed: int
    multimodal: bool = False
    max_attempts: int = 10
    groups: tuple = ()  # operator group of each slot (mixed files), () for the expert
    keep_failures: bool = False  # keep an attempt that failed instead of retrying


def operator_groups(num_demos, mix=None):
    """Operator group of each demo slot: contiguous blocks sized by the weights of `mix` (default thirds)."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(OPERATORS))
    if unknown or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f'mix must give non-negative weights (not all 0) to groups among {list(OPERATORS)}, '
                         f'got {mix}')
    names = [g for g in OPERATORS if mix.get(g, 0) > 0]
    exact = np.array([mix[g] for g in names], dtype=float) * num_demos / sum(mix[g] for g in names)
    counts = np.floor(exact).astype(int)
    for i in np.argsort(counts - exact, kind='stable')[:num_demos - counts.sum()]:  # largest remainders
        counts[i] += 1
    return tuple(g for g, n in zip(names, counts, strict=True) for _ in range(n))


def demo_slot(env, recipe, slot):
    """Produce demo `slot`: retry seeded attempts until the episode succeeds (unless failures are kept).

    Returns (episode, info)."""
    group = recipe.groups[slot] if recipe.groups else None
    attempts = 1 if recipe.keep_failures else recipe.max_attempts
    for attempt in range(attempts):
        rng = np.random.default_rng([recipe.seed, slot, attempt])
        strategy = int(rng.integers(2)) if recipe.multimodal else 0  # drawn independently of the observation
        env_seed = int(rng.integers(2**31 - 1))
        skill = OPERATORS[group] if group is not None else None
        success, ep = run_episode(env, recipe.task, env_seed, strategy, skill, rng)
        if success or recipe.keep_failures:
            info = {'strategy': strategy, 'env_seed': env_seed, 'attempts': attempt + 1, 'success': success}
            if group is not None:
                info.update(operator=group, events=ep['events'])
            return ep, info
    who = f'the {group!r} operator' if group is not None else 'the scripted expert'
    raise RuntimeError(f'{recipe.task}: {who} failed {attempts} attempts for demo {slot} '
                       f'(seed {recipe.seed})')


_WORKER = {}


def _worker_init(spec, recipe):
    """Build one env per worker process."""
    from envs.robosuite_env import RobosuiteEnv
    _WORKER.update(env=RobosuiteEnv(**spec), recipe=recipe)


def _worker_slot(slot):
    """Worker entry point: demo `slot`."""
    return slot, demo_slot(_WORKER['env'], _WORKER['recipe'], slot)


def _iter_demos(spec, recipe, num_demos, workers):
    """Yield (slot, (episode, info)) in slot order, from this process or from worker processes."""
    args = (spec, recipe)
    if workers <= 1:
        _worker_init(*args)
        try:
            for slot in range(num_demos):
                yield _worker_slot(slot)
        finally:
            _WORKER.pop('env').close()
        return
    # spawn: every worker gets its own fresh GL context (forked EGL state is not safe).
    with mp.get_context('spawn').Pool(workers, initializer=_worker_init, initargs=args) as pool:
        yield from pool.imap(_worker_slot, range(num_demos))


def _write_demo(data, name, ep, info):
    """Write one episode in robomimic layout under data/<name>."""
    g = data.create_group(name)
    g.attrs['num_samples'] = len(ep['actions'])
    g.attrs['strategy'] = info['strategy']
    g.attrs['env_seed'] = info['env_seed']
    g.attrs['success'] = bool(info['success'])
    if 'operator' in info:
        g.attrs['operator'] = info['operator']
        g.attrs['events'] = json.dumps(info['events'])
    for k in ('states', 'actions', 'rewards', 'dones'):
        g.create_dataset(k, data=ep[k])
    for k, v in ep['obs'].items():
        g.create_dataset(f'obs/{k}', data=v)


def split_train_valid(num_demos, seed, groups=()):
    """(train, valid) demo indices: VALID_FRACTION held out of each operator group (of all demos if none)."""
    blocks = {}
    for i, g in enumerate(groups or (None,) * num_demos):
        blocks.setdefault(g, []).append(i)
    train, valid = [], []
    for k, idx in enumerate(blocks.values()):
        rng = np.random.default_rng([seed, k] if groups else seed)
        order = np.asarray(idx)[rng.permutation(len(idx))]
        n_valid = max(int(round(VALID_FRACTION * len(idx))), 1) if len(idx) > 1 else 0
        valid += order[:n_valid].tolist()
        train += order[n_valid:].tolist()
    return sorted(train), sorted(valid)


def group_masks(groups):
    """{mask name: slots} of a mixed file: each operator group and, as robomimic MH names them, each pair
    ('okay_better', 'worse_better', 'worse_okay')."""
    present = [g for g in OPERATORS if g in groups]
    masks = {g: [i for i, x in enumerate(groups) if x == g] for g in present}
    for i, low in enumerate(present):
        for high in present[:i]:
            masks[f'{low}_{high}'] = sorted(masks[low] + masks[high])
    return masks


def mask_names(mixed=False, mix=None):
    """Names of the masks a generated file holds (mixed: for the default number of demos of `mix`)."""
    names = ['train', 'valid']
    if mixed:
        names += list(group_masks(operator_groups(len(OPERATORS) * 100, mix)))
    return names


def generate_demos(task, num_demos, obs_type, out_path=None, seed=0, workers=1, render_quality='cheap',
                   multimodal=False, overwrite=False, max_attempts=None, progress=True, mixed=False, mix=None,
                   keep_failures=False):
    """Generate `num_demos` scripted demos into a robomimic hdf5 at out_path; returns the path.

    mixed: demos of operators of mixed skill (envs.experts.OPERATORS), in contiguous blocks weighted by
    `mix` (default equal thirds), with masks per group. Failed attempts are retried with the next attempt seed
    unless `keep_failures`, which keeps each slot's first attempt whatever its outcome; `max_attempts` per
    slot defaults to 10, or 30 for mixed files (a 'worse' Square operator succeeds in about half its tries).
    """
    _check_task(task)
    obs_type = _obs_type(obs_type)
    if num_demos < 1:
        raise ValueError(f'num_demos must be >= 1, got {num_demos}')
    if render_quality not in ('cheap', 'default'):
        raise ValueError(f"render quality must be 'cheap' or 'default', got {render_quality!r}")
    if mix is not None and not mixed:
        raise ValueError('mix is for mixed files only (pass mixed=True / --mixed)')
    groups = operator_groups(num_demos, mix) if mixed else ()
    for g in sorted(set(groups), key=list(OPERATORS).index):
        if OPERATORS[g].misplace > 0 and task == 'lift':
            raise ValueError(f"mix: the {g!r} operator misplaces the object, and lift places nothing")
        if OPERATORS[g].misplace >= 1 and not keep_failures:
            raise ValueError(f"mix: every demo of the {g!r} operator fails (it misplaces the object); "
                             'pass --keep_failures (keep_failures=True) to keep them')
    if max_attempts is None:
        max_attempts = 30 if mixed else 10
    if max_attempts < 1:
        raise ValueError(f'max_attempts must be >= 1, got {max_attempts}')
    out_path = (Path(out_path) if out_path is not None
                else default_out_path(task, obs_type, 'mixed' if mixed else 'scripted'))
    if out_path.exists() and not overwrite:
        raise FileExistsError(f'{out_path} exists; pass --overwrite (overwrite=True) to replace it')
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spec = env_spec(task, obs_type, render_quality, out_path)
    recipe = Recipe(task, seed, multimodal, max_attempts, groups, keep_failures)
    tmp_path = out_path.with_name(f'.{out_path.name}.tmp-{os.getpid()}')
    demo_names = [f'demo_{i}' for i in range(num_demos)]
    with _sigterm_raises(), _removed_on_exit(tmp_path):
        with h5py.File(tmp_path, 'w') as f:
            data = f.create_group('data')
            total, attempts, successes = 0, 0, 0
            demos = _iter_demos(spec, recipe, num_demos, workers)
            desc = f'{task} {"mixed " if mixed else ""}{obs_type} demos'
            for slot, (ep, info) in tqdm(demos, total=num_demos, desc=desc, disable=not progress):
                _write_demo(data, demo_names[slot], ep, info)
                total += len(ep['actions'])
                attempts += info['attempts']
                successes += info['success']
            data.attrs['total'] = total
            data.attrs['env_args'] = json.dumps(spec['env_meta']['env_args'])
            data.attrs['acfql_render'] = json.dumps({'quality': render_quality})
            generator = {'task': task, 'seed': seed, 'multimodal': multimodal,
                         'expert_version': EXPERT_VERSION, 'expert_success_rate': successes / attempts}
            if mixed:
                generator.update(mixed=True, operator_version=OPERATOR_VERSION, keep_failures=keep_failures,
                                 mix={g: groups.count(g) for g in OPERATORS if g in groups},
                                 operators={g: OPERATORS[g]._asdict() for g in OPERATORS if g in groups})
            data.attrs['acfql_generator'] = json.dumps(generator)
            train, valid = split_train_valid(num_demos, seed, groups)
            masks = {'train': train, 'valid': valid, **group_masks(groups)}
            for name, slots in masks.items():
                f.create_dataset(f'mask/{name}', data=np.array([demo_names[i] for i in slots], dtype='S'))
        os.replace(tmp_path, out_path)
    return out_path


@contextlib.contextmanager
def _removed_on_exit(path):
    """Delete `path` if it still exists when the block ends (error, Ctrl-C or SIGTERM)."""
    try:
        yield
    finally:
        if path.exists():
            path.unlink()


@contextlib.contextmanager
def _sigterm_raises():
    """Inside the block SIGTERM raises SystemExit(143), so `finally` clauses run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _parse_mix(text):
    """'better=1,okay=2' -> {'better': 1.0, 'okay': 2.0} (argparse type)."""
    try:
        return {k.strip(): float(v) for k, v in (item.split('=') for item in text.split(','))}
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected group=weight pairs like better=1,okay=1,worse=1, '
                                         f'got {text!r}') from None


def main(argv=None):
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', required=True, choices=sorted(TASK_SPECS))
    p.add_argument('--num_demos', type=int, default=None,
                   help='demos in the file (default: as on first use of the env name, DEFAULT_NUM_DEMOS: '
                        'scripted 200 low_dim / 100 image, mixed and careless 300 / 150)')
    p.add_argument('--obs', default='low_dim', choices=OBS_TYPE_NAMES)
    p.add_argument('--out', default=None,
                   help='output hdf5 (default <$ROBOMIMIC_DATA_DIR>/<task>/<scripted|mixed>/...)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--render', default='cheap', choices=['cheap', 'default'],
                   help='render quality; recorded in the file so evaluation renders the same way')
    p.add_argument('--multimodal', action='store_true', help='each demo draws one of two approach strategies')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    p.add_argument('--max_attempts', type=int, default=None,
                   help='attempts per demo before giving up (default 10; 30 with --mixed)')
    p.add_argument('--mixed', action='store_true',
                   help='operators of mixed skill (robomimic MH-like; default out <task>/mixed/...)')
    p.add_argument('--mix', default=None, type=_parse_mix,
                   help='--mixed group weights, e.g. better=1,okay=1,worse=1 (the default: equal thirds)')
    p.add_argument('--keep_failures', action='store_true',
                   help='keep failed attempts (true rewards, no done) instead of retrying them')
    p.add_argument('--careless', action='store_true',
                   help='the careless file: --mixed --mix better=1,careless=2 --keep_failures '
                        '(default out <task>/careless/...)')
    a = p.parse_args(argv)
    if a.careless:
        a.mixed, a.keep_failures, a.mix = True, True, a.mix or CARELESS_MIX
        a.out = a.out or default_out_path(a.task, _obs_type(a.obs), 'careless')
    if a.num_demos is None:
        kind = 'careless' if a.careless else 'mixed' if a.mixed else 'scripted'
        a.num_demos = DEFAULT_NUM_DEMOS[kind][_obs_type(a.obs)]
    try:
        path = generate_demos(a.task, a.num_demos, a.obs, a.out, seed=a.seed, workers=a.workers,
                              render_quality=a.render, multimodal=a.multimodal, overwrite=a.overwrite,
                              max_attempts=a.max_attempts, mixed=a.mixed, mix=a.mix,
                              keep_failures=a.keep_failures)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()


def stale_expert_version(path):
    """The expert version a generated file records (0 before versions were recorded) if it is older than
    the current experts, else None; None also for files this generator did not write."""
    with h5py.File(path, 'r') as f:
        raw = f['data'].attrs.get('acfql_generator') if 'data' in f else None
    if raw is None:
        return None
    version = json.loads(raw).get('expert_version', 0)
    return version if version < EXPERT_VERSION else None


def stale_operator_version(path):
    """The operator version a mixed file records if it is older than the current operators, else None
    (None also for files that are not mixed)."""
    with h5py.File(path, 'r') as f:
        raw = f['data'].attrs.get('acfql_generator') if 'data' in f else None
    info = json.loads(raw) if raw is not None else {}
    if not info.get('mixed'):
        return None
    version = info.get('operator_version', 0)
    return version if version < OPERATOR_VERSION else None
