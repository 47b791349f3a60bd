"""A robosuite environment built from a robomimic file's `env_args`, with observations laid out like the file.

The env is described by small picklable arguments (`envs.env_utils.EnvFactory` rebuilds it in a worker):

    env_meta = {'env_args': dict,               # the file's data.attrs['env_args'], parsed
                'render_quality': 'default' | 'cheap',
                'source_file': str}             # only for error messages
    shape_meta = {'obs': {key: {'shape': [...], 'type': 'rgb' | 'low_dim'}}, 'action': {'shape': [A]}}

Observations match `shape_meta` key by key: rgb keys are uint8 (C, H, W), upright as robomimic stores them;
low-dim keys are float32. robomimic's `object` key is robosuite's `object-state`.
"""

import copy
import gc

import mujoco
import numpy as np

from utils.shape_meta import camera_name, rgb_keys

RENDER_QUALITIES = ('default', 'cheap')

# robomimic key -> robosuite observable name, where they differ.
_ROBOSUITE_OBS_NAME = {'object': 'object-state'}

# Keys of env_kwargs that the env sets itself (rendering / termination are ours to decide).
_OWNED_KWARGS = ('has_renderer', 'has_offscreen_renderer', 'use_camera_obs', 'ignore_done', 'hard_reset',
                 'camera_names', 'camera_heights', 'camera_widths', 'camera_depths', 'render_gpu_device_id')


def _as_list(value, n, what, source):
    """Broadcast a scalar camera setting to n cameras, or check a list has length n."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ValueError(f'{source}: env_args env_kwargs.{what} has {len(value)} entries, expected {n}')
        return list(value)
    return [value] * n


def is_flat_controller_config(cfg):
    """True for a robosuite <= 1.4 flat controller config ({'type': 'OSC_POSE', ...}), not a composite one."""
    return isinstance(cfg, dict) and 'body_parts' not in cfg and cfg.get('type') not in (
        'BASIC', 'WHOLE_BODY_IK', 'WHOLE_BODY_MINK_IK', 'HYBRID_MOBILE_BASE')


def convert_controller_configs(controller_configs, robots, source='env_args'):
    """Return a robosuite 1.5 composite controller config, converting a 1.4 flat one if needed."""
    from robosuite.controllers.composite.composite_controller_factory import (
        refactor_composite_controller_config,
    )
    if controller_configs is None:
        raise ValueError(f'{source}: env_args env_kwargs has no controller_configs')
    if not is_flat_controller_config(controller_configs):
        return copy.deepcopy(controller_configs)
    robot = robots[0] if isinstance(robots, list | tuple) else robots
    return refactor_composite_controller_config(copy.deepcopy(controller_configs), robot, ['right'])


def build_env_kwargs(env_args, shape_meta, enable_render=False, hard_reset=False, source='env_args'):
    """Turn a file's env_args into (env_name, robosuite.make kwargs) producing shape_meta's observations."""
    if 'env_name' not in env_args or 'env_kwargs' not in env_args:
        raise ValueError(f'{source}: env_args must hold "env_name" and "env_kwargs", '
                         f'got keys {sorted(env_args)}')
    file_kwargs = dict(env_args['env_kwargs'])
    kwargs = {k: v for k, v in file_kwargs.items() if k not in _OWNED_KWARGS}
    flat = is_flat_controller_config(file_kwargs.get('controller_configs'))
    kwargs['controller_configs'] = convert_controller_configs(
        file_kwargs.get('controller_configs'), file_kwargs.get('robots', 'Panda'), source)
    # robosuite draws model randomization (e.g. Lift's cube size) from env.rng when the model is built:
    # a fixed seed makes every process build the same model as the one the data was generated with.
    kwargs.setdefault('seed', 0)
    if flat and 'lite_physics' not in kwargs:
        kwargs['lite_physics'] = False  # robosuite <= 1.4 stepped with a full forward pass (no lite physics)

    rgb = rgb_keys(shape_meta)
    file_cams = file_kwargs.get('camera_names', [])
    file_cams = [file_cams] if isinstance(file_cams, str) else list(file_cams)
    heights = _as_list(file_kwargs.get('camera_heights', 84), len(file_cams), 'camera_heights', source)
    widths = _as_list(file_kwargs.get('camera_widths', 84), len(file_cams), 'camera_widths', source)
    cams, cam_h, cam_w = [], [], []
    for key in rgb:
        try:
            cam = camera_name(key)
        except ValueError as e:
            raise ValueError(f'{source}: {e}') from None
        if cam not in file_cams:
            raise ValueError(f'{source}: observation {key!r} needs camera {cam!r}, but env_args camera_names '
                             f'is {file_cams}')
        i = file_cams.index(cam)
        expected = [3, int(heights[i]), int(widths[i])]
        if list(shape_meta['obs'][key]['shape']) != expected:
            raise ValueError(f'{source}: observation {key!r} has shape {shape_meta["obs"][key]["shape"]} but '
                             f'env_args renders camera {cam!r} at (3, H, W) = {expected}')
        cams.append(cam)
        cam_h.append(int(heights[i]))
        cam_w.append(int(widths[i]))

    kwargs.update(
        has_renderer=False,
        has_offscreen_renderer=bool(cams) or enable_render,
        use_camera_obs=bool(cams),
        ignore_done=True,  # episode ends are ours: success or max_episode_steps
        hard_reset=hard_reset,
        camera_depths=False,
    )
    if cams:
        kwargs.update(camera_names=cams, camera_heights=cam_h, camera_widths=cam_w)
    return env_args['env_name'], kwargs


def apply_render_quality(sim, quality):
    """Switch a sim's off-screen renderer to the cheap setting (no anti-aliasing, shadows, reflections).

    Returns the render context it applied to (None when there is none or quality is 'default').
    """
    if quality not in RENDER_QUALITIES:
        raise ValueError(f'render quality must be one of {RENDER_QUALITIES}, got {quality!r}')
    ctx = sim._render_context_offscreen
    if quality == 'default' or ctx is None:
        return None
    if sim.model.vis.quality.offsamples != 0:
        sim.model.vis.quality.offsamples = 0
        # The multisample buffer is allocated with the context: rebuild it so the new sample count applies.
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return ctx


class RobosuiteEnv:
    """robosuite env whose observations match a robomimic file's shape_meta; done on success or max steps."""

    def __init__(self, env_meta, shape_meta, max_episode_steps, enable_render=False, hard_reset=False):
        import robosuite

        self.env_meta = dict(env_meta)
        self.shape_meta = copy.deepcopy(shape_meta)
        self.max_episode_steps = int(max_episode_steps)
        self.enable_render = bool(enable_render)
        self.hard_reset = bool(hard_reset)
        self.source = self.env_meta.get('source_file', '<env_meta>')
        self.render_quality = self.env_meta.get('render_quality', 'default')
        if self.render_quality not in RENDER_QUALITIES:
            raise ValueError(f'{self.source}: render quality must be one of {RENDER_QUALITIES}, '
                             f'got {self.render_quality!r}')
        if self.max_episode_steps <= 0:
            raise ValueError(f'max_episode_steps must be positive, got {max_episode_steps}')
        self.env_name, kwargs = build_env_kwargs(
            self.env_meta['env_args'], self.shape_meta, self.enable_render, self.hard_reset, self.source)
        try:
            self.raw = robosuite.make(self.env_name, **kwargs)
        except Exception as e:  # robosuite raises many kinds; name the file that asked for this env
            raise RuntimeError(f'{self.source}: robosuite.make({self.env_name!r}, ...) failed: {e}') from e
        for robot in self.raw.robots:
            # Keep only the body parts this robot has (robosuite warns on every controller reload otherwise).
            parts = robot.composite_controller_config.get('body_parts', {})
            for part in [p for p in parts if not robot.has_part(p)]:
                parts.pop(part)
        # robosuite samples observables at the FIRST physics substep of a control step, so its step()
        # observations lag the state by almost one step. Images are rendered here instead, after the
        # step, at the state get_state() returns (what reset_to(states[t]) renders, as robomimic files).
        self._cameras = {key: (camera_name(key), *self.shape_meta['obs'][key]['shape'][1:])
                         for key in rgb_keys(self.shape_meta)}
        for key in self._cameras:
            self.raw.modify_observable(key, 'enabled', False)
        self.action_dim = int(self.raw.action_dim)
        expected_a = self.shape_meta.get('action', {}).get('shape')
        if expected_a is not None and list(expected_a) != [self.action_dim]:
            raise ValueError(f'{self.source}: action shape {expected_a} but env {self.env_name} takes '
                             f'{self.action_dim}-D actions')
        self._render_ctx = None
        self._steps = 0
        self._success = False

    def _sync_render(self):
        """Make this env's GL context current and give it the render setting (a hard reset makes a new one).

        robosuite makes a context current only when creating it, so with two envs in one process the other
        env's context would otherwise be used for this env's frames.
        """
        ctx = self.raw.sim._render_context_offscreen
        if ctx is None:
            return
        ctx.gl_ctx.make_current()
        if ctx is not self._render_ctx:
            apply_render_quality(self.raw.sim, self.render_quality)
            self._render_ctx = ctx

    def _obs(self, raw_obs):
        """robosuite observation dict -> shape_meta layout (uint8 CHW upright images, float32 low-dim)."""
        out = {}
        for key, meta in self.shape_meta['obs'].items():
            if key in self._cameras:
                cam, h, w = self._cameras[key]
                img = self.raw.sim.render(width=w, height=h, camera_name=cam)  # raw frame is upside down
                out[key] = np.ascontiguousarray(img[::-1].transpose(2, 0, 1))  # (H, W, 3) -> (3, H, W)
                continue
            name = _ROBOSUITE_OBS_NAME.get(key, key)
            if name not in raw_obs:
                raise KeyError(f'{self.source}: observation key {key!r} is not produced by {self.env_name}; '
                               f'available: {sorted(raw_obs)}')
            value = np.asarray(raw_obs[name])
            value = value.astype(np.float32)
            if list(value.shape) != list(meta['shape']):
                raise ValueError(f'{self.source}: observation {key!r} has shape {list(value.shape)} from '
                                 f'{self.env_name}, shape_meta says {meta["shape"]}')
            out[key] = value
        return out

    def _current_obs(self):
        """Recompute every observable at the current sim state."""
        return self._obs(self.raw._get_observations(force_update=True))

    def reset(self, seed=None):
        """Start an episode; with a seed the initial state is reproducible. Returns the observation dict."""
        if seed is not None:
            # The env's rng is shared by reference with its placement samplers and robots: reseed it in place.
            self.raw.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self._sync_render()
        self.raw.reset()
        self._sync_render()
        self._steps = 0
        self._success = False
        return self._current_obs()

    def reset_to(self, state):
        """Set the flattened MuJoCo state (a file's states[k]) and return the observation there."""
        state = np.asarray(state, dtype=np.float64)
        expected = 1 + self.raw.sim.model.nq + self.raw.sim.model.nv
        if state.shape != (expected,):
            raise ValueError(f'{self.source}: state has shape {state.shape}, env {self.env_name} expects '
                             f'({expected},) = 1 + nq + nv')
        self.raw.sim.set_state_from_flattened(state)
        self.raw.sim.forward()
        self._reset_controllers()
        if hasattr(self.raw, 'update_state'):
            self.raw.update_state()
        self._sync_render()
        self._steps = 0
        self._success = False
        return self._current_obs()

    def _reset_controllers(self):
        """Rebuild the robots' controllers at the current state, as a reset does.

        The OSC nullspace target and the gripper command are not part of the MuJoCo state; without this a
        replay from states[0] would follow a different path than the recording.
        """
        for robot in self.raw.robots:
            robot._load_controller()
            for arm in robot.arms:
                if robot.has_gripper[arm]:
                    robot.gripper[arm].current_action = np.zeros(robot.gripper[arm].dof)
            robot.composite_controller.update_state()
            robot.composite_controller.reset()

    def get_state(self):
        """Flattened MuJoCo state (time, qpos, qvel) as float64, the layout of a file's `states`."""
        return np.asarray(self.raw.sim.get_state().flatten(), dtype=np.float64)

    def is_success(self):
        """Task success at the current state."""
        return bool(self.raw._check_success())

    def step(self, action):
        """Apply one action; returns (obs, reward, done, info) with info['success']."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f'action has shape {action.shape}, env {self.env_name} expects '
                             f'({self.action_dim},)')
        self._sync_render()
        _, _, _, info = self.raw.step(action)
        self.raw.sim.forward()  # derived quantities at the final state (mj_step leaves them one substep old)
        reward = self.raw.reward(action)  # recomputed at the final state, consistent with info['success']
        self._steps += 1
        success = self.is_success()
        self._success = self._success or success
        info = dict(info)
        info['success'] = success
        done = success or self._steps >= self.max_episode_steps
        return self._current_obs(), float(reward), bool(done), info

    def render(self, camera='agentview', height=256, width=256):
        """Render a camera for videos: uint8 (H, W, 3), upright."""
        if self.raw.sim._render_context_offscreen is None:
            raise RuntimeError(f'{self.env_name}: no off-screen renderer; build the env with '
                               'enable_render=True')
        self._sync_render()
        img = self.raw.sim.render(width=width, height=height, camera_name=camera)
        return np.ascontiguousarray(img[::-1])

    def close(self):
        """Release the simulator and its render context."""
        if getattr(self, 'raw', None) is not None:
            self.raw.close()
            self.raw = None
            self._render_ctx = None
            gc.collect()  # free the GL context now, not while another env is rendering
