"""Write scripted robosuite demonstrations as a robomimic hdf5 file.

    python -m envs.generate_demos --task lift --num_demos 100 --obs image [--render cheap] [--workers 2]

Demo slot i is produced from its own seed sequence (seed, i, attempt), so the file content does not depend
on the number of workers. Failed attempts are retried with the next attempt seed; only successes are kept.
The file is written to a temporary name next to the output and renamed at the end.
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import threading
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from envs.experts import EXPERT_VERSION, EXPERTS
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


def default_out_path(task, obs_type):
    """<$ROBOMIMIC_DATA_DIR or ~/.robomimic>/<task>/scripted/<low_dim|image>.hdf5."""
    from envs.robomimic_utils import scripted_dataset_path
    return Path(scripted_dataset_path(task, _obs_type(obs_type)))


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


def run_episode(env, task, seed, strategy):
    """Roll the expert once from a seeded reset; returns (success, episode dict of arrays)."""
    env.reset(seed=seed)
    # Record from a reset_to of the initial state, exactly as a replay of the file starts.
    obs = env.reset_to(env.get_state())
    expert = EXPERTS[task](env, strategy=strategy)
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
        ep['dones'].append(int(done))
    out = {'obs': {k: np.stack(v) for k, v in ep['obs'].items()},
           'states': np.stack(ep['states']).astype(np.float64),
           'actions': np.stack(ep['actions']).astype(np.float64),
           'rewards': np.asarray(ep['rewards'], dtype=np.float64),
           'dones': np.asarray(ep['dones'], dtype=np.int64)}
    return success, out


def demo_slot(env, task, seed, slot, multimodal, max_attempts):
    """Produce demo `slot`: retry seeded attempts until the expert succeeds. Returns (episode, info)."""
    for attempt in range(max_attempts):
        rng = np.random.default_rng([seed, slot, attempt])
        strategy = int(rng.integers(2)) if multimodal else 0  # drawn independently of the observation
        env_seed = int(rng.integers(2**31 - 1))
        success, ep = run_episode(env, task, env_seed, strategy)
        if success:
            return ep, {'strategy': strategy, 'env_seed': env_seed, 'attempts': attempt + 1}
    raise RuntimeError(f'{task}: the scripted expert failed {max_attempts} attempts for demo {slot} '
                       f'(seed {seed})')


_WORKER = {}


def _worker_init(spec, task, seed, multimodal, max_attempts):
    """Build one env per worker process."""
    from envs.robosuite_env import RobosuiteEnv
    _WORKER.update(env=RobosuiteEnv(**spec), task=task, seed=seed, multimodal=multimodal,
                   max_attempts=max_attempts)


def _worker_slot(slot):
    """Worker entry point: demo `slot`."""
    w = _WORKER
    return slot, demo_slot(w['env'], w['task'], w['seed'], slot, w['multimodal'], w['max_attempts'])


def _iter_demos(spec, task, num_demos, seed, workers, multimodal, max_attempts):
    """Yield (slot, (episode, info)) in slot order, from this process or from worker processes."""
    args = (spec, task, seed, multimodal, max_attempts)
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
    for k in ('states', 'actions', 'rewards', 'dones'):
        g.create_dataset(k, data=ep[k])
    for k, v in ep['obs'].items():
        g.create_dataset(f'obs/{k}', data=v)


def generate_demos(task, num_demos, obs_type, out_path=None, seed=0, workers=1, render_quality='cheap',
                   multimodal=False, overwrite=False, max_attempts=10, progress=True):
    """Generate `num_demos` successful scripted demos into a robomimic hdf5 at out_path; returns the path."""
    _check_task(task)
    obs_type = _obs_type(obs_type)
    if num_demos < 1:
        raise ValueError(f'num_demos must be >= 1, got {num_demos}')
    if render_quality not in ('cheap', 'default'):
        raise ValueError(f"render quality must be 'cheap' or 'default', got {render_quality!r}")
    out_path = Path(out_path) if out_path is not None else default_out_path(task, obs_type)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f'{out_path} exists; pass --overwrite (overwrite=True) to replace it')
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spec = env_spec(task, obs_type, render_quality, out_path)
    tmp_path = out_path.with_name(f'.{out_path.name}.tmp-{os.getpid()}')
    demo_names = [f'demo_{i}' for i in range(num_demos)]
    with _sigterm_raises(), _removed_on_exit(tmp_path):
        with h5py.File(tmp_path, 'w') as f:
            data = f.create_group('data')
            total, attempts = 0, 0
            demos = _iter_demos(spec, task, num_demos, seed, workers, multimodal, max_attempts)
            for slot, (ep, info) in tqdm(demos, total=num_demos, desc=f'{task} {obs_type} demos',
                                         disable=not progress):
                _write_demo(data, demo_names[slot], ep, info)
                total += len(ep['actions'])
                attempts += info['attempts']
            data.attrs['total'] = total
            data.attrs['env_args'] = json.dumps(spec['env_meta']['env_args'])
            data.attrs['acfql_render'] = json.dumps({'quality': render_quality})
            data.attrs['acfql_generator'] = json.dumps(
                {'task': task, 'seed': seed, 'multimodal': multimodal, 'expert_version': EXPERT_VERSION,
                 'expert_success_rate': num_demos / attempts})
            order = np.random.default_rng(seed).permutation(num_demos)
            n_valid = int(round(VALID_FRACTION * num_demos)) if num_demos > 1 else 0
            n_valid = max(n_valid, 1) if num_demos > 1 else 0
            valid = sorted(order[:n_valid])
            train = sorted(order[n_valid:])
            f.create_dataset('mask/train', data=np.array([demo_names[i] for i in train], dtype='S'))
            f.create_dataset('mask/valid', data=np.array([demo_names[i] for i in valid], dtype='S'))
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


def main(argv=None):
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--task', required=True, choices=sorted(TASK_SPECS))
    p.add_argument('--num_demos', type=int, default=100)
    p.add_argument('--obs', default='low_dim', choices=OBS_TYPE_NAMES)
    p.add_argument('--out', default=None,
                   help='output hdf5 (default <$ROBOMIMIC_DATA_DIR>/<task>/scripted/...)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--render', default='cheap', choices=['cheap', 'default'],
                   help='render quality; recorded in the file so evaluation renders the same way')
    p.add_argument('--multimodal', action='store_true', help='each demo draws one of two approach strategies')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    p.add_argument('--max_attempts', type=int, default=10, help='expert attempts per demo before giving up')
    a = p.parse_args(argv)
    try:
        path = generate_demos(a.task, a.num_demos, a.obs, a.out, seed=a.seed, workers=a.workers,
                              render_quality=a.render, multimodal=a.multimodal, overwrite=a.overwrite,
                              max_attempts=a.max_attempts)
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
