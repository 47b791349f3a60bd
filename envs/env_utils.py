"""One call from an env name to (env, eval_env, train_dataset, val_dataset), as in the seed.

    env, eval_env, train, valid = make_env_and_datasets('lift-scripted-low_dim')

The name is parsed once (`envs.robomimic_utils.parse_env_name`); the file is found under
$ROBOMIMIC_DATA_DIR or given by `dataset_path`; a missing scripted file is generated on first use
(`envs.generate_demos`), with progress shown. Envs are built from the file's own `env_args`.
"""

import os
import sys

from envs.robomimic_utils import (
    get_dataset_path,
    load_datasets,
    max_episode_steps,
    parse_env_name,
    resolve_obs_type,
    scripted_dataset_path,
)

__all__ = ['EnvFactory', 'make_env_and_datasets', 'parse_env_name', 'resolve_obs_type', 'ensure_dataset',
           'preview_shape_meta']

# Demos generated on first use of a scripted env name when no file exists yet.
DEFAULT_SCRIPTED_DEMOS = {'low_dim': 200, 'image': 100}


class EnvFactory:
    """Picklable recipe for a `RobosuiteEnv` (evaluation workers call it to build their own env)."""

    def __init__(self, env_meta, shape_meta, max_episode_steps, enable_render=False, hard_reset=False):
        self.kwargs = dict(env_meta=env_meta, shape_meta=shape_meta, max_episode_steps=int(max_episode_steps),
                           enable_render=enable_render, hard_reset=hard_reset)

    def __call__(self):
        """Build the env."""
        from envs.robosuite_env import RobosuiteEnv

        return RobosuiteEnv(**self.kwargs)


def ensure_dataset(env_name, dataset_path=None, num_demos=None, seed=0, workers=None):
    """Path of the dataset file; a scripted name with no file yet generates one (progress on stderr).

    `seed` seeds the generated demos only; it is fixed (not the training seed) so every run of a scripted
    env name trains on the same file.
    """
    parsed = parse_env_name(env_name)
    if dataset_path is not None or parsed.dataset_type != 'scripted':
        return get_dataset_path(parsed, dataset_path)
    path = scripted_dataset_path(parsed.task, parsed.obs_type)
    if not path.is_file():
        from envs.generate_demos import generate_demos

        n = num_demos or DEFAULT_SCRIPTED_DEMOS[parsed.obs_type]
        print(f'{env_name}: no dataset at {path}; generating {n} scripted demos (first use only)',
              file=sys.stderr)
        generate_demos(parsed.task, n, parsed.obs_type, out_path=path, seed=seed,
                       workers=workers or os.cpu_count() or 1, progress=True)
    return get_dataset_path(parsed, path)


def make_env_and_datasets(env_name, dataset_path=None, obs_type=None, obs_keys=None, seed=0, build_envs=True,
                          max_episode_steps=None, **dataset_kwargs):
    """Return (env, eval_env, train_dataset, val_dataset) for an env name (or an explicit `dataset_path`).

    obs_type follows the data (`resolve_obs_type`: obs_keys, else the name's 'low_dim' -> 'state',
    'image' -> 'image'); a given obs_type that contradicts it is a ValueError. val_dataset is None when the
    file holds no valid episodes. With `build_envs=False` both envs are None (use `EnvFactory`).
    Extra keyword arguments go to `envs.robomimic_utils.load_datasets` (ram_budget_gb, storage, ...).
    """
    parsed = parse_env_name(env_name)
    obs_type = resolve_obs_type(parsed, obs_type, obs_keys)
    path = ensure_dataset(parsed, dataset_path)
    train, valid = load_datasets(path, obs_type, obs_keys=obs_keys, seed=seed, **dataset_kwargs)
    env = eval_env = None
    if build_envs:
        factory = EnvFactory(train.env_meta, train.shape_meta, max_episode_steps or default_max_steps(parsed))
        env, eval_env = factory(), factory()
    return env, eval_env, train, valid


def default_max_steps(env_name):
    """Per-task episode step limit (400 / 500 / 700)."""
    return max_episode_steps(parse_env_name(env_name))


def preview_shape_meta(env_name, dataset_path=None, obs_type=None, obs_keys=None):
    """The `shape_meta` a run will train on, without loading or generating data.

    Read from the file's header when the file exists, else from the demo generator's layout (a scripted name
    whose file is generated on first use). The keys are those `load_datasets` selects.
    """
    from envs.hdf5_reader import list_obs_keys, read_shape_meta
    from envs.robomimic_utils import default_obs_keys, scripted_dataset_path

    parsed = parse_env_name(env_name)
    obs_type = obs_type or parsed.policy_obs_type
    if dataset_path is None and parsed.dataset_type == 'scripted' \
            and not scripted_dataset_path(parsed.task, parsed.obs_type).is_file():
        from envs.generate_demos import generation_shape_meta

        meta = generation_shape_meta(parsed.task, parsed.obs_type)
        keys = list(obs_keys) if obs_keys is not None else default_obs_keys(obs_type, list(meta['obs']))
        missing = [k for k in keys if k not in meta['obs']]
        if missing:
            raise ValueError(f'obs_keys {missing} are not among the generated keys {sorted(meta["obs"])}')
        return {'obs': {k: meta['obs'][k] for k in sorted(keys)}, 'action': meta['action']}
    path = get_dataset_path(parsed, dataset_path)
    keys = list(obs_keys) if obs_keys is not None else default_obs_keys(obs_type, list_obs_keys(path))
    return read_shape_meta(path, keys)
