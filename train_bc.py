"""Train (and evaluate) a flow policy on a robomimic dataset.

    python train_bc.py              # FBC on scripted Lift (state); data generated on first use
    python train_bc.py --env_name=lift-scripted-image --agent=agents/fbc_image.py
    python train_bc.py --agent=agents/fql.py --agent.alpha=100
    python train_bc.py --env_name=can-mixed-low_dim --filter_key=better   # one mask's demos only
    python train_bc.py --resume=runs/<run_dir>           # continue exactly where a run stopped
    python train_bc.py --eval_only --checkpoint=runs/<run_dir>/checkpoints/best.pt

Experiment flags live here; hyperparameters live in the agent config file (`--agent.*`). The trainer knows
no agent by name: every agent has `create / update / sample_actions / save / load`.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import torch
import tqdm
from absl import app, flags
from ml_collections import config_flags

from envs import env_utils
from envs.evaluation import evaluate_episodes
from envs.task_defaults import task_defaults
from utils.datasets import DEFAULT_DISCOUNT
from utils.logging import CsvLogger, WandbLogger, write_video
from utils.torch_utils import pick_device
from utils.training import get_rng_state, load_checkpoint, resolve_decay_steps, set_rng_state

FLAGS = flags.FLAGS

flags.DEFINE_string('env_name', 'lift-scripted-low_dim',
                    'Env / dataset name: {task}-{ph|mh|mg|scripted|mixed}-{low_dim|image}.')
flags.DEFINE_string('dataset_path', None, 'hdf5 file to use instead of searching $ROBOMIMIC_DATA_DIR.')
flags.DEFINE_string('filter_key', None, "Train on one mask's demos only (robomimic's name), e.g. 'better' "
                    "of a mixed file; validation: mask/<key>_valid if present, else the mask's valid demos.")
config_flags.DEFINE_config_file('agent', 'agents/fbc.py', 'Agent config file (fields: --agent.x=...).',
                                lock_config=False)
flags.DEFINE_enum('obs_type', None, ['state', 'image'],
                  'Shortcut for --agent.obs_type (default: from the data; contradicting it is an error).')
flags.DEFINE_string('network_type', None, 'Shortcut for --agent.network_type (mlp, chiunet, chitransformer).')
flags.DEFINE_integer('obs_steps', None, 'Shortcut for --agent.obs_steps (To).')

flags.DEFINE_integer('offline_steps', 20000, 'Number of gradient steps.')
flags.DEFINE_integer('log_interval', 500, 'Steps between train.csv rows (with a validation loss).')
flags.DEFINE_integer('eval_interval', 10000, 'Steps between evaluations (0: only at the end).')
flags.DEFINE_integer('save_interval', 5000, 'Steps between latest-checkpoint saves (0: only at the end).')
flags.DEFINE_integer('eval_episodes', 50, 'Evaluation episodes (0: no evaluation).')
flags.DEFINE_integer('eval_max_steps', None, 'Step limit per evaluation episode (default: per task).')
flags.DEFINE_integer('eval_workers', None, 'Evaluation worker processes (default: min(episodes, CPU cores)).')
flags.DEFINE_integer('eval_seed', 1_000_000, 'Episode k of every evaluation resets with seed eval_seed + k.')
flags.DEFINE_integer('video_episodes', 0, 'Evaluation episodes recorded as mp4 (the first ones).')
flags.DEFINE_integer('video_failures', 0, 'Failed evaluation episodes recorded as mp4 (the first to finish; '
                     'every episode is rendered while recording, so evaluation is slower).')

flags.DEFINE_integer('seed', 0, 'Seed for the agent, the dataset sampler and torch.')
flags.DEFINE_string('save_dir', 'runs', 'Parent directory of run directories.')
flags.DEFINE_string('run_group', 'default', 'Run group (a sub-directory of save_dir and the wandb group).')
flags.DEFINE_string('wandb_project', 'acfql_pytorch', 'wandb project.')
flags.DEFINE_enum('wandb_mode', 'offline', ['online', 'offline', 'disabled'], 'wandb mode.')
flags.DEFINE_string('device', 'auto', "torch device: 'auto' (cuda when present), 'cpu', 'cuda', 'cuda:N'.")
flags.DEFINE_integer('torch_threads', None,
                     'torch CPU threads of this process (default: $OMP_NUM_THREADS when set, else 1: with a '
                     'thread per core, each small op waits for a core another job uses; bench/threads.py).')
flags.DEFINE_string('resume', None, 'Run directory (or checkpoint file) to continue exactly.')
flags.DEFINE_bool('eval_only', False, 'Only evaluate --checkpoint; no training.')
flags.DEFINE_string('checkpoint', None, 'Checkpoint file for --eval_only.')

# Experiment flags a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = ('offline_steps', 'log_interval', 'eval_interval', 'save_interval', 'eval_episodes',
                      'eval_max_steps', 'eval_workers', 'video_episodes', 'video_failures', 'wandb_mode',
                      'device')
EXPERIMENT_FLAGS = ('env_name', 'dataset_path', 'offline_steps', 'log_interval', 'eval_interval',
                    'save_interval', 'eval_episodes', 'eval_max_steps', 'eval_workers', 'eval_seed',
                    'video_episodes', 'video_failures', 'seed',
                    'save_dir', 'run_group', 'wandb_project', 'wandb_mode', 'device',
                    'filter_key')


SHORTCUT_FLAGS = ('obs_type', 'network_type', 'obs_steps')  # --x is short for --agent.x
VIDEO_FPS = 20  # robomimic control frequency


class UserError(Exception):
    """A bad flag or input: reported as one clear line, exit code 2."""


def git_version():
    """Code version: the git sha of this checkout, with '-dirty' when it has uncommitted changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ('-dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def new_run_dir(save_dir, run_group, name):
    """Create a fresh run directory; an existing one is never reused."""
    parent = os.path.join(save_dir, run_group)
    os.makedirs(parent, exist_ok=True)
    base = os.path.join(parent, f'{name}_{time.strftime("%Y%m%d-%H%M%S")}')
    path, k = base, 0
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            k += 1
            path = f'{base}_{k}'


def make_run_dir(run_flags, config):
    """A new run directory holding flags.json (experiment flags, agent config, code version)."""
    f = run_flags
    data = f['env_name'] + (f'_{f["filter_key"]}' if f.get('filter_key') else '')
    name = f'{data}_{config.agent_name}_{config.get("network_type", "net")}_s{f["seed"]}'
    run_dir = new_run_dir(f['save_dir'], f['run_group'], name)
    with open(os.path.join(run_dir, 'flags.json'), 'w') as fh:
        json.dump({**f, 'agent': config.to_dict(), 'code_version': git_version()}, fh, indent=2, default=str)
    print(f'run directory: {run_dir}', file=sys.stderr)
    return run_dir


def build_config():
    """The agent config with the shortcut flags applied; `obs_type` follows the data (one rule:
    `env_utils.resolve_obs_type`), and a config value or flag that contradicts it is an error."""
    try:
        config = FLAGS.agent
        config.get('agent_name')  # config_flags reports a bad file on first use
    except OSError as e:
        raise UserError(f'--agent={FLAGS["agent"].config_filename}: cannot load the agent config: {e}') from e
    for name in SHORTCUT_FLAGS:
        value = getattr(FLAGS, name)
        if value is not None:
            config[name] = value
    for field in ('agent_name', 'obs_type', 'obs_steps', 'horizon_length', 'action_steps', 'batch_size'):
        if field not in config:
            raise UserError(f'--agent={FLAGS["agent"].config_filename}: config has no field {field!r}')
    try:
        obs_keys = config.get('obs_keys')
        config['obs_type'] = env_utils.resolve_obs_type(FLAGS.env_name, config.obs_type, obs_keys)
    except ValueError as e:
        raise UserError(f'--agent.obs_type / --obs_type: {e}') from None
    if 'lr_decay_steps' in config:  # -1: decay over the whole run (utils.training.resolve_decay_steps)
        config['lr_decay_steps'] = resolve_decay_steps(config.lr_decay_steps, FLAGS.offline_steps)
    return config


def task_recipe():
    """(flag values, agent field values) of `envs.task_defaults` for --env_name and the agent file."""
    parsed = env_utils.parse_env_name(FLAGS.env_name)
    try:
        agent_name = FLAGS.agent.get('agent_name')
    except OSError:  # a bad --agent file: build_config reports it
        return {}, {}
    return task_defaults(parsed.task, parsed.obs_type, agent_name)


def apply_task_flag_defaults(flag_values):
    """Set the experiment flags of the task recipe that are not on the command line; returns those set."""
    applied = {}
    for name, value in flag_values.items():
        if not FLAGS[name].present:
            setattr(FLAGS, name, value)
            applied[name] = value
    return applied


def apply_task_field_defaults(config, fields):
    """Set the recipe's agent fields that the user did not give (in place); returns those set.

    Given: a field set by `--agent.x` or a shortcut flag, or one the agent file sets to a value other than
    its agent's `get_config()` (a preset states what differs, and that wins over the task's recipe). A recipe
    that names a `network_type` was tuned for that network: with another network given, none of it applies.
    """
    from agents import AGENTS

    if not fields or config.agent_name not in AGENTS:
        return {}
    base = AGENTS[config.agent_name].get_config()
    given = set(config_flags.get_override_values(FLAGS['agent']))
    given |= {name for name in SHORTCUT_FLAGS if getattr(FLAGS, name) is not None}
    given |= {k for k in base if k in config and config[k] != base[k]}
    recipe_net = fields.get('network_type')
    if recipe_net is not None and 'network_type' in given and config.network_type != recipe_net:
        print(f'note: the task recipe {fields} is tuned for network_type={recipe_net!r}; with '
              f'network_type={config.network_type!r} none of it is applied', file=sys.stderr)
        return {}
    applied = {}
    for name, value in fields.items():
        if name not in given:
            config[name] = value
            applied[f'agent.{name}'] = value
    return applied


def scalars(info):
    """Plain floats from an info dict of numbers / 0-d tensors."""
    return {k: float(v) for k, v in info.items()}


def first_loss(info):
    """The value shown in the progress bar: 'loss' or the first '*loss' key."""
    for k, v in info.items():
        if k == 'loss' or k.endswith('loss'):
            return v
    return next(iter(info.values()), float('nan'))


class Run:
    """Owns the run: datasets, agent, loggers, checkpoints, evaluation."""

    def __init__(self, run_flags, config, run_dir=None, resume_from=None):
        """Load data and build (or load) the agent; a new run directory is made only once that worked."""
        from agents import AGENTS  # imported here so that `--help` stays fast

        self.start_time = time.perf_counter()
        self.flags = run_flags
        self.config = config
        self.run_dir = run_dir
        self.device = pick_device(run_flags['device'])
        torch.manual_seed(run_flags['seed'])
        random.seed(run_flags['seed'])

        data = env_utils.make_env_and_datasets(
            run_flags['env_name'], run_flags['dataset_path'], obs_type=config.obs_type,
            obs_keys=config.get('obs_keys'), seed=run_flags['seed'], build_envs=False,
            max_episode_steps=run_flags['eval_max_steps'], filter_key=run_flags.get('filter_key'))
        _, _, self.train_ds, self.val_ds = data
        if run_flags.get('filter_key'):
            print(f'--filter_key={run_flags["filter_key"]}: {self.train_ds.num_episodes} train / '
                  f'{0 if self.val_ds is None else self.val_ds.num_episodes} valid demos', file=sys.stderr)
        self.shape_meta = self.train_ds.shape_meta
        self.env_info = {  # what evaluation needs to rebuild the env, stored in every checkpoint
            'env_name': run_flags['env_name'],
            'env_meta': self.train_ds.env_meta,  # env_args, render_quality, source_file
            'max_episode_steps': env_utils.default_max_steps(run_flags['env_name']),
        }
        if config.agent_name not in AGENTS:
            raise UserError(f'--agent: agent_name {config.agent_name!r} is not one of {sorted(AGENTS)}')
        agent_cls = AGENTS[config.agent_name]
        self.step = 0
        self.best_success = -1.0
        self.wandb_id = None
        if resume_from is None:
            stats = self.train_ds.normalizer_stats()
            self.agent = agent_cls.create(self.shape_meta, config, normalizer_stats=stats,
                                          seed=run_flags['seed'], device=self.device)
        else:
            self.agent = agent_cls.load(resume_from, device=self.device)
            self._restore_trainer_state(self.agent.extra['trainer'])
        # validation's own noise: it draws nothing from the agent's or the global RNGs
        self.val_generator = torch.Generator(self.agent.device).manual_seed(run_flags['seed'] + 2)
        if resume_from is not None and 'val_noise_rng' in self.agent.extra['trainer']:
            self.val_generator.set_state(self.agent.extra['trainer']['val_noise_rng'])
        if run_dir is None:
            run_dir = self.run_dir = make_run_dir(run_flags, config)
        self.train_csv = CsvLogger(os.path.join(run_dir, 'train.csv'))
        self.eval_csv = CsvLogger(os.path.join(run_dir, 'eval.csv'))
        self.episodes_csv = CsvLogger(os.path.join(run_dir, 'episodes.csv'), key=('step', 'episode'))
        self.wandb = WandbLogger(run_flags['wandb_project'], run_flags['wandb_mode'], run_dir,
                                 config={**run_flags, 'agent': config.to_dict()},
                                 group=run_flags['run_group'],
                                 name=os.path.basename(run_dir), resume_id=self.wandb_id)
        self.wandb_id = self.wandb.id

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _trainer_state(self):
        """The run's state (the agent saves its own): step, best score, dataset and global RNGs."""
        return {
            'step': self.step,
            'best_success': self.best_success,
            'wandb_id': self.wandb_id,
            'train_rng': self.train_ds.rng_state(),
            'val_rng': None if self.val_ds is None else self.val_ds.rng_state(),
            'global_rng': get_rng_state(),  # torch CPU, CUDA and python
            'val_noise_rng': self.val_generator.get_state(),
        }

    def _restore_trainer_state(self, state):
        self.step = state['step']
        self.best_success = state['best_success']
        self.wandb_id = state['wandb_id']
        self.train_ds.set_rng_state(state['train_rng'])
        if self.val_ds is not None and state['val_rng'] is not None:
            self.val_ds.set_rng_state(state['val_rng'])
        if 'global_rng' in state:
            set_rng_state(state['global_rng'])
        else:  # checkpoints written before the run owned one global-RNG entry
            set_rng_state({'torch': state['torch_rng'], 'cuda': state['cuda_rng'] or [],
                           'python': state['python_rng']})

    def save(self, name):
        """Write checkpoints/<name>.pt atomically; it carries everything needed to evaluate or resume.

        The agent writes its own state (config and shape_meta included); `extra` holds the run's."""
        folder = os.path.join(self.run_dir, 'checkpoints')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'{name}.pt')
        extra = {
            'trainer': self._trainer_state(),
            'env': self.env_info,
            'flags': self.flags,
            'code_version': git_version(),
        }
        self.agent.save(path, extra=extra, overwrite=True)  # atomic: written to a temp file, then renamed
        return path

    # ---- loop --------------------------------------------------------------------------------------------
    def validation(self):
        """Losses on one batch of the valid split (no update)."""
        if self.val_ds is None or len(self.val_ds) == 0:
            return {}
        info = self.agent.validation_losses(self.sample(self.val_ds), self.val_generator)
        return {f'val/{k}': v for k, v in scalars(info).items()}

    def sample(self, dataset):
        c = self.config
        return dataset.sample_sequence(c.batch_size, c.horizon_length, obs_steps=c.obs_steps,
                                       discount=c.get('discount', DEFAULT_DISCOUNT))

    def run_eval(self):
        """Evaluate the agent (EMA weights, eval mode); log eval.csv, episodes.csv, wandb and videos."""
        f = self.flags
        stats, episodes = run_evaluation(self.agent, self.config, self.shape_meta, self.env_info, f)
        self.eval_csv.log({'step': self.step, **stats})
        for e in episodes:
            self.episodes_csv.log({'step': self.step, **{k: v for k, v in e.items() if k != 'frames'}})
        self.wandb.log({f'eval/{k}': v for k, v in stats.items()}, step=self.step)
        paths = write_episode_videos(os.path.join(self.run_dir, 'videos'), f'step{self.step:08d}_', episodes)
        self.wandb.log_videos('eval/video', paths, step=self.step)
        tqdm.tqdm.write(f'step {self.step}: success_rate={stats["success_rate"]:.3f} '
                        f'[{stats["success_ci_low"]:.3f}, {stats["success_ci_high"]:.3f}] '
                        f'episode_length={stats["episode_length"]:.1f} ({stats["num_episodes"]} episodes)')
        return stats

    def train(self):
        """Run the training loop until `offline_steps`; returns the exit code.

        SIGINT / SIGTERM stop the loop after the current step (or evaluation): `latest` is written and the
        resume command printed; the exit code is 128 + the signal number.
        """
        f = self.flags
        total = f['offline_steps']
        due = lambda interval: (interval > 0 and self.step % interval == 0) or self.step == total  # noqa: E731
        bar = tqdm.tqdm(total=total, initial=self.step, unit='step', dynamic_ncols=True, mininterval=1.0,
                        file=sys.stderr)
        window_start, window_steps = time.perf_counter(), 0
        last_eval = None
        with StopSignals() as stop:
            while self.step < total:
                info = scalars(self.agent.update(self.sample(self.train_ds)))
                bad = {k: v for k, v in info.items() if not math.isfinite(v)}
                if bad:
                    bar.close()
                    ckpts = os.path.join(self.run_dir, 'checkpoints')
                    print(f'error: non-finite loss at step {self.step + 1}: {bad}. Stopped; the last good '
                          f'checkpoint (if any) is in {ckpts}', file=sys.stderr)
                    return 3
                self.step += 1
                window_steps += 1
                bar.update(1)
                if self.step % 10 == 0 or self.step == 1:
                    bar.set_postfix(loss=f'{first_loss(info):.4f}', refresh=False)
                if due(f['log_interval']):
                    elapsed = time.perf_counter() - window_start
                    row = {'step': self.step, 'steps_per_s': window_steps / max(elapsed, 1e-9), **info,
                           **self.validation()}
                    self.train_csv.log(row)
                    self.wandb.log(row, step=self.step)
                    window_start, window_steps = time.perf_counter(), 0
                if f['eval_episodes'] > 0 and due(f['eval_interval']):
                    last_eval = self.run_eval()
                    if last_eval['success_rate'] > self.best_success:
                        self.best_success = last_eval['success_rate']
                        self.save('best')
                if due(f['save_interval']) or stop.signum is not None:
                    self.save('latest')
                if stop.signum is not None and self.step < total:
                    bar.close()
                    self.wandb.finish()
                    print(f'stopped by signal {stop.signum} at step {self.step}; checkpoints/latest.pt '
                          'written. '
                          f'Resume with: python train_bc.py --resume={self.run_dir}', file=sys.stderr)
                    return 128 + stop.signum
        bar.close()
        self.wandb.finish()
        best = f'{self.best_success:.3f}' if self.best_success >= 0 else 'n/a'
        wall = time.perf_counter() - self.start_time
        self.write_summary(last_eval, wall)
        print(f'done: step {self.step}, {wall:.0f} s since start, best success rate {best}; '
              f'run directory {self.run_dir}', file=sys.stderr)
        return 0

    def write_summary(self, last_eval, wall_s):
        """summary.json: the finished run's step, best and last success rate, wall time (this process)."""
        summary = {'step': self.step, 'offline_steps': self.flags['offline_steps'],
                   'best_success_rate': self.best_success if self.best_success >= 0 else None,
                   'last_eval': last_eval, 'wall_s_this_process': round(wall_s, 1),
                   'code_version': git_version()}
        with open(os.path.join(self.run_dir, 'summary.json'), 'w') as fh:
            json.dump(summary, fh, indent=2)


class StopSignals:
    """Context manager: SIGINT / SIGTERM set `signum` instead of killing the process (restored on exit)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print(f'\nsignal {signum}: stopping after the current step (a second signal stops at once)',
              file=sys.stderr)

    def __enter__(self):
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def run_evaluation(agent, config, shape_meta, env_info, f):
    """Evaluate `agent` in the env described by `env_info` with the flags in dict `f`: (stats, episodes)."""
    max_steps = f['eval_max_steps'] or env_info['max_episode_steps']
    episodes = f['eval_episodes']
    workers = f['eval_workers'] or min(episodes, os.cpu_count() or 1)
    video_failures = f.get('video_failures', 0)  # absent from checkpoints written before the flag
    env_fn = env_utils.EnvFactory(env_info['env_meta'], shape_meta, max_steps,
                                  enable_render=f['video_episodes'] > 0 or video_failures > 0)
    calls = iter(range(1 << 62))

    def policy(obs):  # obs: dict of (B, To, ...) numpy -> (B, Tp, A) numpy
        with torch.no_grad():
            chunk = agent.sample_actions(obs, seed=f['eval_seed'] + next(calls))
        return chunk.detach().float().cpu().numpy()

    return evaluate_episodes(policy, env_fn, episodes, obs_steps=config.obs_steps,
                             action_steps=config.action_steps, max_steps=max_steps, seed=f['eval_seed'],
                             num_workers=workers, video_episodes=f['video_episodes'],
                             video_failures=video_failures)


def write_episode_videos(folder, prefix, episodes):
    """mp4 files <folder>/<prefix>ep<k>[_fail].mp4 for the episodes that carry frames; returns the paths."""
    paths = []
    for e in episodes:
        if e['frames'] is not None:
            os.makedirs(folder, exist_ok=True)
            name = f'{prefix}ep{e["episode"]}{"" if e["success"] else "_fail"}.mp4'
            paths.append(write_video(os.path.join(folder, name), e['frames'], fps=VIDEO_FPS))
    return paths


def load_extra(path):
    """The run's metadata stored in a checkpoint file, with the agent's config and shape_meta added."""
    if not os.path.isfile(path):
        raise UserError(f'checkpoint {path!r} does not exist')
    ckpt = load_checkpoint(path)
    extra = ckpt.get('extra') if isinstance(ckpt, dict) else None
    if not isinstance(extra, dict) or 'trainer' not in extra:
        raise UserError(f'{path!r} is not a train_bc.py checkpoint (no trainer metadata)')
    # config and shape_meta are the agent's (older checkpoints stored a second copy in extra)
    return {**extra, 'config': ckpt['config'], 'shape_meta': ckpt['shape_meta']}


def resolve_checkpoint(path):
    """A checkpoint file, or a run directory -> its checkpoints/latest.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, 'checkpoints', 'latest.pt')
    if not os.path.isfile(path):
        raise UserError(f'--resume / --checkpoint: no checkpoint at {path!r}')
    return path


def eval_only():
    """Evaluate --checkpoint with the settings stored in it (flags on the command line override)."""
    from agents import AGENTS

    if not FLAGS.checkpoint:
        raise UserError('--eval_only needs --checkpoint=<file or run dir>')
    path = resolve_checkpoint(FLAGS.checkpoint)
    extra = load_extra(path)
    f = dict(extra['flags'])
    for name in RESUME_OVERRIDABLE + ('eval_seed',):
        if FLAGS[name].present:
            f[name] = getattr(FLAGS, name)
    config = type(FLAGS.agent)(extra['config'])
    agent = AGENTS[config.agent_name].load(path, device=pick_device(f['device']))
    stats, episodes = run_evaluation(agent, config, extra['shape_meta'], extra['env'], f)
    out = new_run_dir(FLAGS.save_dir, f['run_group'], 'eval_' + os.path.basename(os.path.dirname(
        os.path.dirname(os.path.abspath(path)))))
    step = extra['trainer']['step']
    CsvLogger(os.path.join(out, 'eval.csv')).log({'step': step, **stats})
    episodes_csv = CsvLogger(os.path.join(out, 'episodes.csv'), key=('step', 'episode'))
    for e in episodes:
        episodes_csv.log({'step': step, **{k: v for k, v in e.items() if k != 'frames'}})
    write_episode_videos(out, '', episodes)
    print(json.dumps({'checkpoint': path, 'step': step, **stats, 'eval_dir': out}))
    return 0


# (flag, smallest allowed value, None allowed) of the integer experiment flags.
INT_FLAG_RULES = (('offline_steps', 1, False), ('log_interval', 0, False), ('eval_interval', 0, False),
                  ('save_interval', 0, False), ('eval_episodes', 0, False), ('eval_max_steps', 1, True),
                  ('eval_workers', 1, True), ('video_episodes', 0, False), ('video_failures', 0, False))


def check_run_flags(run_flags):
    """Every integer experiment flag in range, and the device valid; UserError names the flag and value."""
    for name, low, none_ok in INT_FLAG_RULES:
        value = run_flags.get(name)
        if value is None and none_ok:
            continue
        if value is None or value < low:
            allowed = f'an integer >= {low}' + (' (or unset)' if none_ok else '')
            raise UserError(f'--{name}={value}: expected {allowed}')
    try:
        pick_device(run_flags['device'])
    except (ValueError, RuntimeError) as e:
        raise UserError(f'--device={run_flags["device"]}: {e}') from None


def check_agent_config(config, run_flags):
    """Build the agent once on the data's `shape_meta` (the file's header, or the generator's layout when the
    file is generated on first use), so a bad agent field or network fails before any data is touched."""
    from agents import AGENTS

    if config.agent_name not in AGENTS:
        raise UserError(f'--agent: agent_name {config.agent_name!r} is not one of {sorted(AGENTS)}')
    shape_meta = env_utils.preview_shape_meta(run_flags['env_name'], run_flags['dataset_path'],
                                              config.obs_type, config.get('obs_keys'))
    with torch.random.fork_rng(devices=[]):  # the real agent is built later from the same seed
        AGENTS[config.agent_name].create(shape_meta, config, device='cpu')


def set_torch_threads(threads):
    """torch's CPU thread count: `threads`, else $OMP_NUM_THREADS if set, else 1; returns it."""
    if threads is not None and threads < 1:
        raise UserError(f'--torch_threads={threads}: expected an integer >= 1')
    if threads is None:
        threads = int(os.environ['OMP_NUM_THREADS']) if os.environ.get('OMP_NUM_THREADS', '').isdigit() else 1
    torch.set_num_threads(threads)
    return threads


def main(argv):
    """Entry point: train, resume or evaluate."""
    if len(argv) > 1:
        raise UserError(f'unexpected arguments {argv[1:]} (flags look like --name=value)')
    set_torch_threads(FLAGS.torch_threads)
    if FLAGS.eval_only:
        return eval_only()
    if FLAGS.resume:
        path = resolve_checkpoint(FLAGS.resume)
        extra = load_extra(path)
        run_flags = dict(extra['flags'])
        for name in RESUME_OVERRIDABLE:
            if FLAGS[name].present:
                run_flags[name] = getattr(FLAGS, name)
        config = type(FLAGS.agent)(extra['config'])
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        check_run_flags(run_flags)
        print(f'resuming {run_dir} from step {extra["trainer"]["step"]} ({path})', file=sys.stderr)
        trainer = Run(run_flags, config, run_dir, resume_from=path)
    else:
        flag_values, fields = task_recipe()
        applied = apply_task_flag_defaults(flag_values)
        config = build_config()
        applied.update(apply_task_field_defaults(config, fields))
        run_flags = {name: getattr(FLAGS, name) for name in EXPERIMENT_FLAGS}
        run_flags['task_defaults'] = applied
        check_run_flags(run_flags)
        check_agent_config(config, run_flags)  # before any data is generated or loaded
        try:
            env_utils.check_filter_key(run_flags['env_name'], run_flags['dataset_path'],
                                       run_flags['filter_key'])
        except ValueError as e:
            raise UserError(f'--filter_key: {e}') from None
        trainer = Run(run_flags, config)
    return trainer.train()


def entry(argv):
    """absl entry: user errors become one clear line and exit code 2."""
    try:
        code = main(argv)
    except (UserError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == '__main__':
    app.run(entry)
