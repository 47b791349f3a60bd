"""Shared pytest fixtures: small scripted Lift files generated once per test session."""

import os

import pytest

# One torch thread in the tests and in the train_bc.py subprocesses they start: evaluation workers and
# the trainer share 2 cores in CI, and with 2 threads each small op waits on the busy core (10-100x slower).
os.environ.setdefault('OMP_NUM_THREADS', '1')

# torchvision loads triton's libtriton (torchvision.ops -> torch._dynamo -> triton), which bundles LLVM.
# Loaded after Mesa's llvmpipe has rendered through EGL in the same process, it segfaults (seen running
# tests/test_robosuite_env.py then tests/test_layout.py); loaded first, both work. So load it first.
import torchvision  # noqa: E402, F401  (after OMP_NUM_THREADS: torch reads it on import)

# Demos in the shared files: enough for a train/valid split, cheap enough for CI (about 10 s for images).
NUM_DEMOS = 3


@pytest.fixture(scope='session')
def lift_image_file(tmp_path_factory):
    """A scripted Lift image file (3 demos, cheap render, 84x84 agentview + eye-in-hand); do not modify it."""
    from envs.generate_demos import generate_demos
    path = tmp_path_factory.mktemp('scripted') / 'lift_image.hdf5'
    return generate_demos('lift', NUM_DEMOS, 'image', path, seed=0, workers=1, render_quality='cheap',
                          progress=False)


@pytest.fixture(scope='session')
def lift_state_file(tmp_path_factory):
    """A scripted Lift low-dim file (3 demos, no images); do not modify it."""
    from envs.generate_demos import generate_demos
    path = tmp_path_factory.mktemp('scripted') / 'lift_low_dim.hdf5'
    return generate_demos('lift', NUM_DEMOS, 'low_dim', path, seed=0, workers=1, progress=False)


# Mixed-quality Lift: 4 demos per operator group, enough to compare the groups (about 40 s).
MIXED_DEMOS = 12


@pytest.fixture(scope='session')
def lift_mixed_file(tmp_path_factory):
    """A mixed-quality Lift low-dim file (4 better, 4 okay, 4 worse demos); do not modify it."""
    from envs.generate_demos import generate_demos
    path = tmp_path_factory.mktemp('mixed') / 'lift_mixed_low_dim.hdf5'
    return generate_demos('lift', MIXED_DEMOS, 'low_dim', path, seed=0, workers=1, mixed=True, progress=False)
