"""Does an ACFQL critic rank the data's action chunks? One row per mask of the checkpoint's dataset file.

    python -m bench.critic runs/<run>/checkpoints/latest.pt [--masks better,okay,worse] [--samples 2000]

The masks default to the operator groups the file has (`envs.experts.OPERATORS`: robomimic's `better`,
`okay`, `worse`, and our `careless`), else `train`. For `--samples` steps drawn uniformly from each mask's
training demos, with the weights that act (EMA, eval mode), and only chunks that end inside their episode
(those the critic loss trains on):
- q_data: the critic's Q(o, chunk) of the data's chunk (mean over the ensemble);
- return_to_go: the data's discounted return from that step (`Dataset.returns_to_go`), and corr_q_return,
  the correlation of the two over the steps;
- adv_data: Q of the data's chunk minus the mean Q of `--flow-samples` chunks of the BC flow at the same
  observation, and frac_adv_below_0: above 0 where the critic prefers the demonstrator's chunk to BC's;
- gain_onestep: Q of the one-step policy's chunk minus that mean: how far the Q term moved the policy up
  the critic from the BC flow (about 0 without a Q term);
- flow_q_std: the spread of Q over the BC flow's chunks at one observation (mean over steps);
- corr_q_speed: the correlation, within an observation, of Q with the speed of the BC flow's chunks (mean
  norm of their first three action dims, robosuite's OSC translation, in the data's units), and
  speed_best_over_mean: the speed of the chunk best-of-N would pick over the chunks' mean speed.
Prints one JSON line per mask; `--out` also writes them to a csv file (a new file: never overwritten).
"""

import argparse
import csv
import json
import os

import numpy as np
import torch

FIELDS = ['checkpoint', 'step', 'mask', 'n', 'q_data', 'return_to_go', 'corr_q_return', 'adv_data',
          'frac_adv_below_0', 'gain_onestep', 'flow_q_std',
          'corr_q_speed', 'speed_best_over_mean']


def resolve_masks(path, masks) -> list:
    """`masks` checked against the file's (SystemExit naming them), or the operator groups the file has,
    else its training split."""
    from envs.experts import OPERATORS
    from envs.hdf5_reader import list_masks
    present = list_masks(path)
    if not masks:
        return [m for m in OPERATORS if m in present] or ['train']
    bad = [m for m in masks if m != 'train' and m not in present]
    if bad:
        raise SystemExit(f'bench.critic: {path}: no mask {bad}; its masks: {", ".join(present) or "none"} '
                         "(or 'train')")
    return masks


def mask_rows(agent, model, dataset, samples, flow_samples, seed):
    """The statistics of FIELDS after 'mask' on `dataset` (module docstring)."""
    from agents.fbc import euler_flow

    config = agent.config
    tp, discount = int(config.horizon_length), float(config.discount)
    rng = np.random.default_rng(seed)
    idxs = rng.integers(0, len(dataset), samples)
    batch = agent.prepare_batch(dataset.sample_sequence(samples, tp, int(config.obs_steps), discount, idxs))
    generator = torch.Generator(agent.device).manual_seed(seed)
    critic = agent.critic_modules(model)
    with torch.no_grad():
        critic_cond = critic['encoder'](batch['observations'])
        cond = model['encoder'](batch['observations'])
        q = lambda chunks: critic['critic'](critic_cond, chunks).mean(0).double().cpu().numpy()  # (B,)
        noise = lambda: agent.noise(batch['actions'].shape, generator)
        q_data = q(batch['actions'])
        flows = [euler_flow(model['actor'], cond, noise(), int(config.flow_steps)).clamp(-1, 1)
                 for _ in range(flow_samples)]
        q_flow = np.stack([q(chunk) for chunk in flows])  # (N, B)
        speed = np.stack([agent.normalizer.unnormalize('actions', chunk)[..., :3].norm(dim=-1).mean(-1)
                          .double().cpu().numpy() for chunk in flows])  # (N, B)
        q_onestep = q(agent.onestep_policy(model, cond, noise()))
    keep = batch['valid'][:, -1].cpu().numpy() > 0
    returns = dataset.returns_to_go(discount)[idxs][keep]
    adv = (q_data - q_flow.mean(0))[keep]
    corr = float(np.corrcoef(q_data[keep], returns)[0, 1]) if keep.sum() > 1 else float('nan')
    gain = (q_onestep - q_flow.mean(0))[keep]
    q_c, s_c = (q_flow - q_flow.mean(0))[:, keep], (speed - speed.mean(0))[:, keep]  # centred per observation
    corr_speed = (q_c * s_c).sum() / max(np.sqrt((q_c ** 2).sum() * (s_c ** 2).sum()), 1e-12)
    best_speed = speed[q_flow.argmax(0), np.arange(len(keep))][keep]
    return {'n': int(keep.sum()), 'q_data': q_data[keep].mean(), 'return_to_go': returns.mean(),
            'corr_q_return': corr, 'adv_data': adv.mean(), 'frac_adv_below_0': (adv < 0).mean(),
            'gain_onestep': gain.mean(), 'flow_q_std': q_flow.std(0)[keep].mean(), 'corr_q_speed': corr_speed,
            'speed_best_over_mean': best_speed.mean() / max(speed[:, keep].mean(), 1e-12)}


def critic_report(path, masks=None, samples=2000, flow_samples=8, seed=0) -> list:
    """Rows of FIELDS for the ACFQL checkpoint at `path`, one per mask."""
    import train_bc  # here: its flags stay undefined until this tool is used
    from agents import AGENTS
    from envs.robomimic_utils import get_dataset_path, load_datasets

    extra = train_bc.load_extra(path)
    agent = AGENTS[extra['config']['agent_name']].load(path, device='cpu')
    if not hasattr(agent, 'critic_modules'):
        raise SystemExit(f'bench.critic: {path!r} is a {agent.name} checkpoint, which has no critic; '
                         'it reads ACFQL (fql) checkpoints')
    flags = extra['flags']
    data_path = get_dataset_path(flags['env_name'], flags.get('dataset_path'))
    masks = resolve_masks(data_path, masks)
    model = agent.trainer.eval_model().eval()
    obs_keys = list(extra['shape_meta']['obs'])
    rows = []
    for mask in masks:
        dataset, _ = load_datasets(data_path, agent.config.obs_type, obs_keys=obs_keys,
                                   filter_key=None if mask == 'train' else mask, seed=int(flags['seed']))
        stats = mask_rows(agent, model, dataset, samples, flow_samples, seed)
        rows.append({'checkpoint': path, 'step': extra['trainer']['step'], 'mask': mask,
                     **{k: v if isinstance(v, int) else round(float(v), 4) for k, v in stats.items()}})
    return rows


def main(argv=None):
    """Print one JSON line per checkpoint and mask; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoints', nargs='+', help='ACFQL checkpoint files (or run directories)')
    parser.add_argument('--masks', default='', help="comma-separated masks of the file ('train' = all)")
    parser.add_argument('--samples', type=int, default=2000, help='steps drawn per mask')
    parser.add_argument('--flow-samples', type=int, default=8, help='BC-flow chunks per observation')
    parser.add_argument('--seed', type=int, default=0, help='draws the steps and the noise')
    parser.add_argument('--out', default='', help='also write the rows to this new csv file')
    args = parser.parse_args(argv)
    if args.samples < 2 or args.flow_samples < 1:
        parser.error(f'--samples must be >= 2 and --flow-samples >= 1, '
                     f'got {args.samples} and {args.flow_samples}')
    if args.out and os.path.exists(args.out):
        parser.error(f'--out {args.out!r} exists; give a new file')
    import train_bc

    paths = []
    for path in args.checkpoints:  # every checkpoint is found before any is read
        try:
            paths.append(train_bc.resolve_checkpoint(path))
        except train_bc.UserError:
            parser.error(f'{path!r} is neither a checkpoint file nor a run directory with '
                         'checkpoints/latest.pt')
    torch.set_num_threads(1)
    masks = [m for m in args.masks.split(',') if m]
    rows = []
    for path in paths:
        for row in critic_report(path, masks, args.samples, args.flow_samples, args.seed):
            print(json.dumps(row))
            rows.append(row)
    if args.out:
        with open(args.out, 'x', newline='') as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


if __name__ == '__main__':
    main()
