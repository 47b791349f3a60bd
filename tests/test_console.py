"""A process that builds and steps a robosuite env prints none of robosuite's start-up warnings."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = '''
import logging
import envs
from envs.generate_demos import env_spec
from envs.env_utils import EnvFactory
spec = env_spec('lift', 'low_dim')
env = EnvFactory(spec['env_meta'], spec['shape_meta'], 10)()
env.reset(0)
logging.getLogger('robosuite_logs').error('a real error stays visible')
print('stepped')
'''


def test_robosuite_start_up_is_quiet_but_errors_show():
    proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'stepped' in proc.stdout
    assert 'WARNING' not in proc.stderr and 'INFO' not in proc.stderr, proc.stderr[-3000:]
    assert 'a real error stays visible' in proc.stderr


@pytest.mark.parametrize('kind', [[], ['--mixed']], ids=['scripted', 'mixed'])
def test_sigterm_during_demo_generation_leaves_no_temporary_file(kind, tmp_path):
    out = tmp_path / 'lift.hdf5'
    cmd = [sys.executable, '-m', 'envs.generate_demos', '--task=lift', '--num_demos=200', '--obs=low_dim',
           f'--out={out}', *kind]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(tmp_path.glob('.lift.hdf5.tmp-*')):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, 'no temporary file within 240 s'
        time.sleep(0.02)
    time.sleep(1.0)  # inside the generation loop
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the temporary nor a partial output
