"""torch's CPU thread count: fixed, or fitted to the cores that other processes leave free.

With torch's default of one thread per core, every small op of a training step waits for the slowest
core; when another process keeps one core busy, a 2-thread step runs about 3x slower than a 1-thread one
(`python -m bench.threads`). One thread alone, though, leaves half of an idle 2-core machine unused. So by
default (`ThreadGovernor(None)`) the count follows the load: every `interval_s` of wall time the governor
reads how many of this process's cores other processes used since the last look (Linux `/proc/stat` minus
`/proc/self/stat`) and sets `torch.set_num_threads(max(1, floor(cores - others + slack)))`, with a slack
of 0.2 to add a thread and 0.5 to drop one, so that the tick-sampling noise of /proc does not flip it.
A fixed count (the `--torch_threads` flag or `$OMP_NUM_THREADS`) is set once and never changed.

`cores` is the CPUs this process may run on (its affinity mask). Under torchrun the other ranks on this
machine count as others, and no rank takes more than its share, cores // `LOCAL_WORLD_SIZE`: two ranks on 8
idle cores run 4 threads each, and 3 each once a foreign job keeps one core busy. Without `/proc` (macOS,
Windows) the automatic count is 1.
"""

import math
import os
import time

import torch

SLACK_UP = 0.2  # a thread is added only while others leave this much more than it free
SLACK_DOWN = 0.5  # and given up only once others take more than half a core of it (no flapping on noise)


def affinity_cpus() -> list[int]:
    """The CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def read_cpu_jiffies(cpus, stat_path='/proc/stat') -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over `cpus` since boot, from /proc/stat; None without it."""
    wanted = {f'cpu{c}' for c in cpus}
    busy = total = 0
    try:
        with open(stat_path) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in wanted:
                    ticks = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                    total += sum(ticks)
                    busy += sum(ticks) - ticks[3] - ticks[4]
    except OSError:
        return None
    return busy, total


def read_own_jiffies(stat_path='/proc/self/stat') -> int | None:
    """User + system clock ticks of this process (all its threads) since it started; None without /proc."""
    try:
        with open(stat_path) as f:
            fields = f.read().rsplit(')', 1)[1].split()  # the command name may hold spaces
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def threads_for(cores: int, others: float, slack: float = SLACK_UP) -> int:
    """Threads to run when other processes use `others` of our `cores` cores."""
    return max(1, min(cores, math.floor(cores - others + slack)))


class ThreadGovernor:
    """Sets torch's CPU threads once (`fixed`) or, with `fixed=None`, every `interval_s` from the load."""

    def __init__(self, fixed: int | None = None, interval_s: float = 2.0, local_world_size: int | None = None,
                 clock=time.monotonic, read_cpu=read_cpu_jiffies, read_own=read_own_jiffies):
        if fixed is not None and fixed < 1:
            raise ValueError(f'torch threads must be >= 1, got {fixed}')
        self.fixed, self.interval_s, self.clock = fixed, interval_s, clock
        self.read_cpu, self.read_own = read_cpu, read_own
        self.cpus = affinity_cpus()
        world = local_world_size or int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)
        self.cores = len(self.cpus)
        self.share = max(1, self.cores // max(1, world))  # this rank's part of the machine under torchrun
        self.others = None  # cores other processes used in the last window (auto mode)
        self.threads = fixed or 1
        self.changes = 0  # thread count changes after the first reading
        self._last = None
        torch.set_num_threads(self.threads)
        if fixed is None:
            self._last = self._sample()
            if self._last is not None:  # a first reading over a short window, before any step runs
                time.sleep(0.2)
                self.tick(force=True)
                self.changes = 0

    @property
    def mode(self) -> str:
        """'fixed' or 'auto'."""
        return 'fixed' if self.fixed is not None else 'auto'

    def _sample(self):
        cpu, own = self.read_cpu(self.cpus), self.read_own()
        if cpu is None or own is None:
            return None
        return self.clock(), cpu[0], cpu[1], own

    def tick(self, force: bool = False) -> int:
        """Re-fit the thread count if `interval_s` has passed (auto mode); returns the current count."""
        if self.fixed is not None or self._last is None:
            return self.threads
        if not force and self.clock() - self._last[0] < self.interval_s:
            return self.threads
        now = self._sample()
        d_busy, d_total, d_own = now[1] - self._last[1], now[2] - self._last[2], now[3] - self._last[3]
        self._last = now
        if d_total <= 0:
            return self.threads
        window = d_total / len(self.cpus)  # ticks of wall time per cpu in this window
        self.others = max(0.0, (d_busy - d_own) / window)
        down = min(self.share, threads_for(self.cores, self.others, SLACK_DOWN))
        up = min(self.share, threads_for(self.cores, self.others, SLACK_UP))
        threads = down if down < self.threads else max(up, self.threads)
        self.changes += threads != self.threads
        if threads != self.threads:
            self.threads = threads
            torch.set_num_threads(threads)
        return self.threads
