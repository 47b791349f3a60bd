"""Validated reading of robomimic hdf5 files into flat per-step arrays (RAM, or a one-time on-disk cache).

Public API:
    list_obs_keys(path) -> list[str]                 obs keys of the first demo
    read_env_meta(path) -> {'env_args', 'render_quality', 'source_file'}
    read_shape_meta(path, obs_keys, action_key) -> shape_meta (docs/ARCHITECTURE.md)
    read_robomimic(path, obs_keys, ...) -> RobomimicData   every demo, concatenated in demo-suffix order
    list_masks(path) -> list[str]                    mask names (train, valid, better, ...)
    check_filter_key(path, key)                      error naming the file's masks unless key is one

Images (`*_image` keys, uint8 H x W x 3 in the file) come out as uint8 (N, 3, H, W), transposed once here.
If they fit in `ram_budget_gb` they are held in RAM; otherwise they are copied once to `<file>.cache/`
(raw .npy files plus meta.json; never inside the hdf5, rebuilt when the hdf5 changes) and read row by
row with pread, so process memory stays bounded whatever the file size.
"""

import dataclasses
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from utils.shape_meta import is_rgb_key, key_type, rgb_keys

CACHE_FORMAT = 'acfql_pytorch image cache v1'
_DEMO_RE = re.compile(r'^(.*?)(\d+)$')
_SAFE_KEY_RE = re.compile(r'^[A-Za-z0-9_.-]+$')


class RobomimicFileError(ValueError):
    """A robomimic hdf5 file that cannot be used; the message names the file and what is wrong."""


@dataclasses.dataclass
class RobomimicData:
    """Every demo of a file concatenated along steps; episode e holds rows starts[e] .. + lengths[e] - 1."""

    path: Path
    demo_names: list          # sorted by integer suffix
    starts: np.ndarray        # (E,) int64
    lengths: np.ndarray       # (E,) int64
    obs: dict                 # key -> (N, *shape): rgb uint8 (N, 3, H, W) array/DiskArray; low_dim float32
    actions: np.ndarray       # (N, A) float32
    rewards: np.ndarray       # (N,) float32
    dones: np.ndarray         # (N,) float32
    train_episodes: np.ndarray  # episode indices (into demo_names)
    valid_episodes: np.ndarray
    shape_meta: dict
    env_meta: dict
    storage: str              # 'ram' or 'cache'


class DiskArray:
    """Read-only (N, *row_shape) array in a .npy file, gathered with pread (no mmap, so bounded RSS)."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, 'rb') as fh:
            version = np.lib.format.read_magic(fh)
            shape, fortran, dtype = np.lib.format._read_array_header(fh, version)
            self._offset = fh.tell()
        if fortran:
            raise RobomimicFileError(f'{self.path}: cache file is Fortran-ordered; delete it to rebuild')
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        expected = self._offset + self.shape[0] * self._row_bytes
        if os.path.getsize(self.path) != expected:
            raise RobomimicFileError(f'{self.path}: cache file has {os.path.getsize(self.path)} bytes, '
                                     f'expected {expected}; delete it to rebuild')
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Size of the array data in bytes."""
        return self.shape[0] * self._row_bytes

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f'{self.path}: row index out of range [0, {self.shape[0]})')
        unique, inverse = np.unique(idx.ravel(), return_inverse=True)
        buf = np.empty((unique.size,) + self.shape[1:], dtype=self.dtype)
        raw = memoryview(buf.reshape(-1).view(np.uint8))
        # Read runs of consecutive rows with one syscall each (windows of To steps are mostly consecutive).
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        run_starts = np.concatenate([[0], breaks])
        run_ends = np.concatenate([breaks, [unique.size]])
        rb = self._row_bytes
        for s, e in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            want = (e - s) * rb
            got = os.preadv(self._fd, [raw[s * rb:e * rb]], self._offset + int(unique[s]) * rb)
            if got != want:
                raise RobomimicFileError(f'{self.path}: short read ({got} of {want} bytes); delete the cache')
        return buf[inverse].reshape(idx.shape + self.shape[1:])

    def __getstate__(self):
        return {'path': self.path}

    def __setstate__(self, state):
        self.__init__(state['path'])

    def __del__(self):
        fd = getattr(self, '_fd', None)
        if fd is not None:
            os.close(fd)


def _open(path) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'{path}: dataset file does not exist')
    if not path.is_file():
        raise FileNotFoundError(f'{path}: is not a file')
    try:
        return h5py.File(path, 'r')
    except OSError as e:
        raise RobomimicFileError(
            f'{path}: cannot open as hdf5 (truncated, corrupt or not an hdf5 file): {e}') from e


def _read(path, dataset, sel=Ellipsis) -> np.ndarray:
    """Read dataset[sel], turning h5py's OSError (truncated / corrupt data) into our message."""
    try:
        return dataset[sel]
    except OSError as e:
        raise RobomimicFileError(
            f'{path}: cannot read {dataset.name} (truncated or corrupt file?): {e}') from e


def _sorted_demo_names(path, data) -> list:
    keyed = []
    for name in data.keys():
        match = _DEMO_RE.match(name)
        if match is None or not isinstance(data[name], h5py.Group):
            continue
        keyed.append((int(match[2]), name))
    if not keyed:
        raise RobomimicFileError(f"{path}: group 'data' holds no demos (expected groups like 'demo_0')")
    return [name for _, name in sorted(keyed)]


def _data_group(path, f) -> h5py.Group:
    if 'data' not in f or not isinstance(f['data'], h5py.Group):
        raise RobomimicFileError(
            f"{path}: no 'data' group (not a robomimic file?); top-level keys: {list(f.keys())}")
    return f['data']


def list_obs_keys(path) -> list:
    """Obs keys of the first demo of a robomimic file, sorted."""
    with _open(path) as f:
        data = _data_group(path, f)
        first = data[_sorted_demo_names(path, data)[0]]
        if 'obs' not in first:
            raise RobomimicFileError(f"{path}: {first.name} has no 'obs' group")
        return sorted(first['obs'].keys())


def _parse_json_attr(path, attrs, name):
    raw = attrs.get(name)
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return json.loads(raw)
    except (TypeError, json.JSONDecodeError) as e:
        raise RobomimicFileError(f"{path}: data.attrs['{name}'] is not valid JSON: {e}") from e


def _env_meta(path, data) -> dict:
    env_args = _parse_json_attr(path, data.attrs, 'env_args')
    render = _parse_json_attr(path, data.attrs, 'acfql_render')
    quality = 'default'
    if render is not None:
        if not isinstance(render, dict) or not isinstance(render.get('quality'), str):
            raise RobomimicFileError(f"{path}: data.attrs['acfql_render'] must be JSON like "
                                     f'{{"quality": "cheap"}}, got {render!r}')
        quality = render['quality']
    return {'env_args': env_args, 'render_quality': quality, 'source_file': str(Path(path).resolve())}


def read_env_meta(path) -> dict:
    """env meta of a file: {'env_args': dict or None, 'render_quality': str, 'source_file': str}."""
    with _open(path) as f:
        return _env_meta(path, _data_group(path, f))


def _check_demo(path, demo, obs_keys, action_key) -> int:
    """Validate one demo's keys, lengths and image dtypes; return its number of steps."""
    for key in (action_key, 'rewards', 'dones'):
        if key not in demo:
            raise RobomimicFileError(
                f"{path}: {demo.name} has no '{key}' dataset (keys: {sorted(demo.keys())})")
    n = demo[action_key].shape[0]
    if n == 0:
        raise RobomimicFileError(f'{path}: {demo.name} is an empty demo (0 steps)')
    if demo[action_key].ndim != 2:
        raise RobomimicFileError(f'{path}: {demo.name}/{action_key} has shape {demo[action_key].shape}, '
                                 'expected (steps, action_dim)')
    for key in ('rewards', 'dones'):
        if demo[key].shape[:1] != (n,):
            raise RobomimicFileError(
                f'{path}: {demo.name}/{key} has shape {demo[key].shape}, expected ({n},)')
    if 'obs' not in demo:
        raise RobomimicFileError(f"{path}: {demo.name} has no 'obs' group")
    for key in obs_keys:
        if key not in demo['obs']:
            raise RobomimicFileError(f"{path}: {demo.name}/obs has no key '{key}' "
                                     f"(has: {sorted(demo['obs'].keys())})")
        ds = demo['obs'][key]
        if ds.shape[0] != n:
            raise RobomimicFileError(f'{path}: {demo.name}/obs/{key} has {ds.shape[0]} steps, '
                                     f'but {action_key} has {n}')
        if is_rgb_key(key):
            if ds.dtype != np.uint8:
                raise RobomimicFileError(f'{path}: {demo.name}/obs/{key} has dtype {ds.dtype}; '
                                         'an image key must hold uint8 (steps, H, W, 3)')
            if ds.ndim != 4 or ds.shape[-1] != 3:
                raise RobomimicFileError(f'{path}: {demo.name}/obs/{key} has shape {ds.shape}; '
                                         'an image key must hold uint8 (steps, H, W, 3)')
        elif ds.ndim > 2:
            raise RobomimicFileError(f'{path}: {demo.name}/obs/{key} has shape {ds.shape}; a low-dim key '
                                     'must be (steps,) or (steps, dim) (image keys must end in _image)')
    return n


def _key_shape(ds) -> list:
    if ds.ndim == 4:   # (N, H, W, 3) -> C, H, W
        return [int(ds.shape[3]), int(ds.shape[1]), int(ds.shape[2])]
    return [int(ds.shape[1]) if ds.ndim == 2 else 1]


def _shape_meta(demo, obs_keys, action_key) -> dict:
    obs = {}
    for key in sorted(obs_keys):
        ds = demo['obs'][key]
        obs[key] = {'shape': _key_shape(ds), 'type': key_type(key)}
    return {'obs': obs, 'action': {'shape': [int(demo[action_key].shape[1])]}}


def read_shape_meta(path, obs_keys, action_key='actions') -> dict:
    """shape_meta (ARCHITECTURE.md) of the given obs keys, read from the file's first demo."""
    with _open(path) as f:
        data = _data_group(path, f)
        demo = data[_sorted_demo_names(path, data)[0]]
        _check_demo(path, demo, obs_keys, action_key)
        return _shape_meta(demo, obs_keys, action_key)


def _mask_names(f) -> list:
    """Names of the masks (mask/<name> datasets) of an open file, sorted."""
    if 'mask' not in f or not isinstance(f['mask'], h5py.Group):
        return []
    return sorted(k for k in f['mask'] if isinstance(f['mask'][k], h5py.Dataset))


def list_masks(path) -> list:
    """Names of a robomimic file's masks (mask/train, mask/better, ...), sorted; [] when it has none."""
    with _open(path) as f:
        return _mask_names(f)


def check_filter_key(path, filter_key, masks=None):
    """Raise a RobomimicFileError naming the file's masks unless `filter_key` is one of them."""
    masks = list_masks(path) if masks is None else masks
    if filter_key not in masks:
        listed = ', '.join(masks) if masks else 'none'
        raise RobomimicFileError(f'{path}: filter_key={filter_key!r} is not a mask of this file; its masks: '
                                 f'{listed}')


def _split(path, f, demo_names, valid_fraction, seed, filter_key=None):
    """Episode indices for train and valid: mask/train + mask/valid when present, else a seeded split.

    With `filter_key` only that mask's demos are used: mask/<key>_train + mask/<key>_valid when the file has
    both (robomimic's MH files), else the mask's demos that fall in the train / valid split above."""
    index = {name: i for i, name in enumerate(demo_names)}

    def episodes(mask_key):
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _read(path, f['mask'][mask_key])]
        missing = [n for n in names if n not in index]
        if missing:
            raise RobomimicFileError(f'{path}: mask/{mask_key} names demos not in data: {missing[:5]}')
        return np.array(sorted(index[n] for n in names), dtype=np.int64)

    masks = _mask_names(f)
    if filter_key is not None:
        check_filter_key(path, filter_key, masks)
        if f'{filter_key}_train' in masks and f'{filter_key}_valid' in masks:
            train, valid = episodes(f'{filter_key}_train'), episodes(f'{filter_key}_valid')
        else:
            train, valid = _split(path, f, demo_names, valid_fraction, seed)
            keep = episodes(filter_key)
            train, valid = np.intersect1d(train, keep), np.intersect1d(valid, keep)
        if train.size == 0:
            raise RobomimicFileError(f'{path}: filter_key={filter_key!r} leaves no training demos '
                                     f'(mask/{filter_key} has {episodes(filter_key).size} demos)')
        return train, valid
    if 'train' in masks:
        train = episodes('train')
        if 'valid' in masks:
            valid = episodes('valid')
        else:
            valid = np.setdiff1d(np.arange(len(demo_names)), train)
        if train.size == 0:
            raise RobomimicFileError(f'{path}: mask/train is empty')
        return train, valid
    num = len(demo_names)
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f'valid_fraction={valid_fraction} must be in [0, 1)')
    num_valid = min(int(round(valid_fraction * num)), num - 1)
    perm = np.random.default_rng(seed).permutation(num)
    return np.sort(perm[num_valid:]), np.sort(perm[:num_valid])


def _cache_dir_for(path, cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(str(Path(path).resolve()) + '.cache')


def _fingerprint(path) -> dict:
    stat = os.stat(path)
    return {'source': str(Path(path).resolve()), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def _load_cache_meta(path, cache) -> dict:
    """The cache's meta.json, a fresh one if the cache is new or stale; refuse a folder that is not ours."""
    meta_file = cache / 'meta.json'
    fresh = {'format': CACHE_FORMAT, 'fingerprint': _fingerprint(path), 'keys': {}}
    if cache.exists() and not cache.is_dir():
        raise RobomimicFileError(f'{path}: cache path {cache} exists and is not a folder; pass cache_dir=')
    if not cache.exists():
        try:
            cache.mkdir(parents=True)
        except OSError as e:
            raise RobomimicFileError(f'{path}: cannot create the image cache folder {cache} ({e}); pass '
                                     'cache_dir= a writable folder, or raise ram_budget_gb') from e
        return fresh
    if not meta_file.is_file():
        if any(cache.iterdir()):
            raise RobomimicFileError(f'{path}: cache folder {cache} exists, is not empty and has no '
                                     'meta.json, so it is not ours; move it away or pass cache_dir=')
        return fresh
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        meta = {}
    if meta.get('format') != CACHE_FORMAT:
        raise RobomimicFileError(f'{path}: {meta_file} is not an {CACHE_FORMAT!r} file; move {cache} away '
                                 'or pass cache_dir=')
    if meta.get('fingerprint') != fresh['fingerprint']:
        for entry in meta.get('keys', {}).values():   # stale: remove only the files we wrote
            (cache / entry['file']).unlink(missing_ok=True)
        return fresh
    return meta


def _write_meta(cache, meta):
    tmp = cache / f'.meta.json.tmp{os.getpid()}'
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, cache / 'meta.json')


def _build_cache_key(path, data, demo_names, key, shape, total, out_file, chunk):
    """Copy one image key of every demo into a raw .npy as uint8 (N, 3, H, W), chunk by chunk."""
    tmp = out_file.with_name(f'.{out_file.name}.tmp{os.getpid()}')
    header = {'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False,
              'shape': (total, *shape)}
    with open(tmp, 'wb') as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        for name in demo_names:
            ds = data[name]['obs'][key]
            for s in range(0, ds.shape[0], chunk):
                frames = _read(path, ds, slice(s, s + chunk))   # (n, H, W, 3)
                fh.write(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)).tobytes())
    os.replace(tmp, out_file)


def read_robomimic(path, obs_keys, action_key='actions', ram_budget_gb=4.0, storage='auto', cache_dir=None,
                   valid_fraction=0.1, seed=0, chunk_frames=256, filter_key=None) -> RobomimicData:
    """Read and validate every demo of a robomimic file; images go to RAM or to the on-disk cache.

    `filter_key` (a mask name, robomimic's term) restricts train / valid episodes to that mask (`_split`)."""
    if storage not in ('auto', 'ram', 'cache'):
        raise ValueError(f"storage={storage!r}; valid: 'auto', 'ram', 'cache'")
    path = Path(path)
    obs_keys = sorted(obs_keys)
    if not obs_keys:
        raise ValueError(f'{path}: obs_keys is empty')
    with _open(path) as f:
        if filter_key is not None:  # before any data is read
            check_filter_key(path, filter_key, _mask_names(f))
        data = _data_group(path, f)
        demo_names = _sorted_demo_names(path, data)
        lengths = np.array([_check_demo(path, data[n], obs_keys, action_key) for n in demo_names],
                           dtype=np.int64)
        shape_meta = _shape_meta(data[demo_names[0]], obs_keys, action_key)
        for name in demo_names[1:]:   # every demo must agree with the first on shapes
            other = _shape_meta(data[name], obs_keys, action_key)
            if other != shape_meta:
                raise RobomimicFileError(f'{path}: data/{name} has shapes {other}, but '
                                         f'data/{demo_names[0]} has {shape_meta}')
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())

        def concat(fetch, width):
            out = np.empty((total, width) if width else (total,), dtype=np.float32)
            for name, s, n in zip(demo_names, starts, lengths, strict=True):
                values = np.asarray(_read(path, fetch(data[name])), dtype=np.float32)
                out[s:s + n] = values.reshape(out[s:s + n].shape)   # (n,) -> (n, 1) for 1-D keys
            return out

        actions = concat(lambda d: d[action_key], shape_meta['action']['shape'][0])
        rewards = concat(lambda d: d['rewards'], 0)
        dones = concat(lambda d: d['dones'], 0)
        obs = {}
        rgb = [k for k in obs_keys if k in rgb_keys(shape_meta)]  # in obs_keys order
        for key in obs_keys:
            if key not in rgb:
                obs[key] = concat(lambda d, key=key: d['obs'][key], shape_meta['obs'][key]['shape'][0])
        image_bytes = sum(total * int(np.prod(shape_meta['obs'][k]['shape'])) for k in rgb)
        mode = storage if storage != 'auto' else ('ram' if image_bytes <= ram_budget_gb * 2**30 else 'cache')
        if mode == 'ram':
            for key in rgb:
                arr = np.empty((total, *shape_meta['obs'][key]['shape']), dtype=np.uint8)   # (N, 3, H, W)
                for name, s in zip(demo_names, starts, strict=True):
                    ds = data[name]['obs'][key]
                    for a in range(0, ds.shape[0], chunk_frames):
                        frames = _read(path, ds, slice(a, a + chunk_frames))   # (n, H, W, 3)
                        arr[s + a:s + a + len(frames)] = frames.transpose(0, 3, 1, 2)
                obs[key] = arr
        elif rgb:
            cache = _cache_dir_for(path, cache_dir)
            meta = _load_cache_meta(path, cache)
            for key in rgb:
                if not _SAFE_KEY_RE.match(key):
                    raise RobomimicFileError(f'{path}: obs key {key!r} cannot name a cache file')
                entry = {'file': f'{key}.npy', 'shape': [total, *shape_meta['obs'][key]['shape']],
                         'demos': demo_names, 'lengths': lengths.tolist()}
                if meta['keys'].get(key) != entry or not (cache / entry['file']).is_file():
                    _build_cache_key(path, data, demo_names, key, shape_meta['obs'][key]['shape'], total,
                                     cache / entry['file'], chunk_frames)
                    meta['keys'][key] = entry
                    _write_meta(cache, meta)
                obs[key] = DiskArray(cache / entry['file'])
        train, valid = _split(path, f, demo_names, valid_fraction, seed, filter_key)
        env_meta = _env_meta(path, data)
    return RobomimicData(path=path, demo_names=demo_names, starts=starts, lengths=lengths, obs=obs,
                         actions=actions, rewards=rewards, dones=dones, train_episodes=train,
                         valid_episodes=valid,
                         shape_meta=shape_meta, env_meta=env_meta, storage=mode)
