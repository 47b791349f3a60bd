"""bench.unet_reference (our side alone, and beside a stand-in checkout), bench.nfe on real checkpoints and
bench.agents' update-cost ratio."""

import os
import textwrap

import pytest

import bench.unet_reference as unet_reference
from tests.helpers import TINY, read_csv, run_cli, run_dirs


def fake_checkout(root):
    """A directory laid out like diffusion_policy whose ConditionalUnet1D is our ChiUNet behind DP's call."""
    pkg = root / 'diffusion_policy' / 'model' / 'diffusion'
    pkg.mkdir(parents=True)
    for d in (root / 'diffusion_policy', root / 'diffusion_policy' / 'model', pkg):
        (d / '__init__.py').write_text('')
    (pkg / 'conditional_unet1d.py').write_text(textwrap.dedent('''
        import torch
        from utils.networks.chiunet import ChiUNet

        class ConditionalUnet1D(torch.nn.Module):
            def __init__(self, input_dim, global_cond_dim, diffusion_step_embed_dim, down_dims, kernel_size,
                         n_groups, cond_predict_scale):
                super().__init__()
                mult = tuple(c // down_dims[0] for c in down_dims)
                self.net = ChiUNet(input_dim, 16, 2, global_cond_dim // 2, emb_dim=diffusion_step_embed_dim,
                                   model_dim=down_dims[0], dim_mult=mult,
                                   kernel_size=kernel_size, n_groups=n_groups)

            def forward(self, sample, timestep, global_cond):
                t = timestep / 1000
                return self.net(sample, t, t, global_cond.reshape(len(sample), 2, -1))[0]
    '''))
    return str(root)


def test_unet_reference_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(unet_reference, 'SHAPES', [('state', 4, 23)])
    unet_reference.main(['--rounds', '2'])
    alone = capsys.readouterr().out
    assert 'state, B=4, eager, 1 thread(s): ours' in alone and 'dp' not in alone
    unet_reference.main(['--rounds', '2', '--dp_path', fake_checkout(tmp_path)])
    line = capsys.readouterr().out.strip()
    assert '; dp ' in line and line.endswith('1.0000 FLOPs')  # the stand-in is the same network
    params = [part.split(' ')[-2] for part in line.split(', ') if part.endswith('params')]
    assert len(params) == 2 and params[0] == params[1]


@pytest.mark.slow
@pytest.mark.parametrize('agent, field', [('fbc', 'flow_steps'), ('mfbc', 'sample_steps')])
def test_nfe_evaluates_each_step_count(agent, field, lift_state_file, tmp_path):
    """bench.nfe: a real checkpoint evaluated (real rollouts) at 1 and 3 sampler steps; the csv has a row per
    count with a Wilson interval, the plot is written, and an existing csv is never overwritten."""
    import bench.nfe as nfe

    run_cli([f'--dataset_path={lift_state_file}', f'--agent=agents/{agent}.py', '--offline_steps=2',
             '--eval_episodes=0', *TINY], tmp_path / 'runs')
    (run_dir,) = run_dirs(tmp_path / 'runs')
    ckpt = os.path.join(run_dir, 'checkpoints', 'latest.pt')
    out = tmp_path / 'nfe'
    nfe.main([ckpt, '--out', str(out), '--nfe', '1,3', '--episodes', '2'])
    rows = read_csv(out / 'nfe.csv')
    assert [r['nfe'] for r in rows] == ['1', '3'] and {r['agent'] for r in rows} == {agent}
    for r in rows:
        low, high = float(r['success_ci_low']), float(r['success_ci_high'])
        assert r['num_episodes'] == '2' and 0 <= low <= high <= 1
    assert (out / 'nfe.png').stat().st_size > 0
    assert nfe.steps_field(nfe_config(agent)) == field
    with pytest.raises(SystemExit):
        nfe.main([ckpt, '--out', str(out), '--nfe', '1', '--episodes', '1'])
    nfe.main([str(out / 'nfe.csv'), '--out', str(tmp_path / 'again')])  # an earlier csv, plotted again
    assert read_csv(tmp_path / 'again' / 'nfe.csv') == rows and (tmp_path / 'again' / 'nfe.png').exists()


def nfe_config(agent):
    import importlib

    return importlib.import_module(f'agents.{agent}').get_config()


def test_update_ratio_reports_the_parts():
    """bench.agents --update-ratio: the FQL / FBC ratio and its parts, each a positive multiple of one FBC
    update; the parts of an update cannot cost more than the whole update plus timing noise."""
    from bench.agents import update_ratio
    row = update_ratio(rounds=2, batch_size=16)
    parts = ('euler_target_over_ref', 'critic_loss_over_ref', 'actor_loss_over_ref')
    assert row['update_ratio'] == 'fql/fbc' and row['ratio_of_medians'] > 1
    assert all(row[k] > 0 for k in parts), row
    # the target is inside the actor loss
    assert row['euler_target_over_ref'] < row['actor_loss_over_ref'], row


def test_meanflow_screen_velocity_head_is_the_tangent_and_is_trained():
    """bench.meanflow_screen's iMF variant: the separate head at (x_s, s, s), without gradient, is the JVP
    tangent; the head at the sample's (x_s, s, t) is trained (its weights move), and sampling reads u."""
    import numpy as np
    import torch

    from bench.meanflow_screen import VelocityHeadMLP, chunk_batch, screen_config, train

    config = screen_config('imfbc_vhead', 20)
    fresh, _ = train('imfbc_vhead', config, 0)
    agent, _ = train('imfbc_vhead', config, 5)
    net = agent.model['actor']
    assert isinstance(net, VelocityHeadMLP)
    assert not torch.allclose(net.v_out.weight, fresh.model['actor'].v_out.weight)
    calls, head = [], net.velocity

    def spy(x, s, t, cond):
        calls.append((torch.equal(s, t), torch.is_grad_enabled()))
        return head(x, s, t, cond)

    net.velocity = spy
    batch = agent.prepare_batch(chunk_batch(np.random.default_rng(0), 8))
    agent.flow_loss(net, agent.model['encoder'](batch['observations']), batch['actions'])
    assert calls == [(True, False), (False, True)]
    samples = agent.sample_actions({'obs': np.zeros((4, 1, 1), np.float32)}, seed=0)
    assert samples.shape == (4, 8, 2) and torch.isfinite(samples).all()


def test_critic_default_masks_are_the_files_operator_groups(tmp_path):
    """bench.critic's default rows: the operator groups a file has, ours ('careless') included, in
    OPERATORS' order; a file without any gets 'train'."""
    import h5py

    from bench.critic import resolve_masks

    def masked_file(name, masks):
        path = tmp_path / name
        with h5py.File(path, 'w') as f:
            for m in masks:
                f.create_dataset(f'mask/{m}', data=[b'demo_0'])
        return str(path)

    careless = masked_file('careless.hdf5', ['train', 'valid', 'careless', 'careless_better', 'better'])
    assert resolve_masks(careless, None) == ['better', 'careless']
    mixed = masked_file('mixed.hdf5', ['worse', 'better', 'okay', 'train'])
    assert resolve_masks(mixed, None) == ['better', 'okay', 'worse']
    assert resolve_masks(masked_file('plain.hdf5', ['train', 'valid']), None) == ['train']


@pytest.mark.slow
def test_critic_report_one_row_per_operator_group(lift_mixed_file, tmp_path):
    """bench.critic on a real (2-step) ACFQL checkpoint of a mixed file: a row per operator group with the
    data's returns (< 0: -1 per step before success), fractions in [0, 1]; an FBC checkpoint, which has no
    critic, and an existing --out file are refused."""
    import bench.critic as critic

    for agent in ('fql', 'fbc'):
        run_cli([f'--dataset_path={lift_mixed_file}', f'--agent=agents/{agent}.py', '--offline_steps=2',
                 '--eval_episodes=0', *TINY], tmp_path / agent)
    (fql_run,), (fbc_run,) = run_dirs(tmp_path / 'fql'), run_dirs(tmp_path / 'fbc')
    out = tmp_path / 'critic.csv'
    rows = critic.main([fql_run, '--samples', '40', '--flow-samples', '2', '--out', str(out)])
    assert [r['mask'] for r in rows] == ['better', 'okay', 'worse'] and len(read_csv(out)) == 3
    for r in rows:
        assert r['step'] == 2 and 0 < r['n'] <= 40 and r['return_to_go'] < 0, r
        assert 0 <= r['frac_adv_below_0'] <= 1 and r['flow_q_std'] >= 0, r
        assert -1 <= r['corr_q_speed'] <= 1 and r['speed_best_over_mean'] > 0, r
    assert [r['mask'] for r in critic.main([fql_run, '--samples', '8', '--masks', 'train'])] == ['train']
    with pytest.raises(SystemExit, match='no critic'):
        critic.main([fbc_run, '--samples', '8'])
    with pytest.raises(SystemExit):
        critic.main([fql_run, '--out', str(out)])
    with pytest.raises(SystemExit, match="no mask \\['best'\\]; its masks: .*better"):
        critic.main([fql_run, '--masks', 'best'])
    with pytest.raises(SystemExit) as exit_info:  # a missing checkpoint: argparse's error, before any is read
        critic.main([str(tmp_path / 'missing'), fql_run])
    assert exit_info.value.code == 2
