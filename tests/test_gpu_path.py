"""The GPU-path levers, checked on CPU: prefetch thread (exact resume), pinned batches, uint8 crops on the
device, channels_last, fused AdamW, torch.compile (FBC and MeanFlow's JVP), bf16 against fp32 for the JVP,
the runtime-field overrides of Agent.load, and bench/gpu_check.py --smoke."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from agents import AGENTS
from agents.mfbc import meanflow_target
from tests.helpers import make_obs, shape_meta, shrink
from utils.datasets import Dataset, Storage
from utils.encoders import MultiImageObsEncoder, random_crop, to_unit_range
from utils.network_factory import get_encoder, get_network_config
from utils.prefetch import BatchPrefetcher, to_cpu_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_dataset(seed=0, episodes=5, length=30):
    """A small state Dataset whose actions encode the row, so batches can be compared exactly."""
    rows = episodes * length
    obs = {'object': np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)}
    actions = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    storage = Storage(obs, actions, np.zeros(rows, np.float32), np.zeros(rows, np.float32))
    meta = {'obs': {'object': {'shape': [3], 'type': 'low_dim'}}, 'action': {'shape': [2]}}
    starts = np.arange(episodes) * length
    return Dataset(storage, starts, [length] * episodes, meta, {}, seed=seed)


def draw(ds):
    return ds.sample_sequence(4, 3, obs_steps=2)


def wait_until_full(prefetcher, timeout=10.0):
    """Block until the thread has drawn `depth` batches ahead (so its RNG is ahead of the consumer's)."""
    deadline = time.time() + timeout
    while prefetcher._queue.qsize() < prefetcher.depth:
        assert time.time() < deadline, 'prefetch thread did not fill its queue'
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------- prefetch thread
@pytest.mark.parametrize('depth', [0, 1, 3])
def test_prefetcher_stream_and_rng_state_match_a_plain_loop(depth):
    plain, ds = make_dataset(), make_dataset()
    with BatchPrefetcher(lambda: draw(ds), ds, depth=depth) as batches:
        for k in range(5):
            got, want = batches.next(), draw(plain)
            assert torch.equal(got['actions'], torch.from_numpy(want['actions'])), k
            assert got['observations']['object'].dtype == torch.float32
            if depth:
                wait_until_full(batches)
                assert ds.rng_state() != plain.rng_state()  # the thread really draws ahead
            assert batches.rng_state() == plain.rng_state(), k  # what a checkpoint stores
        saved = batches.rng_state()
    # stop() rewound the dataset: the stream continues exactly where consumption stopped
    assert ds.rng_state() == saved == plain.rng_state()
    with batches:
        assert torch.equal(batches.next()['actions'], torch.from_numpy(draw(plain)['actions']))


def test_prefetcher_restart_from_a_restored_rng_state():
    """A resumed run sets the dataset RNG from the checkpoint before the thread starts."""
    ds, ref = make_dataset(seed=1), make_dataset(seed=1)
    for _ in range(3):
        draw(ref)
    state = ref.rng_state()
    ds.set_rng_state(state)
    with BatchPrefetcher(lambda: draw(ds), ds, depth=2) as batches:
        assert batches.rng_state() == state
        assert torch.equal(batches.next()['actions'], torch.from_numpy(draw(ref)['actions']))


def test_prefetcher_raises_the_threads_error_in_the_consumer():
    ds = make_dataset()

    def broken():
        raise RuntimeError('bad sample')

    with BatchPrefetcher(broken, ds, depth=2) as batches, pytest.raises(RuntimeError, match='bad sample'):
        batches.next()
    assert not [t for t in threading.enumerate() if t.name == 'batch-prefetch']
    with pytest.raises(ValueError, match='depth'):
        BatchPrefetcher(broken, ds, depth=-1)


def test_to_cpu_tensors_keeps_uint8_and_makes_float32():
    out = to_cpu_tensors({'img': np.zeros((2, 3), np.uint8), 'a': np.zeros(2, np.float64),
                          'i': np.arange(3)})
    assert out['img'].dtype == torch.uint8 and out['a'].dtype == torch.float32
    assert out['i'].dtype == torch.int64 and not out['img'].is_pinned()


# ---------------------------------------------------------------------------------------- image encoder
def image_config(**overrides):
    config = shrink(get_network_config(), **{'encoder': 'impala', 'crop_shape': (16, 16), **overrides})
    config.shape_meta = shape_meta(image_hw=(20, 20))
    config.obs_steps, config.horizon_length = 2, 8
    return config


def test_random_crop_of_uint8_equals_crop_after_conversion():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(5)
    crop_first = to_unit_range(random_crop(images, (16, 16)))
    torch.manual_seed(5)
    convert_first = random_crop(to_unit_range(images), (16, 16))
    assert torch.equal(crop_first, convert_first)
    enc = get_encoder(image_config()).train()
    torch.manual_seed(5)
    x = enc.preprocess(images, 'agentview_image')
    assert x.dtype == torch.float32 and torch.equal(x, convert_first)
    assert isinstance(enc, MultiImageObsEncoder)
    with pytest.raises(TypeError, match='uint8'):
        enc.preprocess(images.float(), 'agentview_image')


@pytest.mark.parametrize('backbone', ['impala', 'resnet18'])
def test_channels_last_encoder_matches_the_default_layout(backbone):
    torch.manual_seed(0)
    plain = get_encoder(image_config(encoder=backbone)).eval()
    fast = get_encoder(image_config(encoder=backbone, channels_last=True)).eval()
    fast.load_state_dict(plain.state_dict())  # the same weights: keys and shapes are layout-free
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    obs = make_obs(plain.shape_meta, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(fast(obs), plain(obs), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- agents
def make_agent(name='fbc', meta=None, **fields):
    config = shrink(AGENTS[name].get_config(), warmup_steps=0, **fields)
    meta = meta or shape_meta()
    config.obs_steps, config.horizon_length, config.action_steps = 2, 8, 4
    stats = {'actions': {'min': -np.ones(7, np.float32), 'max': np.ones(7, np.float32)}}
    return AGENTS[name].create(meta, config, normalizer_stats=stats, seed=0)


def raw_batch(meta, batch=6, seed=0):
    rng = np.random.default_rng(seed)
    obs = {k: v.numpy() for k, v in make_obs(meta, batch, 2, seed).items()}
    return {'observations': obs, 'actions': rng.uniform(-1, 1, (batch, 8, 7)).astype(np.float32)}


def weights(agent):
    return {k: v.detach().clone() for k, v in agent.model.state_dict().items()}


def assert_close_dicts(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_runtime_fields_are_validated_by_name():
    bad = (('compile', 'yes'), ('use_bf16', 1), ('fused_adamw', 'auto'), ('channels_last', None))
    for field, value in bad:
        config = AGENTS['fbc'].get_config().to_dict()  # a plain dict: ConfigDict's own type check is bypassed
        config.update(obs_type='state', **{field: value})
        with pytest.raises(ValueError, match=f'config.{field}='):
            AGENTS['fbc'].create(shape_meta(), config)


def test_fused_adamw_matches_the_default_kernel_and_loads_both_ways(tmp_path):
    meta = shape_meta()
    plain, fused = make_agent(), make_agent(fused_adamw=True)
    assert fused.trainer.fused and not plain.trainer.fused  # None (the default) is off on CPU
    for seed in range(3):
        plain.update(raw_batch(meta, seed=seed))
        fused.update(raw_batch(meta, seed=seed))
    assert_close_dicts(weights(plain), weights(fused), atol=1e-6)
    fused.save(tmp_path / 'fused.pt')
    loaded = AGENTS['fbc'].load(tmp_path / 'fused.pt', overrides={'fused_adamw': False})
    assert not loaded.trainer.fused
    assert all(g['fused'] is None for g in loaded.trainer.optimizer.param_groups)
    assert_close_dicts(weights(loaded), weights(fused), atol=0)
    with pytest.raises(ValueError, match='not runtime fields'):
        AGENTS['fbc'].load(tmp_path / 'fused.pt', overrides={'lr': 1.0})


def test_checkpoint_without_the_runtime_fields_loads_with_their_defaults(tmp_path):
    agent = make_agent()
    agent.save(tmp_path / 'a.pt')
    payload = torch.load(tmp_path / 'a.pt', weights_only=False)
    for name in ('compile', 'fused_adamw', 'channels_last'):  # as written before these fields existed
        del payload['config'][name]
    torch.save(payload, tmp_path / 'old.pt')
    loaded = AGENTS['fbc'].load(tmp_path / 'old.pt')
    assert loaded.config.compile is False and loaded.config.fused_adamw is None
    assert_close_dicts(weights(loaded), weights(agent), atol=0)


@pytest.mark.parametrize('name', ['mfbc', 'imfbc'])
def test_bf16_autocast_runs_the_meanflow_jvp_in_fp32_and_stays_close_to_fp32(name):
    """Under bf16 autocast (CPU's here; bench/gpu_check.py repeats it on CUDA) the JVP itself runs in fp32
    (exactly the fp32 values for the same input), and the whole image loss, with the encoder in bf16,
    stays within bf16 tolerance of fp32. Without the fp32 JVP, ChiUNet's conv fails under autocast."""
    agent = make_agent(name, meta=shape_meta(image_hw=(20, 20)), network_type='chiunet', encoder='impala',
                       crop_shape=(16, 16))
    batch = agent.prepare_batch(raw_batch(agent.shape_meta, batch=16))
    net = agent.model['actor'].eval()
    cond = agent.model['encoder'].eval()(batch['observations'])
    s, t, x, v = agent.draw_points(batch['actions'])
    u_fn = lambda x_, s_, t_: net(x_, s_, t_, cond)[0]  # noqa: E731
    u32, tgt32 = meanflow_target(u_fn, x, s, t, v)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        u16, tgt16 = meanflow_target(u_fn, x, s, t, v)
        assert net(x, s, t, cond)[0].dtype == torch.bfloat16  # autocast is really on outside the JVP
    assert u16.dtype == tgt16.dtype == torch.float32
    assert torch.equal(u16, u32) and torch.equal(tgt16, tgt32)

    def loss_info():
        agent.rng.manual_seed(3)
        torch.manual_seed(3)
        return agent.total_loss(batch)[1]

    agent.model.train()
    full = loss_info()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        half = loss_info()
    for key in full:
        assert abs(float(half[key]) - float(full[key])) <= 2e-2 * abs(float(full[key])), \
            (key, float(half[key]), float(full[key]))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['fbc', 'mfbc'])
def test_compiled_agent_trains_samples_and_checkpoints_like_eager(name, tmp_path):
    """torch.compile (CPU inductor here): the same losses and weights as eager within float tolerance (MFBC:
    its JVP runs the network eagerly), no recompilation per step, and a compiled run's checkpoint loads
    eagerly (and back) with the same keys."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a graph cached by an earlier test (same encoder code) would not count below
    meta = shape_meta()
    eager, compiled = make_agent(name), make_agent(name, compile=True)
    counters.clear()
    for seed in range(4):
        a = eager.update(raw_batch(meta, seed=seed))
        b = compiled.update(raw_batch(meta, seed=seed))
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])), (seed, k, a[k], b[k])
        if seed == 1:
            frames_after_two = counters['frames']['ok']
    assert counters['frames']['ok'] == frames_after_two, 'recompiled after the second step'
    assert counters['stats']['unique_graphs'] > 0, 'nothing was compiled'
    assert_close_dicts(weights(eager), weights(compiled), atol=1e-5)
    obs = make_obs(meta, 3, 2, seed=9)
    torch.testing.assert_close(compiled.sample_actions(obs, seed=1), eager.sample_actions(obs, seed=1),
                               rtol=1e-4, atol=1e-4)
    compiled.save(tmp_path / 'c.pt')
    assert set(torch.load(tmp_path / 'c.pt', weights_only=False)['trainer']['model']) == set(weights(eager))
    as_eager = AGENTS[name].load(tmp_path / 'c.pt', overrides={'compile': False})
    assert as_eager.config.compile is False
    assert_close_dicts(weights(as_eager), weights(compiled), atol=0)
    eager.save(tmp_path / 'e.pt')
    as_compiled = AGENTS[name].load(tmp_path / 'e.pt', overrides={'compile': True})
    torch.testing.assert_close(as_compiled.sample_actions(obs, seed=1), eager.sample_actions(obs, seed=1),
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------- train_bc.py
def run_train(args, save_dir):
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--save_dir={save_dir}',
           '--wandb_mode=disabled', *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [os.path.join(save_dir, 'default', d) for d in os.listdir(os.path.join(save_dir, 'default'))]
    return run_dir


@pytest.mark.slow
def test_prefetched_run_resumes_exactly(tmp_path):
    """40 steps in one go without prefetching == 20 steps with a 3-deep prefetch thread, then a resume to 40
    (also prefetched): the checkpoint stores the data RNG of the batches trained on, not the thread's."""
    from envs.synthetic import write_robomimic_file
    from utils.training import load_checkpoint

    data = write_robomimic_file(tmp_path / 'state.hdf5', lengths=[40] * 6, cameras=())
    common = ['--env_name=lift-scripted-low_dim', f'--dataset_path={data}', '--eval_episodes=0',
              '--log_interval=10', '--save_interval=0', '--agent.batch_size=8',
              '--agent.lr_schedule=constant',
              '--agent.mlp_hidden_dims=(32,32)', '--agent.emb_dim=8', '--seed=2']
    full = run_train([*common, '--offline_steps=40', '--prefetch_batches=0'], tmp_path / 'full')
    part = run_train([*common, '--offline_steps=20', '--prefetch_batches=3'], tmp_path / 'part')
    cmd = [sys.executable, os.path.join(ROOT, 'train_bc.py'), f'--resume={part}', '--offline_steps=40',
           '--wandb_mode=disabled']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(os.path.join(full, 'checkpoints', 'latest.pt'))
    b = load_checkpoint(os.path.join(part, 'checkpoints', 'latest.pt'))
    assert b['extra']['trainer']['step'] == 40
    assert a['extra']['trainer']['train_rng'] == b['extra']['trainer']['train_rng']
    for key, value in a['trainer']['model'].items():
        assert torch.equal(value, b['trainer']['model'][key]), key


# ---------------------------------------------------------------------------------------- bench/gpu_check.py
@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    """`python -m bench.gpu_check --smoke`: every section on CPU at tiny sizes, a JSON summary written."""
    out = tmp_path / 'out'
    # the compiled runs are left out (a cold CPU compile takes minutes here); the agent test above
    # covers compile, and the real check runs them
    cmd = [sys.executable, '-m', 'bench.gpu_check', '--smoke', '--skip=compiled', f'--out={out}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    summary = json.loads((out / 'gpu_check.json').read_text())
    runs = {r['name']: r for r in summary['train_runs']}
    assert set(runs) == {'fp32 eager', 'bf16 eager', 'torchrun 1 proc'}
    for name, r in runs.items():
        assert r['rc'] == 0 and r['steps_per_s'] > 0, (name, r)
    lat = summary['latency']
    assert {r['agent'] for r in lat} == {'fbc', 'mfbc'} and all(r['ms'] > 0 for r in lat)
    assert summary['meanflow']['bf16_rel_diff'] and 'compiled_jvp_s' in summary['meanflow_compile']


@pytest.mark.slow
def test_gpu_check_profiles_the_runs_it_is_asked_for(tmp_path):
    """`--runs` keeps the named train runs; `--profile` writes the eager run's cProfile top functions."""
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'bench.gpu_check', '--smoke', '--skip=latency,meanflow', '--runs=fp32 eager',
           '--profile', f'--out={out}']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    summary = json.loads((out / 'gpu_check.json').read_text())
    assert [r['name'] for r in summary['train_runs']] == ['fp32 eager']
    assert summary['train_runs'][0]['rc'] == 0
    text = (out / 'profile_fp32_eager.txt').read_text()
    assert 'cumulative' in text and 'train_bc.py' in text


def test_gpu_check_rejects_an_unknown_run_name():
    proc = subprocess.run([sys.executable, '-m', 'bench.gpu_check', '--smoke', '--runs=fp16 eager'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--runs=fp16 eager: unknown ['fp16 eager']" in proc.stderr
