"""Robomimic data, robosuite environments and rollout machinery."""

import os

# Off-screen rendering without a display: EGL (Mesa) works on a fresh machine with no apt step.
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])
