"""Add rendered camera observations to a states-only robomimic file, writing a NEW file.

    python -m envs.convert_states_to_obs --input low_dim_v15.hdf5 --output image_v15.hdf5 \
        --camera_names agentview robot0_eye_in_hand --camera_height 84 --camera_width 84 [--render cheap]

Like robomimic's dataset_states_to_obs.py, but the env is built by envs.robosuite_env from the file's
env_args. Every dataset and attribute of the input is copied; for each demo the env is reset to each
`states[k]` and the cameras are rendered into obs/<camera>_image (uint8 H x W x 3, upright). The input is
only read. The output is written to a temporary name and renamed at the end.
Known difference from robomimic: a demo's `model_file` attribute (per-demo MJCF) is copied but not loaded;
the env's own model is used, which matches files this project generates and robosuite's fixed-geometry tasks.
"""

import argparse
import copy
import json
import os
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm


def _demo_names(path, data):
    """Demo group names sorted by integer suffix."""
    names = [k for k in data.keys() if k.startswith('demo_')]
    try:
        return sorted(names, key=lambda n: int(n.split('_')[-1]))
    except ValueError as e:
        raise ValueError(f'{path}: demo names must end in an integer, got {names[:5]}...') from e


def converted_env_args(env_args, camera_names, height, width):
    """env_args with the cameras that the converter renders."""
    out = copy.deepcopy(env_args)
    kw = out['env_kwargs']
    kw.update(camera_names=list(camera_names), camera_heights=int(height), camera_widths=int(width),
              use_camera_obs=True, has_offscreen_renderer=True, camera_depths=False)
    return out


def convert_states_to_obs(input_path, output_path, camera_names=('agentview', 'robot0_eye_in_hand'),
                          camera_height=84, camera_width=84, render_quality='default', num_demos=None,
                          overwrite=False, progress=True):
    """Render camera observations for every state of `input_path` into a new file `output_path`."""
    from envs.robosuite_env import RENDER_QUALITIES, RobosuiteEnv

    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f'{input_path}: input file not found')
    if output_path.resolve() == input_path.resolve():
        raise ValueError(f'{output_path}: output must differ from the input; the input is never modified')
    if output_path.exists() and not overwrite:
        raise FileExistsError(f'{output_path} exists; pass --overwrite (overwrite=True) to replace it')
    if render_quality not in RENDER_QUALITIES:
        raise ValueError(f'render quality must be one of {RENDER_QUALITIES}, got {render_quality!r}')
    if not camera_names:
        raise ValueError('camera_names is empty: name at least one camera to render')
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = output_path.with_name(f'.{output_path.name}.tmp-{os.getpid()}')
    image_keys = [f'{c}_image' for c in camera_names]
    env = None
    try:
        with h5py.File(input_path, 'r') as fin, h5py.File(tmp_path, 'w') as fout:
            if 'data' not in fin:
                raise ValueError(f'{input_path}: no "data" group; not a robomimic file')
            data_in = fin['data']
            if 'env_args' not in data_in.attrs:
                raise ValueError(f"{input_path}: data.attrs['env_args'] is missing; cannot build the env")
            env_args = converted_env_args(json.loads(data_in.attrs['env_args']), camera_names,
                                          camera_height, camera_width)
            names = _demo_names(input_path, data_in)
            if num_demos is not None:
                names = names[:num_demos]
            if not names:
                raise ValueError(f'{input_path}: no demos in "data"')
            a_dim = data_in[names[0]]['actions'].shape[1]
            shape_meta = {'obs': {k: {'shape': [3, camera_height, camera_width], 'type': 'rgb'}
                                  for k in image_keys}, 'action': {'shape': [a_dim]}}
            env = RobosuiteEnv({'env_args': env_args, 'render_quality': render_quality,
                                'source_file': str(input_path)}, shape_meta, max_episode_steps=1)
            env.reset()

            data_out = fout.create_group('data')
            for k, v in data_in.attrs.items():
                data_out.attrs[k] = v
            data_out.attrs['env_args'] = json.dumps(env_args)
            data_out.attrs['acfql_render'] = json.dumps({'quality': render_quality})
            total = 0
            for name in tqdm(names, desc=f'render {input_path.name}', disable=not progress):
                g_in = data_in[name]
                g_out = data_out.create_group(name)
                for k, v in g_in.attrs.items():
                    g_out.attrs[k] = v
                for k in g_in.keys():
                    if k not in ('obs', 'next_obs'):
                        fin.copy(g_in[k], g_out, name=k)
                obs_out = g_out.create_group('obs')
                for k in g_in.get('obs', {}).keys():
                    if k not in image_keys:
                        fin.copy(g_in['obs'][k], obs_out, name=k)
                states = g_in['states'][()]
                frames = {k: np.empty((len(states), camera_height, camera_width, 3), np.uint8)
                          for k in image_keys}
                for t, state in enumerate(states):
                    obs = env.reset_to(state)
                    for k in image_keys:
                        frames[k][t] = obs[k].transpose(1, 2, 0)  # (3, H, W) -> file layout (H, W, 3)
                for k in image_keys:
                    obs_out.create_dataset(k, data=frames[k])
                total += len(states)
            data_out.attrs['total'] = total
            if 'mask' in fin:
                kept = {n.encode() for n in names}
                for k in fin['mask'].keys():
                    values = [v for v in fin['mask'][k][()] if v in kept]
                    fout.create_dataset(f'mask/{k}', data=np.array(values, dtype='S'))
        os.replace(tmp_path, output_path)
    finally:
        if env is not None:
            env.close()
        if tmp_path.exists():
            tmp_path.unlink()
    return output_path


def main(argv=None):
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--input', required=True, help='states-only robomimic hdf5 (read only)')
    p.add_argument('--output', required=True, help='new hdf5 to write')
    p.add_argument('--camera_names', nargs='+', default=['agentview', 'robot0_eye_in_hand'])
    p.add_argument('--camera_height', type=int, default=84)
    p.add_argument('--camera_width', type=int, default=84)
    p.add_argument('--render', default='default', choices=['default', 'cheap'],
                   help='render quality, recorded in the output so evaluation renders the same way')
    p.add_argument('--num_demos', type=int, default=None, help='convert only the first N demos')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output file')
    a = p.parse_args(argv)
    try:
        path = convert_states_to_obs(a.input, a.output, a.camera_names, a.camera_height, a.camera_width,
                                     a.render, a.num_demos, a.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
