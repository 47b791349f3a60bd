"""Smoke check for image training on scripted Lift images (no download): FBC with ChiUNet, ChiTransformer.

    python test_image_training.py [--dataset_path=file.hdf5]   # non-zero exit on failure; also run by pytest

Builds the image dataset (a 3-demo cheap-render scripted file in a temporary folder unless a path is given),
prints its shape_meta, then for each network: creates FBC on images, computes the loss, runs one update and
samples actions.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

NETWORKS = ('chiunet', 'chitransformer')


def smoke(dataset_path=None, batch_size=4):
    """Run the smoke check; raises on any failure. Returns {network: loss}."""
    from agents import AGENTS
    from agents.fbc import get_config
    from envs.env_utils import make_env_and_datasets
    from utils.shape_meta import rgb_keys

    with tempfile.TemporaryDirectory() as tmp:
        if dataset_path is None:
            from envs.generate_demos import generate_demos

            dataset_path = generate_demos('lift', 3, 'image', Path(tmp) / 'lift_image.hdf5', seed=0,
                                          workers=1, render_quality='cheap', progress=True)
        _, _, train, _ = make_env_and_datasets('lift-scripted-image', dataset_path=dataset_path,
                                               build_envs=False)
        print(f'Dataset size: {len(train)} steps in {train.num_episodes} episodes')
        print(f'Shape meta: {json.dumps(train.shape_meta)}')
        assert rgb_keys(train.shape_meta), 'no rgb keys in shape_meta'

        losses = {}
        for network in NETWORKS:
            start = time.perf_counter()
            config = get_config()
            config.obs_type, config.network_type = 'image', network
            config.obs_steps, config.horizon_length, config.action_steps = 2, 16, 8
            config.batch_size = batch_size
            agent = AGENTS[config.agent_name].create(train.shape_meta, config,
                                                     normalizer_stats=train.normalizer_stats(), seed=0)
            batch = train.sample_sequence(batch_size, config.horizon_length, obs_steps=config.obs_steps)
            for key, meta in train.shape_meta['obs'].items():
                assert batch['observations'][key].shape == (batch_size, 2, *meta['shape']), key
            loss, info = agent.actor_loss(agent.prepare_batch(batch))
            assert torch.isfinite(loss), f'{network}: loss is {loss}'
            update_info = agent.update(batch)
            assert all(np.isfinite(v) for v in update_info.values()), f'{network}: {update_info}'
            obs = {k: v[:1] for k, v in batch['observations'].items()}
            actions = agent.sample_actions(obs)
            assert tuple(actions.shape) == (1, 16, train.shape_meta['action']['shape'][0]), actions.shape
            assert torch.isfinite(actions).all()
            losses[network] = loss.item()
            print(f'{network}: loss {loss.item():.4f}, update {update_info}, sampled actions '
                  f'{tuple(actions.shape)} ({time.perf_counter() - start:.1f} s)')
    return losses


def test_image_training_smoke():
    """pytest entry: the smoke check passes on freshly generated scripted image data."""
    losses = smoke()
    assert set(losses) == set(NETWORKS)


def main():
    """CLI entry: exit code 0 on success, 1 on failure."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset_path', default=None, help='image hdf5 to use (default: generate 3 demos)')
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        smoke(args.dataset_path)
    except Exception as e:  # report any failure as a non-zero exit
        import traceback

        traceback.print_exc()
        print(f'FAILED: {e}', file=sys.stderr)
        return 1
    print(f'OK ({time.perf_counter() - start:.1f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
