"""The rooms of the codebase and who may import whom (docs/ARCHITECTURE.md), checked on the source with ast.

    utils/   bottom layer: imports no other room
    envs/    robomimic files and robosuite; may import utils/
    agents/  the algorithms; may import utils/
    bench/   benchmark entry points; may import anything but tests/
    tests/, train_bc.py, test_image_training.py: may import anything

Every import counts, also those inside functions: a lazy import is still an edge.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ('utils', 'envs', 'agents', 'bench', 'tests')
ALLOWED = {
    'utils': set(),
    'envs': {'utils'},
    'agents': {'utils'},
    'bench': {'utils', 'envs', 'agents'},
    'tests': set(ROOMS),
}


def room_of(path: Path):
    """The room a file belongs to ('utils', ...), or None for top-level scripts."""
    first = path.relative_to(ROOT).parts[0]
    return first if first in ROOMS else None


def imported_rooms(source: str, filename: str = '<source>'):
    """(line, room) for every import of a project room in `source`."""
    tree = ast.parse(source, filename=filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split('.')[0]
            if top in ROOMS:
                yield node.lineno, top


def python_files():
    """Every tracked-looking .py file of the project (no caches, runs or virtual environments)."""
    skip = {'.git', '.venv', 'runs', 'wandb', '__pycache__'}
    return sorted(p for p in ROOT.rglob('*.py') if not skip & set(p.relative_to(ROOT).parts))


def test_imports_go_one_way():
    """No file imports a room that its own room may not import."""
    bad = []
    for path in python_files():
        room = room_of(path)
        if room is None:
            continue
        for line, target in imported_rooms(path.read_text(), str(path)):
            if target != room and target not in ALLOWED[room]:
                bad.append(f'{path.relative_to(ROOT)}:{line} ({room}/ imports {target}/)')
    assert not bad, 'forbidden imports:\n' + '\n'.join(bad)


def test_checker_sees_every_kind_of_import():
    """The checker finds lazy, dotted and aliased imports of a room, and ignores relative and other ones."""
    source = ('import os\nimport envs.robosuite_env as rs\nfrom . import sibling\n'
              'def f():\n    from agents import AGENTS\n    import utils\n')
    assert list(imported_rooms(source)) == [(2, 'envs'), (5, 'agents'), (6, 'utils')]


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py or a helper module (tests/helpers.py, agent_contract.py)."""
    bad = []
    for path in python_files():
        if room_of(path) != 'tests':
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            bad += [f'{path.relative_to(ROOT)}:{node.lineno} imports {n}' for n in names
                    if n.startswith('tests.test_')]
    assert not bad, 'test modules importing test modules:\n' + '\n'.join(bad)


def test_no_benchmark_module_in_the_library():
    """Benchmarks live in bench/ only."""
    strays = [str(p.relative_to(ROOT)) for p in python_files()
              if room_of(p) in ('utils', 'envs', 'agents') and p.stem.startswith('bench')]
    assert not strays, f'benchmark modules outside bench/: {strays}'


@pytest.mark.parametrize('module, names', [
    ('utils.network_factory', ['get_network_and_encoder', 'get_network_config', 'NETWORKS']),
    ('utils.encoders', ['MultiImageObsEncoder', 'IdentityEncoder']),
    ('utils.embeddings', ['SinusoidalEmbedding', 'get_timestep_embedding']),
    ('utils.networks.chiunet', ['ChiUNet']),
    ('utils.networks.chitransformer', ['ChiTransformer']),
    ('utils.datasets', ['Dataset']),
    ('envs.env_utils', ['make_env_and_datasets']),
    ('envs.robomimic_utils', ['load_datasets', 'parse_env_name', 'get_dataset_path']),
    ('agents.fbc', ['BCAgent', 'get_config']),
    ('agents', ['AGENTS']),
    ('agents.fbc_image', ['get_config']),
])
def test_public_names(module, names):
    """The public paths of the user's design import and hold their names."""
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f'{module} lacks {missing}'


RGB_RULE_HOME = ROOT / 'utils' / 'shape_meta.py'


def rgb_rule_uses(source: str, filename: str = '<source>'):
    """Lines restating the rgb rule: `.endswith('_image')`, `len('_image')`, `== 'rgb'` or 'low_dim'."""
    def strings(node):
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
            if name in ('endswith', 'len') and any('_image' in s for a in node.args for s in strings(a)):
                yield node.lineno
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in ('rgb', 'low_dim') for o in operands):
                yield node.lineno


def test_rgb_rule_lives_in_shape_meta():
    """Only utils/shape_meta.py says which keys are rgb; everyone else asks it (rgb_keys, is_rgb_key)."""
    bad = [f'{path.relative_to(ROOT)}:{line}' for path in python_files()
           if path not in (RGB_RULE_HOME, Path(__file__).resolve())
           for line in rgb_rule_uses(path.read_text(), str(path))]
    assert not bad, 'the rgb-key rule restated outside utils/shape_meta.py:\n' + '\n'.join(bad)


def test_rgb_rule_checker_sees_each_form():
    """The checker finds each way of restating the rule and leaves key names alone."""
    source = ("a = k.endswith('_image')\nb = k[:-len('_image')]\nc = m['type'] == 'rgb'\n"
              "d = 'low_dim' != t\ne = f'{cam}_image'\nf = {'type': 'rgb'}\n")
    assert sorted(rgb_rule_uses(source)) == [1, 2, 3, 4]
