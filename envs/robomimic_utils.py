"""robomimic names, file locations and metadata.

Public API:
    parse_env_name(name) -> EnvName            'lift-ph-image' -> EnvName('lift', 'ph', 'image')
    max_episode_steps(name_or_record) -> int    400 / 500 / 700, per task and data type
    get_dataset_path(name, dataset_path=None)   the hdf5 under $ROBOMIMIC_DATA_DIR (default ~/.robomimic)
    scripted_dataset_path(task, obs_type, t)    where envs.generate_demos writes its files (scripted | mixed)
    default_obs_keys(obs_type, available_keys)  the obs keys a model reads by default
    resolve_obs_type(name, requested, obs_keys) 'state' | 'image' from the data; a contradiction raises
    read_env_meta(path) / read_shape_meta(...)  see envs/hdf5_reader.py (re-exported here)
    list_masks(path) / check_filter_key(...)    mask names; a bad filter_key names the file's masks

    load_datasets(path, obs_type, ...) -> (train, valid)   utils.datasets.Dataset objects over the file

The hdf5 reading itself (validation, RAM / on-disk cache storage) lives in envs/hdf5_reader.py;
the sequence windows over the arrays it returns live in utils/datasets.py.
"""

import dataclasses
import os
import re
from pathlib import Path

from envs.hdf5_reader import (  # noqa: F401  (re-exported: the public reading API)
    RobomimicData,
    RobomimicFileError,
    check_filter_key,
    list_masks,
    list_obs_keys,
    read_env_meta,
    read_robomimic,
    read_shape_meta,
)
from envs.obs_layout import annotate_quaternions
from utils.datasets import Dataset, Storage
from utils.shape_meta import canonical_obs_type, is_rgb_key, obs_type_of_keys

TASKS = ('lift', 'can', 'square', 'transport', 'tool_hang')
DATASET_TYPES = ('ph', 'mh', 'mg', 'scripted', 'mixed', 'careless')
# written by envs.generate_demos (generated on first use; what each holds: generate_demos.GENERATED_DATA)
GENERATED_TYPES = ('scripted', 'mixed', 'careless')
_GENERATE_FLAGS = {'scripted': '', 'mixed': ' --mixed', 'careless': ' --careless'}
OBS_TYPES = ('low_dim', 'image')

# Candidate file names inside <data_dir>/<task>/<type>/, most specific first.
_IMAGE_FILE_NAMES = ('image_v15.hdf5', 'image_v141.hdf5', 'image.hdf5', 'image_dense_v15.hdf5',
                     'image_sparse_v15.hdf5')
_LOW_DIM_FILE_NAMES = ('low_dim_v15.hdf5', 'low_dim_v141.hdf5', 'low_dim.hdf5', 'low_dim_dense_v15.hdf5',
                       'low_dim_sparse_v15.hdf5')
_STATES_FILE_NAMES = ('demo_v15.hdf5', 'demo_v141.hdf5', 'demo.hdf5')

_NAME_RE = re.compile(r'^(?P<task>[a-z_]+)-(?P<type>[a-z]+)-(?P<obs>low_dim|image)$')


@dataclasses.dataclass(frozen=True)
class EnvName:
    """A parsed `{task}-{ph|mh|mg|scripted|mixed|careless}-{low_dim|image}` environment name."""

    task: str
    dataset_type: str
    obs_type: str

    @property
    def is_image(self) -> bool:
        """True for image observations."""
        return self.obs_type == 'image'

    @property
    def policy_obs_type(self) -> str:
        """The agent config's obs_type for this name: 'image' or 'state' (for 'low_dim')."""
        return canonical_obs_type(self.obs_type)

    @property
    def is_generated(self) -> bool:
        """True for the types envs.generate_demos writes (scripted, mixed, careless)."""
        return self.dataset_type in GENERATED_TYPES

    def __str__(self) -> str:
        return f'{self.task}-{self.dataset_type}-{self.obs_type}'


def parse_env_name(name: str | EnvName) -> EnvName:
    """Parse an env name like 'lift-ph-image' once into an `EnvName`; ValueError lists what is valid."""
    if isinstance(name, EnvName):
        return name
    valid = (f'names look like "{{task}}-{{type}}-{{obs}}" with task in {list(TASKS)}, '
             f'type in {list(DATASET_TYPES)}, obs in {list(OBS_TYPES)}, e.g. "lift-ph-image"')
    match = _NAME_RE.match(str(name))
    if match is None:
        raise ValueError(f'unknown env name {name!r}: {valid}')
    parsed = EnvName(match['task'], match['type'], match['obs'])
    if parsed.task not in TASKS:
        raise ValueError(f'unknown task {parsed.task!r} in env name {name!r}: {valid}')
    if parsed.dataset_type not in DATASET_TYPES:
        raise ValueError(f'unknown dataset type {parsed.dataset_type!r} in env name {name!r}: {valid}')
    return parsed


def max_episode_steps(name: str | EnvName) -> int:
    """Evaluation step limit: lift/can/square 400 (mh 500; mixed as scripted); transport, tool_hang 700."""
    parsed = parse_env_name(name)
    if parsed.task in ('transport', 'tool_hang'):
        return 700
    return 500 if parsed.dataset_type == 'mh' else 400


def data_dir() -> Path:
    """The robomimic data root: $ROBOMIMIC_DATA_DIR, default ~/.robomimic."""
    return Path(os.environ.get('ROBOMIMIC_DATA_DIR', '~/.robomimic')).expanduser()


def scripted_dataset_path(task: str, obs_type: str, dataset_type: str = 'scripted') -> Path:
    """Path of a generated file: <data_dir>/<task>/<scripted|mixed|careless>/<low_dim|image>.hdf5."""
    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; valid: {list(TASKS)}')
    if obs_type not in OBS_TYPES:
        raise ValueError(f'unknown obs_type {obs_type!r}; valid: {list(OBS_TYPES)}')
    if dataset_type not in GENERATED_TYPES:
        raise ValueError(f'dataset_type {dataset_type!r} is not generated; valid: {list(GENERATED_TYPES)}')
    return data_dir() / task / dataset_type / f'{obs_type}.hdf5'


def candidate_paths(name: str | EnvName) -> list[Path]:
    """Every path `get_dataset_path` tries for an env name, in order."""
    parsed = parse_env_name(name)
    if parsed.is_generated:
        return [scripted_dataset_path(parsed.task, parsed.obs_type, parsed.dataset_type)]
    folder = data_dir() / parsed.task / parsed.dataset_type
    # A low_dim run can read the low_dim keys of an image file too, so it tries image files last.
    names = (_IMAGE_FILE_NAMES if parsed.is_image
             else _LOW_DIM_FILE_NAMES + _IMAGE_FILE_NAMES)
    return [folder / file_name for file_name in names]


def get_dataset_path(name: str | EnvName, dataset_path: str | os.PathLike | None = None) -> Path:
    """Find the hdf5 file for an env name (or check `dataset_path`); FileNotFoundError says how to get one."""
    parsed = parse_env_name(name)
    if dataset_path is not None:
        path = Path(dataset_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f'dataset_path={str(path)!r} does not exist (or is not a file)')
        return path
    tried = candidate_paths(parsed)
    for path in tried:
        if path.is_file():
            return path
    folder = data_dir() / parsed.task / parsed.dataset_type
    states_hint = ', '.join(_STATES_FILE_NAMES)
    lines = [f'no dataset file for {str(parsed)!r}. Tried:']
    lines += [f'  {p}' for p in tried]
    kind = parsed.dataset_type if parsed.is_generated else 'scripted'
    generated = scripted_dataset_path(parsed.task, parsed.obs_type, kind)
    lines += [
        'Ways to get one:',
        f'  - scripted demos (no download): python -m envs.generate_demos --task {parsed.task} '
        f'--obs {parsed.obs_type}{_GENERATE_FLAGS[kind]}   (writes {generated})',
        f'  - robomimic: python -m robomimic.scripts.download_datasets --tasks {parsed.task} '
        f'--dataset_types {parsed.dataset_type} --hdf5_types raw, which gives {states_hint} in {folder}; '
        f'then render observations with: python -m envs.convert_states_to_obs --input <that file> '
        f'--output {folder / (_IMAGE_FILE_NAMES[0] if parsed.is_image else _LOW_DIM_FILE_NAMES[0])}',
        '  - or pass dataset_path=/path/to/file.hdf5, or set ROBOMIMIC_DATA_DIR '
        f'(now {str(data_dir())!r}).',
    ]
    raise FileNotFoundError('\n'.join(lines))


_PROPRIO_RE = re.compile(r'^robot\d+_(eef_pos|eef_quat|gripper_qpos)$')


def default_obs_keys(obs_type: str, available_keys) -> list[str]:
    """Default obs keys: state -> robot*_eef_pos/eef_quat/gripper_qpos, object; image -> *_image + proprio."""
    if canonical_obs_type(obs_type) == 'state':
        keys = [k for k in available_keys if _PROPRIO_RE.match(k) or k == 'object']
    else:
        keys = [k for k in available_keys if is_rgb_key(k) or _PROPRIO_RE.match(k)]
    return sorted(keys)


def resolve_obs_type(env_name: str | EnvName, requested: str | None = None, obs_keys=None) -> str:
    """The observation type the data gives ('state' | 'image'): from `obs_keys` when given, else the env name.

    This is the one rule for obs_type. `requested` (a config value or flag; None = from the data) that
    contradicts the data is a ValueError naming both.
    """
    parsed = parse_env_name(env_name)
    if obs_keys is not None:
        data, source = obs_type_of_keys(obs_keys), f'obs_keys={list(obs_keys)}'
    else:
        data, source = parsed.policy_obs_type, f'env_name {str(parsed)!r}'
    if requested is not None and canonical_obs_type(requested) != data:
        raise ValueError(f'obs_type={requested!r} contradicts the data: {source} gives {data!r} '
                         f'observations; leave obs_type unset (it follows the data) or choose data with '
                         f'{requested!r} observations')
    return data


def load_datasets(path, obs_type: str, obs_keys=None, action_key: str = 'actions', ram_budget_gb: float = 4.0,
                  seed: int = 0, valid_fraction: float = 0.1, storage: str = 'auto', cache_dir=None,
                  filter_key: str | None = None):
    """Read a robomimic hdf5 into (train, valid) Datasets; valid is None when no episode is held out.

    Train and valid share the file's storage and differ in episodes (mask/train + mask/valid, else a seeded
    split of `valid_fraction`). `filter_key` keeps one mask's demos only (robomimic's name): its
    mask/<key>_train and mask/<key>_valid when the file has them, else its demos in each split."""
    if obs_keys is None:
        available = list_obs_keys(path)
        obs_keys = default_obs_keys(obs_type, available)
        if not obs_keys:
            raise ValueError(f'{path}: no default obs keys for obs_type={obs_type!r} among {available}; '
                             'pass obs_keys= explicitly')
        if obs_type == 'image' and not any(is_rgb_key(k) for k in obs_keys):
            raise ValueError(f'{path}: obs_type="image" but the file has no *_image keys ({available}); '
                             'render them with python -m envs.convert_states_to_obs')
    else:
        default_obs_keys(obs_type, [])   # validates obs_type
    data = read_robomimic(path, obs_keys, action_key=action_key, ram_budget_gb=ram_budget_gb, storage=storage,
                          cache_dir=cache_dir, valid_fraction=valid_fraction, seed=seed,
                          filter_key=filter_key)
    store = Storage(data.obs, data.actions, data.rewards, data.dones)
    shape_meta = annotate_quaternions(data.shape_meta, data.env_meta.get('env_args', {}).get('env_name'))

    def make(episodes, rng_seed):
        return Dataset(store, data.starts[episodes], data.lengths[episodes], shape_meta, data.env_meta,
                       seed=rng_seed)

    train = make(data.train_episodes, seed)
    valid = make(data.valid_episodes, seed + 1) if len(data.valid_episodes) else None
    return train, valid
