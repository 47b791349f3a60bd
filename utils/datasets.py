"""Sequence datasets: windows over episodes held as flat arrays (batch contract: docs/ARCHITECTURE.md).

Public API (`envs.robomimic_utils.load_datasets` builds these from a robomimic hdf5):
    Storage(obs, actions, rewards, dones)   per-step columns shared by the datasets of one file
    Dataset(storage, starts, lengths, shape_meta, env_meta, seed)
    Dataset.sample_sequence(batch_size, sequence_length, obs_steps=1, discount=0.99, idxs=None) -> dict
    Dataset.add_episode(observations, actions, rewards, dones)   (online replay; RAM storage only)
    Dataset.normalizer_stats(), .action_chunks(horizon), .returns_to_go(discount)
    .shape_meta, .env_meta, len(), .num_episodes, .rng

Storage: every key is one flat (rows, ...) array over all episodes; precomputed per-step tables
(row, first row and last row of its episode) turn a batch into a few vectorised gathers.
"""

import numpy as np

from utils.shape_meta import low_dim_keys, rgb_keys

DEFAULT_DISCOUNT = 0.99  # reward discount per env step; the agent config's `discount` defaults to it


class _GrowableArray:
    """A (rows, ...) numpy array with spare capacity, so episodes can be appended in amortised O(rows)."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.size = len(data)

    def __getitem__(self, idx) -> np.ndarray:
        return self.data[idx]

    def append(self, values: np.ndarray):
        """Append rows (n, ...) at the end, doubling capacity when full."""
        n = len(values)
        if self.size + n > len(self.data):
            grown = np.empty((max(2 * len(self.data), self.size + n),) + self.data.shape[1:], self.data.dtype)
            grown[:self.size] = self.data[:self.size]
            self.data = grown
        self.data[self.size:self.size + n] = values
        self.size += n


class Storage:
    """Per-step columns shared by the datasets of one file (train and valid index into the same rows)."""

    def __init__(self, obs: dict, actions, rewards, dones):
        # RAM arrays become growable; on-disk (DiskArray) columns are read-only.
        self.obs = {k: _GrowableArray(v) if isinstance(v, np.ndarray) else v for k, v in obs.items()}
        self.actions = _GrowableArray(actions)
        self.rewards = _GrowableArray(rewards)
        self.dones = _GrowableArray(dones)

    @property
    def num_rows(self) -> int:
        """Rows stored so far."""
        return self.actions.size


class Dataset:
    """Episodes of (obs, action, reward, done) steps, sampled as windows (ARCHITECTURE.md batch contract)."""

    def __init__(self, storage: Storage, starts, lengths, shape_meta: dict, env_meta: dict, seed: int = 0):
        self._storage = storage
        self.shape_meta = shape_meta
        self.env_meta = env_meta
        self.rng = np.random.default_rng(seed)
        self._starts = np.asarray(starts, dtype=np.int64)    # (E,) first row of each episode
        self._lengths = np.asarray(lengths, dtype=np.int64)  # (E,)
        self._stats = None
        self._rebuild_tables()

    def _rebuild_tables(self):
        # One entry per sampleable step: its storage row, and the first / last row of its episode.
        pairs = zip(self._starts, self._lengths, strict=True)
        self._step_row = np.concatenate([np.arange(s, s + n) for s, n in pairs] or [np.zeros(0, np.int64)])
        self._step_first = np.repeat(self._starts, self._lengths)
        self._step_last = np.repeat(self._starts + self._lengths - 1, self._lengths)

    def __len__(self) -> int:
        return len(self._step_row)

    @property
    def num_episodes(self) -> int:
        """Number of episodes in this dataset."""
        return len(self._starts)

    @property
    def storage_mode(self) -> str:
        """'ram' when every key is held in RAM, 'cache' when image keys are read from the on-disk cache."""
        return 'ram' if all(isinstance(c, _GrowableArray) for c in self._storage.obs.values()) else 'cache'

    @property
    def obs_keys(self) -> list:
        """Observation keys, sorted (same as shape_meta['obs'])."""
        return list(self.shape_meta['obs'])

    def sample_sequence(self, batch_size: int, sequence_length: int, obs_steps: int = 1,
                        discount: float = DEFAULT_DISCOUNT, idxs=None) -> dict:
        """Sample windows at uniform steps i (or at step indices `idxs`); see ARCHITECTURE.md for the keys."""
        if sequence_length < 1 or obs_steps < 1:
            raise ValueError(f'sequence_length={sequence_length} and obs_steps={obs_steps} must be >= 1')
        if len(self) == 0:
            raise ValueError('cannot sample from an empty dataset (0 episodes)')
        if idxs is None:
            idxs = self.rng.integers(0, len(self), size=batch_size)
        idxs = np.asarray(idxs, dtype=np.int64)
        row = self._step_row[idxs][:, None]      # (B, 1)
        first = self._step_first[idxs][:, None]  # (B, 1)
        last = self._step_last[idxs][:, None]    # (B, 1)
        obs_offsets = np.arange(1 - obs_steps, 1)                       # (To,)  i-To+1 .. i
        obs_rows = np.clip(row + obs_offsets, first, last)              # (B, To)
        next_rows = np.clip(row + sequence_length + obs_offsets, first, last)  # (B, To), window ends at i+Tp
        chunk = row + np.arange(sequence_length)                        # (B, Tp)  i .. i+Tp-1
        valid = chunk <= last                                           # (B, Tp)
        chunk = np.minimum(chunk, last)                                 # edge padded: repeat the last step
        s = self._storage
        step_rewards = s.rewards[chunk] - 1.0                           # (B, Tp) sparse {0,1} -> {-1,0}
        discounts = discount ** np.arange(sequence_length)
        return {
            'observations': {k: s.obs[k][obs_rows] for k in self.shape_meta['obs']},  # (B, To, *shape)
            'actions': s.actions[chunk],                                # (B, Tp, A)
            'valid': valid.astype(np.float32),
            'rewards': (step_rewards * discounts).sum(axis=1).astype(np.float32),  # (B,)
            'masks': 1.0 - (s.dones[chunk] > 0).any(axis=1).astype(np.float32),     # (B,)
            'next_observations': {k: s.obs[k][next_rows] for k in self.shape_meta['obs']},
        }

    def normalizer_stats(self) -> dict:
        """Per-dimension min / max over this dataset's steps for actions and each low_dim key."""
        if self._stats is None:
            rows = self._step_row
            stats = {'actions': self._min_max(self._storage.actions[rows])}
            for key in low_dim_keys(self.shape_meta):
                stats[key] = self._min_max(self._storage.obs[key][rows])
            self._stats = stats
        return self._stats

    def action_chunks(self, horizon: int, max_chunks: int = 100_000) -> np.ndarray:
        """Raw action chunks (N, horizon, A) starting at every step (edge padded as in `sample_sequence`);
        with more steps than `max_chunks`, an evenly spaced subset of them (deterministic)."""
        if horizon < 1:
            raise ValueError(f'horizon={horizon} must be >= 1')
        if len(self) == 0:
            raise ValueError('cannot take action chunks of an empty dataset (0 episodes)')
        idxs = np.unique(np.linspace(0, len(self) - 1, min(len(self), max_chunks)).astype(np.int64))
        chunk = self._step_row[idxs][:, None] + np.arange(horizon)                 # (N, Tp)
        chunk = np.minimum(chunk, self._step_last[idxs][:, None])
        return np.asarray(self._storage.actions[chunk], dtype=np.float32)

    def returns_to_go(self, discount: float = DEFAULT_DISCOUNT) -> np.ndarray:
        """Per step (the step indices of `sample_sequence`'s `idxs`): the discounted sum of the shifted
        rewards r - 1 (as `sample_sequence`) from that step to the end of its episode, nothing bootstrapped
        after it. A successful episode of n steps (reward 1 on its last) gives
        -(1 - discount ** (n - 1 - i)) / (1 - discount) at step i."""
        out = np.empty(len(self), np.float64)
        pos = 0
        for start, n in zip(self._starts, self._lengths, strict=True):
            g = 0.0
            rewards = np.asarray(self._storage.rewards[np.arange(start, start + n)], np.float64) - 1.0
            for i in range(n - 1, -1, -1):
                g = rewards[i] + discount * g
                out[pos + i] = g
            pos += n
        return out

    @staticmethod
    def _min_max(values: np.ndarray) -> dict:
        return {'min': values.min(axis=0).astype(np.float32), 'max': values.max(axis=0).astype(np.float32)}

    def add_episode(self, observations: dict, actions, rewards, dones):
        """Append an episode: obs dict of (L, *shape), actions (L, A), rewards/dones (L,)."""
        actions = np.asarray(actions, dtype=np.float32)
        n = len(actions)
        if n == 0:
            raise ValueError('add_episode: empty episode')
        expected = {'actions': (n, *self.shape_meta['action']['shape']), 'rewards': (n,), 'dones': (n,)}
        given = {'actions': actions.shape, 'rewards': np.shape(rewards), 'dones': np.shape(dones)}
        if set(observations) != set(self.shape_meta['obs']):
            raise ValueError(f'add_episode: observation keys {sorted(observations)} != {self.obs_keys}')
        for key, meta in self.shape_meta['obs'].items():
            expected[key] = (n, *meta['shape'])
            given[key] = np.shape(observations[key])
        bad = {k: (given[k], expected[k]) for k in expected if tuple(given[k]) != tuple(expected[k])}
        if bad:
            raise ValueError(f'add_episode: shapes (given, expected) do not match: {bad}')
        s = self._storage
        on_disk = [k for k, col in s.obs.items() if not isinstance(col, _GrowableArray)]
        if on_disk:
            raise ValueError(f'add_episode: keys {on_disk} are read from the on-disk cache; an online replay '
                             'buffer needs RAM storage (load with storage="ram" or a larger ram_budget_gb)')
        start = s.num_rows
        rgb = rgb_keys(self.shape_meta)
        for key in self.shape_meta['obs']:
            dtype = np.uint8 if key in rgb else np.float32
            s.obs[key].append(np.asarray(observations[key], dtype=dtype))
        s.actions.append(actions)
        s.rewards.append(np.asarray(rewards, dtype=np.float32))
        s.dones.append(np.asarray(dones, dtype=np.float32))
        self._starts = np.append(self._starts, start)
        self._lengths = np.append(self._lengths, n)
        self._stats = None
        self._rebuild_tables()

    def rng_state(self) -> dict:
        """The sampling RNG state, for checkpoints."""
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict):
        """Restore the sampling RNG state saved by `rng_state()`."""
        self.rng.bit_generator.state = state
