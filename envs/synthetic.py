"""Small synthetic robomimic-format hdf5 files, written without a simulator (tests and the data benchmark).

    write_robomimic_file(path, lengths=(5, 3, 7), ...) -> path

Values encode (demo id, step) so tests can check exact windows: with `code = encode(demo_id, t)`,
    obs/<low_dim key>[t, d] = code + d / 8          actions[t, d] = code + d / 8
    obs/<camera>_image[t, y, x] = (t % 256, demo_id % 256, camera index)   (uint8, H x W x 3)
`demo_id` is the integer suffix of the demo name (`demo_ids=` makes them non-contiguous).
rewards are 1 on the last `success_steps` steps of each demo, dones 1 there too (robomimic done_mode 2).
`lift_env_args(...)` gives a real robosuite Lift `env_args` dict with a robosuite 1.5 composite or 1.4 flat
OSC_POSE controller config, so env tests can build an env from a synthetic file.
"""

import json
from pathlib import Path

import h5py
import numpy as np

LOW_DIM_KEYS = {'robot0_eef_pos': 3, 'robot0_eef_quat': 4, 'robot0_gripper_qpos': 2, 'object': 10}
CAMERAS = ('agentview', 'robot0_eye_in_hand')

_OSC_POSE = {
    'type': 'OSC_POSE', 'input_max': 1, 'input_min': -1,
    'output_max': [0.05, 0.05, 0.05, 0.5, 0.5, 0.5], 'output_min': [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    'kp': 150, 'damping_ratio': 1, 'impedance_mode': 'fixed', 'kp_limits': [0, 300],
    'damping_ratio_limits': [0, 10], 'position_limits': None, 'orientation_limits': None,
    'uncouple_pos_ori': True, 'control_delta': True, 'interpolation': None, 'ramp_ratio': 0.2,
}


def encode(demo_id: int, step: int) -> float:
    """The value that marks (demo id, step) in low-dim observations and actions."""
    return demo_id * 1000.0 + step


def lift_env_args(controller_style: str = '1.5', camera_names=CAMERAS, image_size: int = 84) -> dict:
    """robomimic `env_args` for robosuite Lift; controller config flat (robosuite 1.4) or composite (1.5)."""
    if controller_style == '1.4':
        controller = dict(_OSC_POSE)
        version = '1.4.1'
    elif controller_style == '1.5':
        arm = {k: v for k, v in _OSC_POSE.items() if k != 'control_delta'}
        arm.update({'input_type': 'delta', 'input_ref_frame': 'base', 'gripper': {'type': 'GRIP'}})
        controller = {'type': 'BASIC', 'body_parts': {'right': arm}}
        version = '1.5.1'
    else:
        raise ValueError(f"controller_style={controller_style!r}; valid: '1.4', '1.5'")
    cameras = list(camera_names)
    return {
        'env_name': 'Lift', 'env_version': version, 'type': 1,
        'env_kwargs': {
            'has_renderer': False, 'has_offscreen_renderer': bool(cameras), 'ignore_done': True,
            'use_object_obs': True, 'use_camera_obs': bool(cameras), 'control_freq': 20,
            'controller_configs': controller, 'robots': ['Panda'], 'camera_depths': False,
            'camera_heights': image_size, 'camera_widths': image_size, 'camera_names': cameras,
            'reward_shaping': False, 'render_gpu_device_id': 0,
        },
    }


def write_robomimic_file(path, lengths=(5, 3, 7), demo_ids=None, cameras=CAMERAS, image_size: int = 84,
                         low_dim_keys=None, action_dim: int = 7, action_key: str = 'actions',
                         success_steps: int = 1, compression=None, next_obs: bool = True, masks=None,
                         extra_keys: bool = False, env_args=None, render_quality=None, state_dim: int = 10):
    """Write a robomimic hdf5 whose values encode (demo id, step); returns the path.

    masks: None (no mask group) or a dict like {'train': [demo ids], 'valid': [demo ids]}.
    """
    path = Path(path)
    low_dim_keys = dict(LOW_DIM_KEYS if low_dim_keys is None else low_dim_keys)
    demo_ids = list(range(len(lengths))) if demo_ids is None else list(demo_ids)
    if len(demo_ids) != len(lengths):
        raise ValueError('demo_ids and lengths must have the same length')
    env_args = lift_env_args(camera_names=cameras, image_size=image_size) if env_args is None else env_args
    kw = {'compression': compression} if compression else {}
    with h5py.File(path, 'w') as f:
        data = f.create_group('data')
        data.attrs['total'] = int(sum(lengths))
        data.attrs['env_args'] = json.dumps(env_args)
        if render_quality is not None:
            data.attrs['acfql_render'] = json.dumps({'quality': render_quality})
        # Write demos in a scrambled order: readers must sort by the integer suffix, not by creation order.
        for demo_id, n in sorted(zip(demo_ids, lengths, strict=True), key=lambda p: (p[0] * 7919) % 13):
            demo = data.create_group(f'demo_{demo_id}')
            demo.attrs['num_samples'] = int(n)
            steps = np.arange(n, dtype=np.float64)
            codes = encode(demo_id, 0) + steps                                  # (n,)
            obs = {key: (codes[:, None] + np.arange(dim) / 8.0).astype(np.float64)  # (n, dim)
                   for key, dim in low_dim_keys.items()}
            for cam_index, cam in enumerate(cameras):
                img = np.empty((n, image_size, image_size, 3), dtype=np.uint8)  # (n, H, W, 3)
                img[..., 0] = (np.arange(n) % 256)[:, None, None]
                img[..., 1] = demo_id % 256
                img[..., 2] = cam_index
                obs[f'{cam}_image'] = img
            if extra_keys:
                obs['robot0_joint_pos'] = np.tile(codes[:, None], (1, 7))
            group = demo.create_group('obs')
            for key, value in obs.items():
                group.create_dataset(key, data=value, **kw)
            if next_obs:
                nxt = demo.create_group('next_obs')
                for key, value in obs.items():
                    nxt.create_dataset(key, data=np.concatenate([value[1:], value[-1:]]), **kw)
            demo.create_dataset(action_key, data=codes[:, None] + np.arange(action_dim) / 8.0, **kw)
            rewards = np.zeros(n)
            rewards[max(0, n - success_steps):] = 1.0
            demo.create_dataset('rewards', data=rewards, **kw)
            demo.create_dataset('dones', data=(rewards > 0).astype(np.int64), **kw)
            demo.create_dataset('states', data=np.tile(codes[:, None], (1, state_dim)), **kw)
            if extra_keys:
                demo.create_dataset('actions_abs', data=np.zeros((n, action_dim)), **kw)
                demo.create_dataset('extra_stuff', data=np.arange(n), **kw)
                demo.attrs['model_file'] = '<mujoco model="synthetic"/>'
        if masks is not None:
            group = f.create_group('mask')
            for name, ids in masks.items():
                group.create_dataset(name, data=np.array([f'demo_{i}'.encode() for i in ids], dtype='S'))
        if extra_keys:
            f.create_group('extra_top_level_group').attrs['note'] = 'ignored by readers'
            data.attrs['extra_attr'] = 'ignored'
    return path
