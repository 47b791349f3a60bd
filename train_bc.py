"""Train (and evaluate) a flow policy on a robomimic dataset.

    python train_bc.py              # FBC on scripted Lift (state); data generated on first use
    python train_bc.py --env_name=lift-scripted-image --agent=agents/fbc_image.py
    python train_bc.py --agent=agents/fql.py --agent.alpha=100
    python train_bc.py --env_name=can-mixed-low_dim --filter_key=better   # one mask's demos only
    python train_bc.py --resume=runs/<run_dir>           # continue exactly where a run stopped
    python train_bc.py --agent=agents/fql.py --offline_steps=10000 --online_steps=50000   # then online
    python train_bc.py --eval_only --checkpoint=runs/<run_dir>/checkpoints/best.pt
    python train_bc.py --eval_only --checkpoint=... --agent=agents/fql.py --agent.sample_policy=flow
    torchrun --nproc_per_node=2 train_bc.py ...            # one run over 2 processes (batch_size each)

Experiment flags live here; hyperparameters live in the agent config file (`--agent.*`). The trainer knows
no agent by name: every agent has `create / update / sample_actions / save / load`.
"""

import copy
import functools
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
import tqdm
from absl import app, flags
from ml_collections import config_flags

from envs import env_utils
from envs.evaluation import evaluate_episodes
from envs.online import (
    EpisodeCollector,
    ReplayFile,
    check_seed_ranges,
    chunk_noise_seed,
    chunk_sizes,
    collection_seed,
)
from envs.task_defaults import task_defaults
from utils import distributed, update_record
from utils.datasets import DEFAULT_DISCOUNT
from utils.logging import CsvLogger, WandbLogger, write_video
from utils.prefetch import BatchPrefetcher
from utils.threads import ThreadGovernor
from utils.torch_utils import cuda_memory_stats, pick_device
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

flags.DEFINE_integer('offline_steps', 20000, 'Gradient steps on the offline data.')
flags.DEFINE_integer('online_steps', 0, 'Environment steps of online fine-tuning after the offline steps '
                     '(0: none). The current policy collects episodes into <run_dir>/replay.hdf5 and '
                     'training continues on the offline plus the collected data.')
flags.DEFINE_integer('utd_ratio', 1, 'Online update-to-data ratio: gradient steps per environment step '
                     '(after each executed chunk of n env steps, utd_ratio * n gradient steps).')
flags.DEFINE_integer('collect_seed', 2_000_000, 'Online episode j resets with seed collect_seed + j; the '
                     'range [collect_seed, collect_seed + online_steps) must miss the evaluation seeds.')
flags.DEFINE_float('collect_temperature', 1.0, 'Online collection samples from the prior\'s noise times this '
                   '(1: the prior itself, as Q-chunking collects; 0: deterministic). Evaluation keeps '
                   '--agent.sample_temperature (a task recipe may set it to 0).')
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
                     'torch CPU threads of this process. Default: $OMP_NUM_THREADS when set, else fitted '
                     'to the load every 2 s (the cores other processes leave free, at least 1; '
                     'utils/threads.py, bench/threads.py).')
flags.DEFINE_integer('prefetch_batches', 1,
                     'Batches a background thread draws (and pins, on CUDA) ahead of the training step '
                     '(0: draw in the loop). Changes no number: checkpoints store the data RNG of the '
                     'batches trained on (utils/prefetch.py).')
flags.DEFINE_string('resume', None, 'Run directory (or checkpoint file) to continue exactly.')
flags.DEFINE_bool('eval_only', False, 'Only evaluate --checkpoint; no training.')
flags.DEFINE_string('checkpoint', None, 'Checkpoint file for --eval_only.')

# Experiment flags a resumed run may change; everything else comes from the checkpoint.
RESUME_OVERRIDABLE = ('offline_steps', 'log_interval', 'eval_interval', 'save_interval', 'eval_episodes',
                      'eval_max_steps', 'eval_workers', 'video_episodes', 'video_failures', 'wandb_mode',
                      'device', 'prefetch_batches')
EXPERIMENT_FLAGS = ('env_name', 'dataset_path', 'offline_steps', 'online_steps', 'utd_ratio', 'collect_seed',
                    'collect_temperature',
                    'log_interval', 'eval_interval',
                    'save_interval', 'eval_episodes', 'eval_max_steps', 'eval_workers', 'eval_seed',
                    'video_episodes', 'video_failures', 'seed',
                    'save_dir', 'run_group', 'wandb_project', 'wandb_mode', 'device', 'prefetch_batches',
                    'filter_key')


SHORTCUT_FLAGS = ('obs_type', 'network_type', 'obs_steps')  # --x is short for --agent.x
VIDEO_FPS = 20  # robomimic control frequency


class UserError(Exception):
    """A bad flag or input: reported as one clear line, exit code 2."""


@functools.cache
def git_version():
    """Code version: the git sha of this checkout, with '-dirty' when it has uncommitted changes. Read once,
    when main starts: every file of a run names the code this process loaded, not a later checkout."""
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
        total = total_gradient_steps(FLAGS.offline_steps, FLAGS.online_steps, FLAGS.utd_ratio)
        config['lr_decay_steps'] = resolve_decay_steps(config.lr_decay_steps, total)
    return config


def total_gradient_steps(offline_steps, online_steps, utd_ratio):
    """Gradient steps of the whole run: the offline ones plus utd_ratio per online env step."""
    return offline_steps + utd_ratio * online_steps


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
    """Owns the run: datasets, agent, loggers, checkpoints, evaluation.

    Under torchrun every rank builds a Run and trains (its own batches and noise, averaged gradients); rank 0
    alone makes the run directory, logs, evaluates and writes checkpoints (utils/distributed.py).
    """

    def __init__(self, run_flags, config, run_dir=None, resume_from=None, threads=None):
        """Load data and build (or load) the agent; a new run directory is made only once that worked.
        `threads` (a utils.threads.ThreadGovernor) re-fits torch's thread count between steps."""
        from agents import AGENTS  # imported here so that `--help` stays fast

        self.start_time = time.perf_counter()
        self.flags = run_flags
        self.config = config
        self.run_dir = run_dir
        self.threads = threads
        self.main = distributed.is_main()
        self.device = distributed.device_for_rank(run_flags['device'])
        torch.manual_seed(run_flags['seed'])
        random.seed(run_flags['seed'])

        online = run_flags['online_steps'] > 0
        with distributed.main_first():  # one process per node generates / caches the data, then the others
            data = env_utils.make_env_and_datasets(
                run_flags['env_name'], run_flags['dataset_path'], obs_type=config.obs_type,
                obs_keys=config.get('obs_keys'), seed=run_flags['seed'], build_envs=False,
                max_episode_steps=run_flags['eval_max_steps'], filter_key=run_flags.get('filter_key'),
                **({'storage': 'ram'} if online else {}))  # online episodes are appended in RAM
        _, _, self.train_ds, self.val_ds = data
        self.data_info = {  # the file and demos this run trains on (summary.json), before any online episode
            'file': str(self.train_ds.env_meta.get('source_file')), 'filter_key': run_flags.get('filter_key'),
            'train_demos': self.train_ds.num_episodes,
            'valid_demos': 0 if self.val_ds is None else self.val_ds.num_episodes,
        }
        if run_flags.get('filter_key'):
            print(f'--filter_key={run_flags["filter_key"]}: {self.data_info["train_demos"]} train / '
                  f'{self.data_info["valid_demos"]} valid demos', file=sys.stderr)
        self.shape_meta = self.train_ds.shape_meta
        self.env_info = {  # what evaluation needs to rebuild the env, stored in every checkpoint
            'env_name': run_flags['env_name'],
            'env_meta': self.train_ds.env_meta,  # env_args, render_quality, source_file
            'max_episode_steps': env_utils.default_max_steps(run_flags['env_name']),
        }
        if config.agent_name not in AGENTS:
            raise UserError(f'--agent: agent_name {config.agent_name!r} is not one of {sorted(AGENTS)}')
        if online and not self.train_ds.env_meta.get('env_args'):
            source = self.train_ds.env_meta['source_file']
            raise UserError(f'--online_steps={run_flags["online_steps"]}: {source} has no '
                            "data.attrs['env_args'], so there is no env to collect episodes in")
        agent_cls = AGENTS[config.agent_name]
        self.step = 0
        self.best_success = -1.0
        self.wandb_id = None
        # online progress: env steps (the current episode's included), committed episodes, their successes,
        # and the env steps of the episode being collected (0 at an episode boundary)
        self.online = {'env_steps': 0, 'episodes': 0, 'successes': 0, 'episode_steps': 0}
        self.total_steps = total_gradient_steps(run_flags['offline_steps'], run_flags['online_steps'],
                                                run_flags['utd_ratio'])
        self.exit_code = None
        if resume_from is None:
            stats = self.train_ds.normalizer_stats()
            chunks = (self.train_ds.action_chunks(int(config.horizon_length))
                      if config.noise_prior == 'chunk_cov' else None)  # the prior is fitted once, offline
            self.agent = agent_cls.create(self.shape_meta, config, normalizer_stats=stats,
                                          seed=run_flags['seed'], device=self.device, action_chunks=chunks)
        else:
            self.agent = agent_cls.load(resume_from, device=self.device)
            self._restore_trainer_state(self.agent.extra['trainer'])
        self._seed_rank(None if resume_from is None else self.agent.extra['trainer'])
        distributed.check_identical(self._synced_state(), 'the agents built on each rank')
        if os.environ.get(update_record.ENV_VAR):  # test hook (tests/test_distributed.py)
            update_record.record_updates(self.agent, os.environ[update_record.ENV_VAR], distributed.rank())
        # validation's own noise: it draws nothing from the agent's or the global RNGs
        self.val_generator = torch.Generator(self.agent.device).manual_seed(run_flags['seed'] + 2)
        if resume_from is not None and 'val_noise_rng' in self.agent.extra['trainer']:
            self.val_generator.set_state(self.agent.extra['trainer']['val_noise_rng'])
        # every rank's training batch stream (drawn ahead in a thread; checkpoints store its rng_state())
        self.batches = BatchPrefetcher(lambda: self.sample(self.train_ds), self.train_ds,
                                       depth=run_flags.get('prefetch_batches', 1),
                                       pin_memory=self.agent.device.type == 'cuda')
        self.saved_step = self.step  # gradient step of the newest latest.pt (resume: the one loaded)
        if not self.main:  # rank 0 alone writes the run directory, csv files and wandb
            self.run_dir = distributed.broadcast_object(None)
            return
        if run_dir is None:
            run_dir = self.run_dir = make_run_dir(run_flags, config)
        self.replay_path = os.path.join(run_dir, 'replay.hdf5')
        if resume_from is not None and self.online['episode_steps'] != 0:
            raise UserError(f'{resume_from} was written in the middle of an online episode (a best.pt), '
                            'which cannot be continued exactly; resume from the run directory (its '
                            f'latest.pt): --resume={run_dir}')
        if resume_from is not None and self.online['episodes'] > 0:
            self._load_replay(resume_from)
        distributed.broadcast_object(run_dir)
        self.train_csv = CsvLogger(os.path.join(run_dir, 'train.csv'))
        self.eval_csv = CsvLogger(os.path.join(run_dir, 'eval.csv'))
        self.episodes_csv = CsvLogger(os.path.join(run_dir, 'episodes.csv'), key=('step', 'episode'))
        self.online_csv = CsvLogger(os.path.join(run_dir, 'online.csv'), key=('episode',)) if online else None
        self.wandb = WandbLogger(run_flags['wandb_project'], run_flags['wandb_mode'], run_dir,
                                 config={**run_flags, 'agent': config.to_dict()},
                                 group=run_flags['run_group'],
                                 name=os.path.basename(run_dir), resume_id=self.wandb_id)
        self.wandb_id = self.wandb.id

    # ---- ranks -------------------------------------------------------------------------------------------
    def _rank_state(self):
        """This rank's own streams: its batch sampler, training noise and global RNGs."""
        return {'train_rng': self.batches.rng_state(), 'noise_rng': self.agent.rng.get_state(),
                'global_rng': get_rng_state()}

    def _seed_rank(self, trainer_state):
        """Give rank r > 0 its own streams: seeded from (seed, r) (`distributed.rank_seed`), or on resume
        restored from the checkpoint's `other_ranks`. Rank 0 keeps a one-process run's streams."""
        r = distributed.rank()
        if r == 0:
            return
        if trainer_state is not None:
            state = trainer_state['other_ranks'][r - 1]
            self.train_ds.set_rng_state(state['train_rng'])
            self.agent.rng.set_state(state['noise_rng'])
            set_rng_state(state['global_rng'])
            return
        seed = distributed.rank_seed(self.flags['seed'], r)
        self.train_ds.set_rng_state(np.random.default_rng(seed).bit_generator.state)
        self.agent.rng.manual_seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)

    def _synced_state(self):
        """What every rank must hold bit-identically: weights, optimizer, scheduler, EMA, target networks."""
        return {'trainer': self.agent.trainer.state_dict(), 'extra_state': self.agent.extra_state()}

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _trainer_state(self):
        """The run's state (the agent saves its own): step, best score, dataset and global RNGs."""
        return {
            'step': self.step,
            'best_success': self.best_success,
            'wandb_id': self.wandb_id,
            'train_rng': self.batches.rng_state(),  # = train_ds's RNG after the batches trained on
            'val_rng': None if self.val_ds is None else self.val_ds.rng_state(),
            'global_rng': get_rng_state(),  # torch CPU, CUDA and python
            'val_noise_rng': self.val_generator.get_state(),
            'online': dict(self.online),
        }

    def _restore_trainer_state(self, state):
        self.step = state['step']
        self.best_success = state['best_success']
        self.wandb_id = state['wandb_id']
        self.online.update(state.get('online', {}))  # absent before the online phase existed
        self.train_ds.set_rng_state(state['train_rng'])
        if self.val_ds is not None and state['val_rng'] is not None:
            self.val_ds.set_rng_state(state['val_rng'])
        if 'global_rng' in state:
            set_rng_state(state['global_rng'])
        else:  # checkpoints written before the run owned one global-RNG entry
            set_rng_state({'torch': state['torch_rng'], 'cuda': state['cuda_rng'] or [],
                           'python': state['python_rng']})

    def _load_replay(self, path):
        """Resume: the checkpoint's committed online episodes, read back from the replay file into the
        training data in collection order (episodes past them are replayed by `online_phase`)."""
        if not os.path.isfile(self.replay_path):
            raise UserError(f'{path} has {self.online["episodes"]} online episodes, but the replay file '
                            f'{self.replay_path} is missing')
        replay = ReplayFile.open(self.replay_path, self.shape_meta)
        if replay.num_episodes < self.online['episodes']:
            raise UserError(f'{self.replay_path} holds {replay.num_episodes} episodes, fewer than the '
                            f'{self.online["episodes"]} of {path}: it is not this run\'s replay')
        for j in range(self.online['episodes']):
            self.add_online_episode(replay.read(j))

    def add_online_episode(self, episode):
        """Append an online episode record (envs.online) to the training data."""
        self.batches.stop()  # the thread samples this dataset: rewind it to the batches trained on first
        self.train_ds.add_episode(episode['obs'], episode['actions'], episode['rewards'], episode['dones'])

    def save(self, name):
        """Write checkpoints/<name>.pt atomically; it carries everything needed to evaluate or resume.

        The agent writes its own state (config and shape_meta included); `extra` holds the run's. Under
        torchrun every rank calls it: rank 0 gathers the other ranks' streams into `other_ranks` (rank r at
        index r - 1), checks that every rank holds the same weights, and alone writes the file."""
        ranks = distributed.all_gather_object(self._rank_state())
        distributed.check_identical(self._synced_state(), f'weights / optimizer / EMA at step {self.step}')
        if not self.main:
            return None
        folder = os.path.join(self.run_dir, 'checkpoints')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'{name}.pt')
        extra = {
            'trainer': {**self._trainer_state(), 'other_ranks': ranks[1:]},
            'env': self.env_info,
            'flags': self.flags,
            'code_version': git_version(),
        }
        self.agent.save(path, extra=extra, overwrite=True)  # atomic: written to a temp file, then renamed
        if name == 'latest':
            self.saved_step = self.step
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
        self.eval_csv.log({'step': self.step, **self.env_step_column(), **stats})
        for e in episodes:
            self.episodes_csv.log({'step': self.step, **{k: v for k, v in e.items() if k != 'frames'}})
        logged = {**self.env_step_column(), **stats}
        self.wandb.log({f'eval/{k}': v for k, v in logged.items()}, step=self.step)
        paths = write_episode_videos(os.path.join(self.run_dir, 'videos'), f'step{self.step:08d}_', episodes)
        self.wandb.log_videos('eval/video', paths, step=self.step)
        tqdm.tqdm.write(f'step {self.step}: success_rate={stats["success_rate"]:.3f} '
                        f'[{stats["success_ci_low"]:.3f}, {stats["success_ci_high"]:.3f}] '
                        f'episode_length={stats["episode_length"]:.1f} ({stats["num_episodes"]} episodes)')
        return stats

    def env_step_column(self):
        """{'env_step': online env steps so far} in a run with an online phase, else {} (csv columns)."""
        return {'env_step': self.online['env_steps']} if self.flags['online_steps'] > 0 else {}

    def due(self, interval):
        """At the multiples of `interval` (> 0) gradient steps, and at the end of each phase."""
        return (interval > 0 and self.step % interval == 0) or self.step in (self.flags['offline_steps'],
                                                                            self.total_steps)

    def gradient_step(self):
        """One update on the training data, its train.csv row and an evaluation when due; False on a
        non-finite loss (`exit_code` 3, message printed)."""
        f = self.flags
        if self.threads is not None:
            self.threads.tick()
        info = scalars(self.agent.update(self.batches.next()))
        bad = {k: v for k, v in info.items() if not math.isfinite(v)}
        if distributed.any_rank(bool(bad)):  # every rank stops at the same step
            self.bar.close()
            if bad or self.main:
                ckpts = os.path.join(self.run_dir, 'checkpoints')
                print(f'error: non-finite loss at step {self.step + 1}: {bad or "on another rank"}. Stopped; '
                      f'the last good checkpoint (if any) is in {ckpts}', file=sys.stderr)
            self.exit_code = 3
            return False
        self.step += 1
        self.window_steps += 1
        self.bar.update(1)
        if self.step % 10 == 0 or self.step == 1:
            self.bar.set_postfix(loss=f'{first_loss(info):.4f}', **self.env_step_column(), refresh=False)
        if self.due(f['log_interval']):
            info = distributed.mean_scalars(info)  # the losses of the global batch
            if self.main:
                elapsed = time.perf_counter() - self.window_start
                row = {'step': self.step, **self.env_step_column(),
                       'steps_per_s': self.window_steps / max(elapsed, 1e-9),
                       'torch_threads': torch.get_num_threads(), **info, **self.validation(),
                       **cuda_memory_stats(self.agent.device)}
                self.train_csv.log(row)
                self.wandb.log(row, step=self.step)
            self.window_start, self.window_steps = time.perf_counter(), 0
        if f['eval_episodes'] > 0 and self.due(f['eval_interval']):
            self.last_eval = distributed.run_on_main(self.run_eval)  # the other ranks wait for it
            if self.last_eval['success_rate'] > self.best_success:
                self.best_success = self.last_eval['success_rate']
                self.save('best')
        return True

    def stopped(self, signum, where=''):
        """Close the run after a stop signal and print how to resume; returns the exit code."""
        self.bar.close()
        if self.main:
            self.wandb.finish()
            print(f'stopped by signal {signum} at step {self.step}{where}; checkpoints/latest.pt is at step '
                  f'{self.saved_step}. Resume with: {resume_command()} --resume={self.run_dir}',
                  file=sys.stderr)
        return 128 + signum

    def offline_phase(self, stop):
        """Gradient steps on the offline data up to --offline_steps; an exit code when stopped, else None."""
        f = self.flags
        while self.step < f['offline_steps']:
            if not self.gradient_step():
                return self.exit_code
            stopping = distributed.any_rank(stop.signum is not None)  # every rank stops at the same step
            if self.due(f['save_interval']) or stopping:
                self.save('latest')
            if stopping and self.step < self.total_steps:
                return self.stopped(int(stop.signum or signal.SIGTERM))  # a rank the signal has not reached
        return None

    def train(self):
        """Run the offline steps, then the online phase (--online_steps); returns the exit code.

        SIGINT / SIGTERM stop the loop after the current step (or evaluation): offline, `latest` is written;
        online, at an episode boundary `latest` is written, inside an episode the episode is dropped (resume
        recollects it, see `online_phase`). The resume command is printed; the exit code is 128 + signal.
        """
        self.bar = tqdm.tqdm(total=self.total_steps, initial=self.step, unit='step', dynamic_ncols=True,
                             mininterval=1.0, file=sys.stderr, disable=not self.main)
        self.window_start, self.window_steps = time.perf_counter(), 0
        self.last_eval = None
        with StopSignals() as stop, self.batches:
            code = self.offline_phase(stop)
            if code is None and self.flags['online_steps'] > 0:
                code = online_phase(self, stop)
        if code is not None:
            return code
        self.bar.close()
        if not self.main:
            return 0
        self.wandb.finish()
        best = f'{self.best_success:.3f}' if self.best_success >= 0 else 'n/a'
        wall = time.perf_counter() - self.start_time
        self.write_summary(self.last_eval, wall)
        print(f'done: step {self.step}, {wall:.0f} s since start, best success rate {best}; '
              f'run directory {self.run_dir}', file=sys.stderr)
        return 0

    def write_summary(self, last_eval, wall_s):
        """summary.json: the finished run's step, best and last success rate, wall time (this process)."""
        summary = {'step': self.step, 'offline_steps': self.flags['offline_steps'],
                   'best_success_rate': self.best_success if self.best_success >= 0 else None,
                   'last_eval': last_eval, 'wall_s_this_process': round(wall_s, 1),
                   'dataset': self.data_info, 'code_version': git_version()}
        if self.flags['online_steps'] > 0:
            o = self.online
            summary.update(online_steps=self.flags['online_steps'], utd_ratio=self.flags['utd_ratio'],
                           env_steps=o['env_steps'], online_episodes=o['episodes'],
                           online_success_rate=o['successes'] / max(o['episodes'], 1))
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


def collection_policy(agent, episode_seed, temperature):
    """The collecting policy of one online episode: the agent's `sample_actions` (its evaluation weights) at
    `temperature` (--collect_temperature), with the noise of the k-th chunk seeded by (episode seed, k), so
    no training RNG is drawn from."""
    calls = itertools.count()

    def policy(obs):  # obs: dict of (1, To, ...) numpy -> (1, Tp, A) numpy
        with torch.no_grad():
            chunk = agent.sample_actions(obs, seed=chunk_noise_seed(episode_seed, next(calls)),
                                         temperature=temperature)
        return chunk.detach().float().cpu().numpy()

    return policy


def online_phase(run, stop):
    """Offline-to-online fine-tuning after the offline steps; an exit code when stopped, else None.

    Online episode j resets with seed collect_seed + j and is collected by the current policy through the
    rollout wrapper, up to --online_steps env steps in all (the last episode is cut there, a truncation).
    After each executed chunk of n env steps come utd_ratio * n gradient steps on the offline data plus the
    episodes committed so far, so at every chunk boundary `step == offline_steps + utd_ratio * env_steps`.
    A finished episode is appended to <run_dir>/replay.hdf5 (committed), then to the training data, logged
    to online.csv, and `latest` is saved when save_interval gradient steps have passed since the last save.

    Resume is exact: a checkpoint is only written between episodes. The episodes the replay file holds past
    the checkpoint (collected before a kill) are not collected again: their updates are replayed, chunk by
    chunk, from their lengths (collection draws no training RNG, so the weights come out the same). An
    episode that was being collected at the kill is dropped and collected again with the same seed.
    """
    f = run.flags
    state = run.online
    utd, action_steps = f['utd_ratio'], int(run.config.action_steps)
    if os.path.isfile(run.replay_path):
        replay = ReplayFile.open(run.replay_path, run.shape_meta)
    else:
        replay = ReplayFile.create(run.replay_path, run.train_ds.env_meta, run.shape_meta)
    if run.saved_step != run.step:
        run.save('latest')  # the online phase starts from a checkpoint on disk

    def after_chunk(n):  # n env steps executed: their gradient steps; False to stop
        state['env_steps'] += n
        state['episode_steps'] += n
        for _ in range(utd * n):
            if not run.gradient_step():
                return False
        return stop.signum is None

    def commit(episode):  # an episode in the replay file joins the training data
        run.add_online_episode(episode)
        state['episodes'] += 1
        state['successes'] += int(episode['success'])
        state['episode_steps'] = 0
        row = {'episode': state['episodes'] - 1, 'step': run.step, 'env_step': state['env_steps'],
               'seed': episode['seed'], 'success': float(episode['success']), 'length': episode['length'],
               'return': episode['return'], 'end': episode['end']}
        run.online_csv.log(row)
        run.wandb.log({f'online/{k}': v for k, v in row.items() if k not in ('step', 'end')}, step=run.step)
        finished = state['env_steps'] >= f['online_steps']
        interval = f['save_interval']
        if finished or stop.signum is not None or (interval > 0 and run.step - run.saved_step >= interval):
            run.save('latest')

    def interrupted():
        if run.exit_code is not None:
            return run.exit_code
        return run.stopped(stop.signum, f' (env step {state["env_steps"]}, inside online episode '
                                        f'{state["episodes"]}, which resume runs again)')

    while state['episodes'] < replay.num_episodes:  # collected before a kill, after the checkpoint
        episode = replay.read(state['episodes'])
        expected = collection_seed(f['collect_seed'], state['episodes'])
        if episode['seed'] != expected:
            raise UserError(f'{run.replay_path}: episode {state["episodes"]} was reset with seed '
                            f'{episode["seed"]}, this run expects {expected}; it is not this run\'s replay')
        sizes = chunk_sizes(episode['length'], action_steps)
        for k, n in enumerate(sizes):
            if not after_chunk(n) and (run.exit_code is not None or k < len(sizes) - 1):
                return interrupted()  # a stop inside the episode: resume replays it again
        commit(episode)
        if stop.signum is not None:
            return run.stopped(stop.signum)

    max_steps = f['eval_max_steps'] or run.env_info['max_episode_steps']
    env_fn = env_utils.EnvFactory(run.env_info['env_meta'], run.shape_meta, max_steps)
    collector = EpisodeCollector(env_fn, run.config.obs_steps, action_steps, max_steps)
    try:
        while state['env_steps'] < f['online_steps']:
            if stop.signum is not None:
                return run.stopped(stop.signum)
            seed = collection_seed(f['collect_seed'], state['episodes'])
            episode = collector.run(collection_policy(run.agent, seed, f['collect_temperature']), seed,
                                    budget=f['online_steps'] - state['env_steps'], after_chunk=after_chunk)
            if episode is None or run.exit_code is not None:
                return interrupted()
            replay.append(episode, attrs={'env_step': state['env_steps'], 'step': run.step})
            commit(episode)
    finally:
        collector.close()
    return None


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


def resume_command():
    """The launch command of this run, for the resume hint (same world size: exact resume needs it)."""
    n = distributed.world_size()
    if n == 1:
        return 'python train_bc.py'
    per_node = int(os.environ.get('LOCAL_WORLD_SIZE', n))
    if per_node == n:
        return f'torchrun --nproc_per_node={n} train_bc.py'
    return f'torchrun --nnodes={n // per_node} --nproc_per_node={per_node} <node flags> train_bc.py'


def check_resume_world_size(run_flags, path):
    """Exact resume needs the world size the checkpoint was written with; UserError otherwise."""
    saved, now = int(run_flags.get('world_size', 1)), distributed.world_size()
    if saved != now:
        launch = 'python train_bc.py' if saved == 1 else f'torchrun with {saved} processes in all'
        raise UserError(f'--resume={path}: the run was trained over {saved} process(es) and this launch has '
                        f'{now}; each rank\'s batch stream and noise are restored, so resume with the same '
                        f'world size ({launch})')


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
    for name in RESUME_OVERRIDABLE + ('eval_seed', 'run_group'):
        if FLAGS[name].present:
            f[name] = getattr(FLAGS, name)
    agent = AGENTS[extra['config']['agent_name']].load(path, device=pick_device(f['device']))
    sampling = eval_overrides(agent)
    stats, episodes = run_evaluation(agent, agent.config, extra['shape_meta'], extra['env'], f)
    out = new_run_dir(FLAGS.save_dir, f['run_group'], 'eval_' + os.path.basename(os.path.dirname(
        os.path.dirname(os.path.abspath(path)))))
    step = extra['trainer']['step']
    CsvLogger(os.path.join(out, 'eval.csv')).log({'step': step, **stats})
    episodes_csv = CsvLogger(os.path.join(out, 'episodes.csv'), key=('step', 'episode'))
    for e in episodes:
        episodes_csv.log({'step': step, **{k: v for k, v in e.items() if k != 'frames'}})
    write_episode_videos(out, '', episodes)
    if sampling:
        with open(os.path.join(out, 'eval_overrides.json'), 'x') as fh:  # a new run dir: never overwrites
            json.dump({**sampling, 'code_version': git_version()}, fh, indent=2)
    print(json.dumps({'checkpoint': path, 'step': step, **sampling, **stats, 'eval_dir': out}))
    return 0


def eval_overrides(agent):
    """Apply the --agent.x fields given with --eval_only to the loaded agent and return them; only the
    agent's `eval_fields` (how a trained agent samples) may be given, anything else is a UserError."""
    given = dict(config_flags.get_override_values(FLAGS['agent']))
    bad = sorted(set(given) - set(agent.eval_fields))
    if bad:
        raise UserError(f'--eval_only with --agent.{bad[0]}: a trained {agent.name} checkpoint only takes '
                        f'the sampling fields {list(agent.eval_fields)} (training fixed the others)')
    for name, value in given.items():
        agent.config[name] = value
    agent.validate_config(agent.config)
    return given


# (flag, smallest allowed value, None allowed) of the integer experiment flags.
INT_FLAG_RULES = (('offline_steps', 0, False), ('online_steps', 0, False), ('utd_ratio', 1, False),
                  ('collect_seed', 0, False), ('log_interval', 0, False), ('eval_interval', 0, False),
                  ('save_interval', 0, False), ('eval_episodes', 0, False), ('eval_max_steps', 1, True),
                  ('eval_workers', 1, True), ('video_episodes', 0, False), ('video_failures', 0, False),
                  ('prefetch_batches', 0, True))


def check_run_flags(run_flags):
    """Every integer experiment flag in range, and the device valid; UserError names the flag and value."""
    for name, low, none_ok in INT_FLAG_RULES:
        value = run_flags.get(name)
        if value is None and none_ok:
            continue
        if value is None or value < low:
            allowed = f'an integer >= {low}' + (' (or unset)' if none_ok else '')
            raise UserError(f'--{name}={value}: expected {allowed}')
    temperature = run_flags['collect_temperature']
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
        raise UserError(f'--collect_temperature={temperature}: expected a float >= 0')
    if run_flags['offline_steps'] + run_flags['online_steps'] < 1:
        raise UserError(f'--offline_steps={run_flags["offline_steps"]} with --online_steps='
                        f'{run_flags["online_steps"]}: nothing to train; expected one of them >= 1')
    try:
        check_seed_ranges(run_flags['collect_seed'], run_flags['online_steps'], run_flags['eval_seed'],
                          run_flags['eval_episodes'])
    except ValueError as e:
        raise UserError(str(e)) from None
    try:
        distributed.device_for_rank(run_flags['device'])
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
    # The real agent is built later from the same seed and with the data's action chunks, so the warning
    # that a 'chunk_cov' noise prior got none does not apply to this check.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message="config.noise_prior='chunk_cov'", category=UserWarning)
        agent = AGENTS[config.agent_name].create(shape_meta, config, device='cpu')
    if run_flags['online_steps'] > 0:  # the agent must also be able to sample at the collection temperature
        collecting = copy.deepcopy(agent.config)
        collecting.sample_temperature = run_flags['collect_temperature']
        try:
            agent.validate_config(collecting)
        except ValueError as e:
            temperature = run_flags['collect_temperature']
            raise UserError(f'--collect_temperature={temperature}: the online phase samples at this '
                            f'temperature and the agent cannot ({e}); give --collect_temperature > 0 or '
                            'change the agent field it names') from None


def thread_governor(threads):
    """torch's CPU threads: `threads` when given, else $OMP_NUM_THREADS when set, else fitted to the load."""
    if threads is not None and threads < 1:
        raise UserError(f'--torch_threads={threads}: expected an integer >= 1 '
                        '(or no flag: fitted to the load)')
    if threads is None and os.environ.get('OMP_NUM_THREADS', '').isdigit():
        threads = max(1, int(os.environ['OMP_NUM_THREADS']))
    return ThreadGovernor(threads)


def online_flags_of_resumed_run(saved, agent_config):
    """A resumed run's flags with the online flags filled in (older checkpoints lack them; a run from before
    --collect_temperature collected at its agent's sample_temperature); a changed --online_steps,
    --utd_ratio, --collect_seed or --collect_temperature (or --offline_steps of a run with an online phase)
    is an error, since the LR schedule, the phase boundary and what is collected follow from them."""
    run_flags = {'online_steps': 0, 'utd_ratio': 1, 'collect_seed': FLAGS['collect_seed'].default, **saved}
    if 'collect_temperature' not in run_flags:  # written before the flag: collected at the agent's own
        run_flags['collect_temperature'] = float(agent_config.get('sample_temperature', 1.0))
    fixed = ['online_steps', 'utd_ratio', 'collect_seed', 'collect_temperature']
    if run_flags['online_steps'] > 0:
        fixed.append('offline_steps')
    for name in fixed:
        if FLAGS[name].present and getattr(FLAGS, name) != run_flags[name]:
            raise UserError(f'--{name}={getattr(FLAGS, name)}: a resumed run keeps its --{name}='
                            f'{run_flags[name]} (the LR schedule, the online phase and its seeds follow from '
                            'the flags it started with)')
    return run_flags


def main(argv):
    """Entry point: train, resume or evaluate."""
    if len(argv) > 1:
        raise UserError(f'unexpected arguments {argv[1:]} (flags look like --name=value)')
    git_version()  # the code this process runs (cached for flags.json, checkpoints and summary.json)
    world = distributed.init()  # torchrun: join its process group; plain python: one process
    distributed.check_distributed_flags(world, online_steps=FLAGS.online_steps, eval_only=FLAGS.eval_only)
    governor = thread_governor(FLAGS.torch_threads)
    if FLAGS.eval_only:
        return eval_only()
    if FLAGS.resume:
        path = resolve_checkpoint(FLAGS.resume)
        extra = load_extra(path)
        run_flags = online_flags_of_resumed_run(extra['flags'], extra['config'])
        for name in RESUME_OVERRIDABLE:
            if FLAGS[name].present:
                run_flags[name] = getattr(FLAGS, name)
        config = type(FLAGS.agent)(extra['config'])
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        check_run_flags(run_flags)
        check_resume_world_size(run_flags, path)
        if distributed.is_main():
            print(f'resuming {run_dir} from step {extra["trainer"]["step"]} ({path})', file=sys.stderr)
        trainer = Run(run_flags, config, run_dir, resume_from=path, threads=governor)
    else:
        flag_values, fields = task_recipe()
        applied = apply_task_flag_defaults(flag_values)
        config = build_config()
        applied.update(apply_task_field_defaults(config, fields))
        run_flags = {name: getattr(FLAGS, name) for name in EXPERIMENT_FLAGS}
        run_flags['task_defaults'] = applied
        run_flags['world_size'] = world  # processes (torchrun ranks); agent.batch_size is per process
        check_run_flags(run_flags)
        check_agent_config(config, run_flags)  # before any data is generated or loaded
        try:
            env_utils.check_filter_key(run_flags['env_name'], run_flags['dataset_path'],
                                       run_flags['filter_key'])
        except ValueError as e:
            raise UserError(f'--filter_key: {e}') from None
        trainer = Run(run_flags, config, threads=governor)
    return trainer.train()


def entry(argv):
    """absl entry: user errors become one clear line and exit code 2."""
    try:
        code = main(argv)
    except (UserError, ValueError, FileNotFoundError) as e:
        rank = '' if distributed.is_main() else f'rank {distributed.rank()}: '
        print(f'{rank}error: {e}', file=sys.stderr)
        code = 2
    finally:
        distributed.shutdown()
    sys.exit(code)


if __name__ == '__main__':
    app.run(entry)
