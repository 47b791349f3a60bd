"""Robomimic data, robosuite environments and rollout machinery."""

import logging
import os

# Off-screen rendering without a display: EGL (Mesa) works on a fresh machine with no apt step.
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])

# robosuite logs a dozen start-up warnings per process (no private macro file, robosuite_models, mink IK,
# controller parts the Panda lacks) and an INFO line per env. Keep its errors only; the filter lives on the
# logger object, which robosuite configures (level, handler) only after this runs.
logging.getLogger('robosuite_logs').addFilter(lambda record: record.levelno >= logging.ERROR)
