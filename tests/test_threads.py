"""The thread governor: torch's CPU threads follow the cores other processes leave free, or stay fixed."""

import subprocess
import sys

import pytest
import torch

from utils.threads import ThreadGovernor, read_cpu_jiffies, read_own_jiffies, threads_for


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize('cores, others, expected', [
    (2, 0.0, 2), (2, 0.15, 2), (2, 0.3, 1), (2, 1.0, 1), (2, 2.0, 1), (2, 5.0, 1),
    (8, 0.0, 8), (8, 3.0, 5), (8, 3.5, 4), (1, 0.0, 1),
])
def test_threads_for(cores, others, expected):
    assert threads_for(cores, others) == expected


class FakeMachine:
    """/proc readers of a machine with `cpus` CPUs where others keep `others` cores busy."""

    def __init__(self, cpus=2):
        self.t, self.busy, self.total, self.own = 0.0, 0, 0, 0
        self.cpus, self.others, self.mine = cpus, 0.0, 1.0

    def advance(self, seconds, hz=100):
        self.t += seconds
        self.total += int(self.cpus * seconds * hz)
        self.busy += int((self.others + self.mine) * seconds * hz)
        self.own += int(self.mine * seconds * hz)

    def governor(self, fixed=None, world=1):
        return ThreadGovernor(fixed, interval_s=2.0, local_world_size=world, clock=lambda: self.t,
                              read_cpu=lambda cpus: (self.busy, self.total), read_own=lambda: self.own)


def test_auto_follows_the_load(monkeypatch):
    monkeypatch.setattr('utils.threads.affinity_cpus', lambda: [0, 1])
    monkeypatch.setattr('utils.threads.time.sleep', lambda s: machine.advance(s))
    machine = FakeMachine()
    gov = machine.governor()
    assert gov.mode == 'auto' and gov.threads == 2 and torch.get_num_threads() == 2  # idle at start
    machine.others = 1.0  # another job starts
    machine.advance(1.0)
    assert gov.tick() == 2  # not re-fitted before interval_s
    machine.advance(1.5)
    assert gov.tick() == 1 and torch.get_num_threads() == 1
    assert gov.others == pytest.approx(1.0, abs=0.02)
    machine.others = 0.0  # it ends
    machine.advance(2.5)
    assert gov.tick() == 2 and torch.get_num_threads() == 2
    machine.others = 0.4  # a light job: not worth a thread yet (slack 0.5 down)...
    machine.advance(2.5)
    assert gov.tick() == 2
    machine.others = 0.0
    machine.advance(2.5)
    gov.tick()
    machine.others = 0.7  # ...a heavier one is
    machine.advance(2.5)
    assert gov.tick() == 1
    machine.others = 0.4  # and a thread comes back only below 0.2
    machine.advance(2.5)
    assert gov.tick() == 1 and gov.changes == 3


def test_auto_divides_the_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr('utils.threads.affinity_cpus', lambda: list(range(8)))
    monkeypatch.setattr('utils.threads.time.sleep', lambda s: machine.advance(s))
    machine = FakeMachine(cpus=8)
    assert machine.governor(world=2).threads == 4
    machine.others = 4.0  # the other rank, on its share
    assert machine.governor(world=2).threads == 4
    machine.others = 5.0  # and a foreign job on one more core
    assert machine.governor(world=2).threads == 3


def test_fixed_is_set_once(monkeypatch):
    machine = FakeMachine()
    gov = machine.governor(fixed=3)
    assert gov.mode == 'fixed' and torch.get_num_threads() == 3
    machine.others = 2.0
    machine.advance(10.0)
    assert gov.tick() == 3 and torch.get_num_threads() == 3
    with pytest.raises(ValueError, match='>= 1'):
        ThreadGovernor(0)


def test_without_proc_auto_is_one_thread():
    gov = ThreadGovernor(None, read_cpu=lambda cpus: None, read_own=lambda: None)
    assert gov.threads == 1 and gov.tick(force=True) == 1 and torch.get_num_threads() == 1


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc is Linux only')
def test_proc_readers_see_this_process_work():
    """The real readers: this process's own ticks rise while it computes, and never exceed the machine's."""
    busy0, total0 = read_cpu_jiffies([0])
    own0 = read_own_jiffies()
    x = 0
    for i in range(3_000_000):
        x += i
    busy1, total1 = read_cpu_jiffies([0])
    assert read_own_jiffies() > own0 and total1 > total0 and 0 <= busy1 - busy0 <= total1 - total0
    assert read_cpu_jiffies([0], stat_path='/nonexistent') is None


def test_train_bc_rejects_zero_threads(tmp_path):
    out = subprocess.run([sys.executable, 'train_bc.py', '--torch_threads=0', f'--save_dir={tmp_path}'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and '--torch_threads=0: expected an integer >= 1' in out.stderr
    assert not any(tmp_path.iterdir())
