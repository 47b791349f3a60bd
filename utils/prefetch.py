"""A background thread that prepares the next training batches while the current step runs.

    batches = BatchPrefetcher(sample_fn, dataset, depth=1, pin_memory=True)
    with batches:
        batch = batches.next()          # dict of CPU tensors (pinned when asked), as sample_fn drew it
        state = batches.rng_state()     # the dataset RNG state after the batches consumed so far

The thread runs `sample_fn()` (a `Dataset.sample_sequence` call), turns the numpy arrays into CPU tensors
(images stay uint8) and pins them, so that the host -> device copy of `to_torch(..., non_blocking=True)` is
asynchronous. Exact resume: the thread draws ahead, so the dataset's own RNG state is up to `depth + 1`
batches ahead of training. Each batch carries the dataset RNG state read right after it was drawn;
`rng_state()` is the state after the last batch handed out, the state a loop without prefetching would
have, and is what a checkpoint must store. `stop()` ends the thread, drops the batches drawn but not
handed out and rewinds the dataset RNG to `rng_state()`, so the next `next()` continues the same stream
(stop before changing the dataset, e.g. adding an episode). `depth=0` samples in the calling thread.
"""

import queue
import threading

import numpy as np
import torch

__all__ = ['BatchPrefetcher', 'to_cpu_tensors']


def to_cpu_tensors(x, pin_memory=False):
    """numpy arrays (nested in dicts) -> CPU tensors with `to_torch`'s dtype rules (uint8 stays uint8, other
    floats become float32), pinned when `pin_memory` (page-locked: asynchronous copies to CUDA)."""
    if isinstance(x, dict):
        return {k: to_cpu_tensors(v, pin_memory) for k, v in x.items()}
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.pin_memory() if pin_memory else t


class BatchPrefetcher:
    """Draws batches with `sample_fn()` from `dataset` (whose `rng_state` / `set_rng_state` it reads and
    rewinds) `depth` batches ahead in a daemon thread; see the module docstring."""

    def __init__(self, sample_fn, dataset, depth=1, pin_memory=False):
        if int(depth) < 0:
            raise ValueError(f'prefetch depth={depth}: expected an integer >= 0 (0 = no thread)')
        self.sample_fn, self.dataset = sample_fn, dataset
        self.depth, self.pin_memory = int(depth), bool(pin_memory)
        self._thread = None
        self._queue = None
        self._stop = threading.Event()
        self._consumed_state = None  # dataset RNG state after the last batch handed out (None: not started)

    def _draw(self):
        """One batch as CPU tensors and the dataset RNG state right after drawing it."""
        batch = self.sample_fn()
        return to_cpu_tensors(batch, self.pin_memory), self.dataset.rng_state()

    def _work(self):
        while not self._stop.is_set():
            try:
                item = self._draw()
            except BaseException as e:  # handed to the consumer, raised there
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def start(self):
        """Start the thread (next() does it on first use); the dataset RNG must be restored before."""
        if self.depth == 0 or self._thread is not None:
            return
        self._consumed_state = self.dataset.rng_state()
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._work, name='batch-prefetch', daemon=True)
        self._thread.start()

    def next(self):
        """The next batch of the stream (dict of CPU tensors)."""
        if self.depth == 0:
            batch, self._consumed_state = self._draw()
            return batch
        self.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.stop()
            raise item
        batch, self._consumed_state = item
        return batch

    def rng_state(self):
        """The dataset RNG state after the batches handed out so far (what a checkpoint stores)."""
        if self._consumed_state is None:
            return self.dataset.rng_state()
        return self._consumed_state

    def stop(self):
        """End the thread, drop the batches drawn ahead and rewind the dataset RNG to `rng_state()`."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread, self._queue = None, None
        self.dataset.set_rng_state(self._consumed_state)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
