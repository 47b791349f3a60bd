"""A process that builds and steps a robosuite env prints none of robosuite's start-up warnings."""

import subprocess
import sys
from pathlib import Path

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
