"""Policy evaluation: N episodes on fixed seeds, optionally in parallel worker processes.

The policy is a plain callable `policy(obs dict of (B, To, ...) numpy) -> (B, Tp, A) numpy`, so this module
never imports agents or torch. With several workers the policy is called once per round on the batch of
all running episodes.
"""

import multiprocessing as mp
import signal
import time
import traceback

import numpy as np

from envs.wrappers import ChunkedRollout
from utils.stats import wilson_interval


def video_frame(env, obs):
    """One HWC uint8 frame: `env.render()` if the env renders off-screen, else the first CHW image obs."""
    if getattr(env, 'enable_render', False):
        return np.asarray(env.render())
    for key in sorted(obs):
        value = np.asarray(obs[key])
        if value.dtype == np.uint8 and value.ndim == 3:
            return value.transpose(1, 2, 0)  # CHW -> HWC
    raise ValueError('cannot record video: the env does not render off-screen (enable_render=False) and '
                     'has no image observation')


class _Runner:
    """Runs the episodes of one worker: one env, one rollout wrapper."""

    def __init__(self, env_fn, obs_steps, action_steps, max_steps):
        self.env = env_fn()
        self.rollout = ChunkedRollout(self.env, obs_steps, action_steps, max_steps)
        self.frames = None
        self.episode_return = 0.0

    def reset(self, seed, record):
        obs = self.rollout.reset(seed=seed)
        self.episode_return = 0.0
        self.frames = [video_frame(self.env, self.rollout._history[-1])] if record else None
        return obs

    def chunk(self, chunk):
        def on_step(obs, reward, info):
            if self.frames is not None:
                self.frames.append(video_frame(self.env, {k: v[-1] for k, v in obs.items()}))

        obs, reward, done = self.rollout.step_chunk(chunk, on_step=on_step)
        self.episode_return += reward
        result = None
        if done:
            result = {
                'success': float(self.rollout.success),
                'length': self.rollout.num_steps,
                'return': self.episode_return,
                'frames': None if self.frames is None else np.stack(self.frames),
            }
        return obs, result

    def close(self):
        if hasattr(self.env, 'close'):
            self.env.close()


def _worker_main(conn, env_fn, obs_steps, action_steps, max_steps):
    """Worker process loop: builds its env once, then answers reset / chunk / close commands.

    Ctrl-C reaches the whole process group; the worker ignores it and lets the parent decide."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = _Runner(env_fn, obs_steps, action_steps, max_steps)
        conn.send(('ok', None))
    except Exception:  # report any failure to the parent instead of hanging it
        conn.send(('error', traceback.format_exc()))
        return
    while True:
        cmd, arg = conn.recv()
        try:
            if cmd == 'reset':
                conn.send(('ok', runner.reset(*arg)))
            elif cmd == 'chunk':
                conn.send(('ok', runner.chunk(arg)))
            elif cmd == 'close':
                runner.close()
                conn.send(('ok', None))
                return
        except Exception:
            conn.send(('error', traceback.format_exc()))


class _LocalWorker:
    """In-process worker with the same send / recv interface as a worker process."""

    def __init__(self, env_fn, obs_steps, action_steps, max_steps):
        self.runner = _Runner(env_fn, obs_steps, action_steps, max_steps)
        self._reply = None

    def send(self, cmd, arg=None):
        if cmd == 'reset':
            self._reply = self.runner.reset(*arg)
        elif cmd == 'chunk':
            self._reply = self.runner.chunk(arg)

    def recv(self):
        return self._reply

    def close(self):
        self.runner.close()


class _ProcessWorker:
    """A worker process forked from a clean forkserver (no GL context or torch threads inherited), so each
    worker creates its own off-screen GL context; the main script is imported once, by the server."""

    def __init__(self, ctx, env_fn, obs_steps, action_steps, max_steps):
        self.conn, child = ctx.Pipe()
        args = (child, env_fn, obs_steps, action_steps, max_steps)
        self.process = ctx.Process(target=_worker_main, args=args, daemon=True)
        self.process.start()
        child.close()

    def wait_ready(self):
        """Block until the worker has built its env (workers start in parallel, then are awaited)."""
        self._expect_ok()

    def _expect_ok(self):
        try:
            status, value = self.conn.recv()
        except EOFError as e:
            code = self.process.exitcode
            raise RuntimeError(f'evaluation worker {self.process.pid} died (exit code {code})') from e
        if status == 'error':
            raise RuntimeError(f'evaluation worker {self.process.pid} failed:\n{value}')
        return value

    def send(self, cmd, arg=None):
        self.conn.send((cmd, arg))

    def recv(self):
        return self._expect_ok()

    def close(self):
        try:
            self.conn.send(('close', None))
            self.conn.recv()
        except (BrokenPipeError, EOFError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


def evaluate(policy, env_fn, num_episodes, obs_steps, action_steps, max_steps=None, seed=0, num_workers=1,
             video_episodes=0):
    """Roll out `policy` for `num_episodes` episodes; episode k resets with seed `seed + k`.

    `env_fn()` builds one env (it must pickle when `num_workers > 1`). Returns `(stats, videos)`:
    stats as in `evaluate_episodes`; videos is a list of (T, H, W, 3) uint8 arrays for the first
    `video_episodes` episodes.
    """
    stats, episodes = evaluate_episodes(policy, env_fn, num_episodes, obs_steps, action_steps, max_steps,
                                        seed, num_workers, video_episodes)
    return stats, [e['frames'] for e in episodes if e['frames'] is not None]


def evaluate_episodes(policy, env_fn, num_episodes, obs_steps, action_steps, max_steps=None, seed=0,
                      num_workers=1, video_episodes=0, video_failures=0):
    """Like `evaluate`, with one record per episode; returns `(stats, episodes)`.

    stats: `success_rate`, `successes`, `success_ci_low` / `success_ci_high` (95% Wilson score interval),
    `episode_length` (mean), `episode_return` (mean), `num_episodes`, `env_steps_per_s` (rollouts only,
    worker start-up excluded). episodes, in episode order: dicts with `episode`, `seed`, `success`,
    `length`, `return` and `frames` ((T, H, W, 3) uint8 for the first `video_episodes` episodes and for the
    first `video_failures` failed episodes to finish, else None). Failures can only be known at the end, so
    `video_failures > 0` records every episode and keeps the frames of failures only.
    """
    if num_episodes < 1:
        raise ValueError(f'num_episodes must be >= 1, got {num_episodes}')
    if video_episodes < 0 or video_failures < 0:
        raise ValueError(f'video_episodes={video_episodes} and video_failures={video_failures} must be >= 0')
    num_workers = max(1, min(num_workers, num_episodes))
    if num_workers == 1:
        workers = [_LocalWorker(env_fn, obs_steps, action_steps, max_steps)]
    else:
        ctx = mp.get_context('forkserver')
        workers = []
    try:
        if num_workers > 1:
            for _ in range(num_workers):
                workers.append(_ProcessWorker(ctx, env_fn, obs_steps, action_steps, max_steps))
            for w in workers:
                w.wait_ready()
        start = time.perf_counter()  # rollout speed excludes worker start-up
        results = _run_episodes(policy, workers, num_episodes, seed, video_episodes, video_failures)
        elapsed = time.perf_counter() - start
    finally:
        for w in workers:
            w.close()
    results.sort(key=lambda r: r['episode'])
    lengths = [r['length'] for r in results]
    successes = int(sum(r['success'] > 0 for r in results))
    low, high = wilson_interval(successes, num_episodes)
    stats = {
        'success_rate': successes / num_episodes,
        'successes': successes,
        'success_ci_low': low,
        'success_ci_high': high,
        'episode_length': float(np.mean(lengths)),
        'episode_return': float(np.mean([r['return'] for r in results])),
        'num_episodes': num_episodes,
        'env_steps_per_s': sum(lengths) / elapsed,
    }
    episodes = [{'episode': r['episode'], 'seed': seed + r['episode'], 'success': r['success'],
                 'length': r['length'], 'return': r['return'], 'frames': r['frames']} for r in results]
    return stats, episodes


def _run_episodes(policy, workers, num_episodes, seed, video_episodes, video_failures=0):
    """Lock-step scheduler: every round, one batched policy call for all running episodes."""
    next_episode = 0
    current = {}  # worker index -> episode index
    obs = {}
    failures_kept = 0

    def start(i):  # reset worker i into the next episode
        nonlocal next_episode
        record = next_episode < video_episodes or video_failures > 0
        workers[i].send('reset', (seed + next_episode, record))
        current[i] = next_episode
        next_episode += 1

    for i in range(len(workers)):
        if next_episode < num_episodes:
            start(i)
    for i in current:
        obs[i] = workers[i].recv()
    results = []
    while current:
        active = sorted(current)
        batch = {k: np.stack([obs[i][k] for i in active]) for k in obs[active[0]]}  # (B, To, ...)
        chunks = np.asarray(policy(batch))
        if chunks.ndim != 3 or chunks.shape[0] != len(active):
            raise ValueError(f'policy must return (B={len(active)}, Tp, A) actions, got shape {chunks.shape}')
        for j, i in enumerate(active):
            workers[i].send('chunk', chunks[j])
        finished = []
        for i in active:
            obs[i], result = workers[i].recv()
            if result is not None:
                episode = current[i]
                keep = episode < video_episodes
                if not keep and not result['success'] and failures_kept < video_failures:
                    keep, failures_kept = True, failures_kept + 1
                results.append({'episode': episode, **result, 'frames': result['frames'] if keep else None})
                finished.append(i)
        for i in finished:
            if next_episode < num_episodes:
                start(i)
                obs[i] = workers[i].recv()
            else:
                del current[i]
    return results
