"""Online episodes for offline-to-online fine-tuning: collection through the rollout wrapper, the replay file.

    collector = EpisodeCollector(env_fn, obs_steps, action_steps, max_steps)
    episode = collector.run(policy, seed, budget, after_chunk)     # None if after_chunk asked to stop
    replay = ReplayFile.create(path, env_meta, shape_meta)         # or ReplayFile.open(path, shape_meta)
    replay.append(episode, attrs); replay.read(j); replay.num_episodes
    chunk_sizes(length, action_steps)       the env steps of each chunk of a collected episode
    check_seed_ranges(...)                  collection seeds never overlap evaluation seeds

An episode record is a dict laid out as `shape_meta` (the in-memory layout of utils/datasets.py):
    obs      {key: (L, *shape)}  uint8 (C, H, W) images, float32 low-dim; obs[t] is seen before actions[t]
    actions  (L, A) float32      the actions executed
    rewards  (L,) float32        raw env rewards (sparse 0 / 1; the dataset shifts them by -1 when sampling)
    dones    (L,) float32        1 on the success step (the last one), 0 elsewhere; a step-limit or budget
                                 end stores 0 everywhere (truncation, the critic bootstraps)
    states   (L, S) float64      flattened MuJoCo states before each action (robomimic's `states`)
    seed, success, length, return, end ('success' | 'step_limit' | 'budget')

The replay file (docs/ARCHITECTURE.md) is a robomimic-layout hdf5, `data/demo_<j>` per episode in collection
order, images stored H x W x 3 as robomimic does, so `envs.robomimic_utils.load_datasets` reads it like any
dataset. It is only ever appended to: episode j is written, then `data.attrs['committed_episodes']` becomes
j + 1 (the commit). A group past the commit count is the remnant of an interrupted write and is dropped when
the file is opened again.
"""

import json
import os
from pathlib import Path

import h5py
import numpy as np

from envs.wrappers import ChunkedRollout
from utils.shape_meta import rgb_keys

REPLAY_FORMAT = 'acfql_pytorch online replay v1'
END_REASONS = ('success', 'step_limit', 'budget')
_NOISE_STREAM = 0x6F6E6C69  # separates the policy-noise seeds of collection from every other seed use


def chunk_sizes(length, action_steps):
    """Env steps of each chunk of a collected episode of `length` steps: Ta each, the remainder last.

    Every chunk executes Ta actions unless the episode ends inside it (success, step limit or budget), so
    the chunk boundaries follow from the length alone."""
    if length < 1 or action_steps < 1:
        raise ValueError(f'length={length} and action_steps={action_steps} must be >= 1')
    full, rest = divmod(int(length), int(action_steps))
    return [int(action_steps)] * full + ([rest] if rest else [])


def chunk_noise_seed(episode_seed, call):
    """Seed of the policy noise for the `call`-th chunk of the online episode reset with `episode_seed`."""
    return int(np.random.SeedSequence([_NOISE_STREAM, int(episode_seed), int(call)])
               .generate_state(1, np.uint64)[0])


def collection_seed(collect_seed, episode):
    """Reset seed of online episode `episode` (0-based): collect_seed + episode."""
    return int(collect_seed) + int(episode)


def check_seed_ranges(collect_seed, online_steps, eval_seed, eval_episodes):
    """ValueError unless the collection seeds are disjoint from the evaluation seeds.

    Online episode j resets with collect_seed + j; a run has at most `online_steps` episodes (each takes at
    least one env step), so it uses seeds in [collect_seed, collect_seed + online_steps). Evaluation episode
    k resets with eval_seed + k, k < eval_episodes."""
    if collect_seed < 0:
        raise ValueError(f'--collect_seed={collect_seed}: expected an integer >= 0')
    if online_steps <= 0 or eval_episodes <= 0:
        return
    c0, c1 = collect_seed, collect_seed + online_steps
    e0, e1 = eval_seed, eval_seed + eval_episodes
    if c0 < e1 and e0 < c1:
        raise ValueError(f'--collect_seed={collect_seed}: online episodes reset with seeds [{c0}, {c1}) '
                         f'(at most --online_steps={online_steps} episodes), which overlaps the evaluation '
                         f'seeds [{e0}, {e1}) (--eval_seed={eval_seed}, --eval_episodes={eval_episodes}); '
                         f'choose a --collect_seed >= {e1} or <= {e0 - online_steps}')


class EpisodeCollector:
    """Runs online episodes chunk by chunk in one env with `ChunkedRollout` (the wrapper evaluation uses),
    recording every step in the replay layout."""

    def __init__(self, env_fn, obs_steps, action_steps, max_steps):
        self.env = env_fn()
        self.rollout = ChunkedRollout(self.env, obs_steps, action_steps, max_steps)
        self.action_steps = int(action_steps)

    def run(self, policy, seed, budget=None, after_chunk=None):
        """Collect one episode from a reset with `seed`; returns its record, or None if stopped.

        policy(obs dict of (1, To, ...) numpy) -> (1, Tp, A) numpy chunk. At most `budget` env steps (an end
        there is a truncation, 'budget'). `after_chunk(n)` runs after each executed chunk of n env steps (the
        trainer's updates) and returns False to stop: a partial episode is then discarded (None), a complete
        one is still returned."""
        if budget is not None and budget < 1:
            raise ValueError(f'budget must be >= 1 env step, got {budget}')
        history = self.rollout.reset(seed=seed)
        obs = {k: [v[-1]] for k, v in history.items()}  # the newest frame of each key
        states = [self.env.get_state()]
        actions, rewards = [], []

        def on_step(hist, reward, info):
            for k, v in hist.items():
                obs[k].append(v[-1])
            states.append(self.env.get_state())
            rewards.append(float(reward))

        while True:
            chunk = np.asarray(policy({k: v[None] for k, v in history.items()}))
            if chunk.ndim != 3 or chunk.shape[0] != 1:
                raise ValueError(f'policy must return a (1, Tp, A) chunk, got shape {chunk.shape}')
            left = None if budget is None else budget - len(actions)
            before = len(rewards)
            history, _, done = self.rollout.step_chunk(chunk[0], on_step=on_step, max_actions=left)
            executed = len(rewards) - before
            actions.extend(np.asarray(chunk[0][:executed], dtype=np.float32))
            ended = done or (budget is not None and len(actions) >= budget)
            if after_chunk is not None and not after_chunk(executed) and not ended:
                return None
            if ended:
                break
        length = len(actions)
        success = bool(self.rollout.success)
        end = 'success' if success else ('step_limit' if self.rollout.done else 'budget')
        dones = np.zeros(length, dtype=np.float32)
        dones[-1] = float(success)
        return {
            'obs': {k: np.stack(v[:length]) for k, v in obs.items()},  # the observation after the last
            'actions': np.stack(actions).astype(np.float32),          # action is not stored (robomimic)
            'rewards': np.asarray(rewards, dtype=np.float32),
            'dones': dones,
            'states': np.stack(states[:length]).astype(np.float64),
            'seed': int(seed), 'success': success, 'length': length,
            'return': float(np.sum(rewards)), 'end': end,
        }

    def close(self):
        """Release the env."""
        if hasattr(self.env, 'close'):
            self.env.close()


class ReplayFile:
    """The append-only robomimic-layout hdf5 of a run's online episodes (module docstring)."""

    def __init__(self, path, shape_meta):
        self.path = Path(path)
        self.shape_meta = shape_meta
        self._rgb = set(rgb_keys(shape_meta))

    @classmethod
    def create(cls, path, env_meta, shape_meta):
        """A new, empty replay file at `path`; an existing file is never overwritten."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f'{path} exists; a replay file is never overwritten')
        tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
        with h5py.File(tmp, 'w') as f:
            data = f.create_group('data')
            data.attrs['env_args'] = json.dumps(env_meta['env_args'])
            data.attrs['acfql_render'] = json.dumps({'quality': env_meta.get('render_quality', 'default')})
            data.attrs['acfql_replay'] = json.dumps({'format': REPLAY_FORMAT, 'shape_meta': shape_meta,
                                                     'source_file': env_meta.get('source_file')})
            data.attrs['total'] = 0
            data.attrs['committed_episodes'] = 0
        os.replace(tmp, path)
        return cls(path, shape_meta)

    @classmethod
    def open(cls, path, shape_meta):
        """An existing replay file, checked against `shape_meta`; uncommitted remnants are dropped."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'{path}: replay file does not exist')
        try:
            f = h5py.File(path, 'a')
        except OSError as e:
            raise ValueError(f'{path}: cannot open the replay file as hdf5 (damaged by a kill while an '
                             f'episode was written?): {e}') from e
        with f:
            data = f.get('data')
            raw = None if data is None else data.attrs.get('acfql_replay')
            info = json.loads(raw) if raw is not None else {}
            if info.get('format') != REPLAY_FORMAT:
                raise ValueError(f'{path} is not an online replay file (format {info.get("format")!r}, '
                                 f'expected {REPLAY_FORMAT!r})')
            if info['shape_meta'] != json.loads(json.dumps(shape_meta)):
                raise ValueError(f'{path}: the replay holds observations {info["shape_meta"]}, the run '
                                 f'expects {shape_meta}')
            committed = int(data.attrs['committed_episodes'])
            for name in [n for n in data if n.startswith('demo_') and int(n[5:]) >= committed]:
                del data[name]  # written after the last commit: an interrupted append
            total = sum(int(data[f'demo_{j}'].attrs['num_samples']) for j in range(committed))
            if int(data.attrs['total']) != total:
                data.attrs['total'] = total
        return cls(path, shape_meta)

    @property
    def num_episodes(self):
        """Committed episodes."""
        with h5py.File(self.path, 'r') as f:
            return int(f['data'].attrs['committed_episodes'])

    def append(self, episode, attrs=None):
        """Write `episode` (the module's record) as the next demo and commit it; returns its index."""
        with h5py.File(self.path, 'a') as f:
            data = f['data']
            j = int(data.attrs['committed_episodes'])
            name = f'demo_{j}'
            if name in data:
                del data[name]
            g = data.create_group(name)
            for key in self.shape_meta['obs']:
                value = episode['obs'][key]
                if key in self._rgb:
                    value = value.transpose(0, 2, 3, 1)  # (L, C, H, W) -> (L, H, W, C), robomimic layout
                g.create_dataset(f'obs/{key}', data=value)
            for key in ('actions', 'rewards', 'dones', 'states'):
                g.create_dataset(key, data=episode[key])
            g.attrs['num_samples'] = int(episode['length'])
            for key in ('seed', 'success', 'return', 'end'):
                g.attrs[key] = episode[key]
            for key, value in (attrs or {}).items():
                g.attrs[key] = value
            f.flush()
            data.attrs['committed_episodes'] = j + 1  # the commit
            data.attrs['total'] = int(data.attrs['total']) + int(episode['length'])
        return j

    def read(self, j):
        """Committed episode `j` as a record (images back to C, H, W)."""
        with h5py.File(self.path, 'r') as f:
            data = f['data']
            committed = int(data.attrs['committed_episodes'])
            if not 0 <= j < committed:
                raise IndexError(f'{self.path}: episode {j} is not committed (the file holds {committed})')
            g = data[f'demo_{j}']
            obs = {}
            for key in self.shape_meta['obs']:
                value = g['obs'][key][()]
                obs[key] = np.ascontiguousarray(value.transpose(0, 3, 1, 2)) if key in self._rgb else value
            record = {key: g[key][()] for key in ('actions', 'rewards', 'dones', 'states')}
            attrs = dict(g.attrs)
        record.update(obs=obs, seed=int(attrs['seed']), success=bool(attrs['success']),
                      length=int(attrs['num_samples']), end=str(attrs['end']))
        record['return'] = float(attrs['return'])
        record['attrs'] = attrs
        return record
