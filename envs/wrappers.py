"""Rollout wrapper: observation history (To) and action queue (Ta) around a single env."""

import collections

import numpy as np


class ChunkedRollout:
    """Keeps the last `obs_steps` observations and executes `chunk[0:action_steps]` open-loop.

    `env` follows the RobosuiteEnv contract: `reset(seed) -> obs`, `step(action) -> (obs, reward, done, info)`
    with `info['success']`. The episode ends on `done`, on success, or after `max_steps` env steps.
    """

    def __init__(self, env, obs_steps, action_steps, max_steps=None):
        if obs_steps < 1 or action_steps < 1:
            raise ValueError(f'obs_steps and action_steps must be >= 1, got {obs_steps} and {action_steps}')
        self.env = env
        self.obs_steps = obs_steps
        self.action_steps = action_steps
        self.max_steps = max_steps
        self._history = collections.deque(maxlen=obs_steps)
        self.queue = collections.deque()
        self.num_steps = 0
        self.success = False
        self.done = False

    def observation(self):
        """Stacked history: dict of (To, *shape) arrays, oldest first."""
        return {k: np.stack([o[k] for o in self._history]) for k in self._history[-1]}

    def reset(self, seed=None):
        """Reset the env; the history is padded by repeating the first observation."""
        obs = self.env.reset(seed=seed)
        self._history.clear()
        for _ in range(self.obs_steps):
            self._history.append(obs)
        self.queue.clear()
        self.num_steps = 0
        self.success = False
        self.done = False
        return self.observation()

    def step(self, action):
        """Execute one action; returns (history, reward, done, info)."""
        obs, reward, done, info = self.env.step(np.asarray(action, dtype=np.float64))
        self._history.append(obs)
        self.num_steps += 1
        self.success = self.success or bool(info.get('success', False))
        truncated = self.max_steps is not None and self.num_steps >= self.max_steps
        self.done = bool(done) or self.success or truncated
        return self.observation(), reward, self.done, info

    def step_chunk(self, chunk, on_step=None, max_actions=None):
        """Queue `chunk[0:Ta]` (chunk (Tp, A)) and execute it until the queue empties or the episode ends.

        `on_step(obs, reward, info)` is called after every env step (e.g. to record video frames).
        `max_actions` executes at most that many of the Ta actions (an online step budget).
        Returns (history, summed reward, done).
        """
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] < self.action_steps:
            raise ValueError(f'expected an action chunk (Tp >= {self.action_steps}, A), got {chunk.shape}')
        if max_actions is not None and max_actions < 1:
            raise ValueError(f'max_actions must be >= 1, got {max_actions}')
        count = self.action_steps if max_actions is None else min(self.action_steps, max_actions)
        self.queue.extend(chunk[:count])
        total = 0.0
        while self.queue and not self.done:
            obs, reward, _, info = self.step(self.queue.popleft())
            total += float(reward)
            if on_step is not None:
                on_step(obs, reward, info)
        self.queue.clear()
        return self.observation(), total, self.done
