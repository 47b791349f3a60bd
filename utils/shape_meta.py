"""The one place that knows the `shape_meta` layout (docs/ARCHITECTURE.md): rgb keys and the checks.

    shape_meta = {'obs': {key: {'shape': [...], 'type': 'rgb' | 'low_dim'}}, 'action': {'shape': [A]}}

An rgb key is a `*_image` key (`is_rgb_key`, the naming rule of robomimic files); everything downstream of
the reader asks `rgb_keys(shape_meta)` / `low_dim_keys(shape_meta)` instead of repeating the rule.
"""

import numpy as np

RGB, LOW_DIM = 'rgb', 'low_dim'
RGB_KEY_SUFFIX = '_image'  # robomimic names camera observations '<camera>_image'


def is_rgb_key(key: str) -> bool:
    """An rgb observation key is a `*_image` key (holding uint8 H x W x 3 in the file)."""
    return key.endswith(RGB_KEY_SUFFIX)


def camera_name(key: str) -> str:
    """The camera of an rgb key: 'agentview_image' -> 'agentview'."""
    if not is_rgb_key(key):
        raise ValueError(f'rgb observation key {key!r} must end in {RGB_KEY_SUFFIX!r}')
    return key[:-len(RGB_KEY_SUFFIX)]


def key_type(key: str) -> str:
    """The shape_meta type of an observation key: 'rgb' for `*_image` keys, else 'low_dim'."""
    return RGB if is_rgb_key(key) else LOW_DIM


# Observation types of the agent config; robomimic names call 'state' 'low_dim' (the one alias).
OBS_TYPES = ('state', 'image')
_OBS_TYPE_ALIASES = {'state': 'state', 'low_dim': 'state', 'image': 'image'}
OBS_TYPE_NAMES = tuple(sorted(_OBS_TYPE_ALIASES))  # every accepted spelling (for CLI choices)


def canonical_obs_type(obs_type: str) -> str:
    """'state' | 'low_dim' (alias) | 'image' -> 'state' | 'image'; ValueError for anything else."""
    if obs_type not in _OBS_TYPE_ALIASES:
        raise ValueError(f"unknown obs_type {obs_type!r}; valid: 'state' (alias 'low_dim'), 'image'")
    return _OBS_TYPE_ALIASES[obs_type]


def obs_type_of_keys(keys) -> str:
    """The observation type that a list of obs keys makes: 'image' with an rgb key, else 'state'."""
    return 'image' if any(is_rgb_key(k) for k in keys) else 'state'


def obs_type_of(shape_meta: dict) -> str:
    """The observation type of a shape_meta: 'image' when it has an rgb key, else 'state'."""
    return 'image' if rgb_keys(shape_meta) else 'state'


def rgb_keys(shape_meta: dict) -> list[str]:
    """Sorted observation keys of type 'rgb'."""
    return sorted(k for k, v in shape_meta['obs'].items() if v['type'] == RGB)


def low_dim_keys(shape_meta: dict) -> list[str]:
    """Sorted observation keys of type 'low_dim'."""
    return sorted(k for k, v in shape_meta['obs'].items() if v['type'] == LOW_DIM)


# A low-dim entry may list where xyzw unit quaternions start in its vector: {'shape': [14], 'type': 'low_dim',
# 'quaternions': [3, 10]}. robosuite reports q and -q (the same rotation) on either side of w = 0, so a
# quaternion can jump between antipodes within an episode; the encoders feed each one as the first two
# columns of its rotation matrix instead (6 numbers, equal for q and -q), and the normalizer leaves those
# dims unscaled. envs/ fills the field from the env's observation layout.
QUATERNIONS = 'quaternions'


def quaternion_offsets(meta: dict) -> list[int]:
    """Start indices of the xyzw quaternions in a low-dim entry's vector (none: [])."""
    return [int(o) for o in meta.get(QUATERNIONS, ())]


def low_dim_feature_dim(meta: dict) -> int:
    """Width of a low-dim entry as the encoders feed it: D, plus 2 per quaternion (4 -> 6 numbers)."""
    return int(meta['shape'][0]) + 2 * len(quaternion_offsets(meta))


def quaternion_identity_stats(stats: dict, shape_meta: dict) -> dict:
    """Normalizer stats with min -1 / max 1 (the identity map) on every quaternion dim of shape_meta."""
    out = {k: dict(v) for k, v in (stats or {}).items()}
    for key, meta in shape_meta['obs'].items():
        offsets = quaternion_offsets(meta)
        if not offsets or key not in out:
            continue
        lo, hi = np.array(out[key]['min'], np.float64), np.array(out[key]['max'], np.float64)
        for o in offsets:
            lo[o:o + 4], hi[o:o + 4] = -1.0, 1.0
        out[key] = {'min': lo, 'max': hi}
    return out


def validate_shape_meta(shape_meta) -> None:
    """Raise a ValueError naming the key when shape_meta is not of the form in docs/ARCHITECTURE.md."""
    if not isinstance(shape_meta, dict) and not hasattr(shape_meta, 'keys'):
        raise ValueError(f'shape_meta must be a dict with keys "obs" and "action", got {type(shape_meta)}')
    if 'obs' not in shape_meta or 'action' not in shape_meta:
        raise ValueError(f'shape_meta must have keys "obs" and "action", got {sorted(shape_meta.keys())}'
                         ' (config.shape_meta is filled from the dataset)')
    if not hasattr(shape_meta['obs'], 'items') or len(shape_meta['obs']) == 0:
        raise ValueError(f'shape_meta["obs"] must be a non-empty dict of observation keys, '
                         f'got {shape_meta["obs"]!r:.200}')
    for key, meta in shape_meta['obs'].items():
        if not hasattr(meta, 'get') or 'shape' not in meta or meta.get('type') not in (RGB, LOW_DIM):
            raise ValueError(f'shape_meta["obs"]["{key}"] needs "shape" and type "rgb" or "low_dim", '
                             f'got {meta!r}')
        shape = tuple(meta['shape'])
        if meta['type'] == RGB and (len(shape) != 3 or shape[0] != 3):
            raise ValueError(f'shape_meta["obs"]["{key}"]: rgb shape must be [3, H, W], got {list(shape)}')
        if meta['type'] == LOW_DIM and len(shape) != 1:
            raise ValueError(f'shape_meta["obs"]["{key}"]: low_dim shape must be [D], got {list(shape)}')
        offsets = sorted(meta.get(QUATERNIONS, ()))
        inside = all(int(o) == o and 0 <= o and o + 4 <= shape[0] for o in offsets)
        apart = all(b >= a + 4 for a, b in zip(offsets, offsets[1:], strict=False))
        if offsets and not (meta['type'] == LOW_DIM and inside and apart):
            raise ValueError(f'shape_meta["obs"]["{key}"]["{QUATERNIONS}"] must list non-overlapping start '
                             f'indices of 4-number quaternions inside a low_dim vector of {list(shape)}, '
                             f'got {offsets}')
    action = shape_meta['action'].get('shape') if hasattr(shape_meta['action'], 'get') else None
    if action is None or len(tuple(action)) != 1 or int(action[0]) < 1:
        raise ValueError(f'shape_meta["action"]["shape"] must be [A] with A >= 1, got {action!r}')


def random_obs(shape_meta, batch_size, obs_steps, rng):
    """Raw observations (B, To, ...) as the rollout wrapper passes them (uint8 images)."""
    out = {}
    rgb = set(rgb_keys(shape_meta))
    for key, meta in shape_meta['obs'].items():
        shape = (batch_size, obs_steps, *meta['shape'])
        if key in rgb:
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = rng.uniform(-1, 1, shape).astype(np.float32)
    return out
