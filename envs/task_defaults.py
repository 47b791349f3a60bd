"""Training recipes per task: the settings that matter for each robomimic task, in one place.

`train_bc.py` applies them only to what the user did not give: an experiment flag absent from the command
line, or an agent field that neither the command line (`--agent.x`, `--network_type`, ...) nor the agent
file (a field whose value differs from its agent's `get_config()`) sets. A per-agent entry that names a
`network_type` was tuned for that network: when the user picks another network, none of it applies. The
resolved values go into the run's `flags.json` (`task_defaults` lists what was applied).

    TASK_DEFAULTS[task][obs_type] = {             # obs_type 'low_dim' or 'image', as in the env name
        'flags': {experiment flag: value},         # step budget and evaluation interval
        'agent': {agent field: value},             # every agent
        'agents': {agent name: {field: value}},    # one agent (wins over 'agent')
    }

Image recipes are not measured yet: image env names get the train_bc.py defaults and the agent file's values.

Why these values (scripted data, state, 50 evaluation episodes; the README's results section has the runs):
- FBC with the MLP learns far faster at lr 1e-3 than at Diffusion Policy's 1e-4, which is a recipe for its
  20M-parameter U-Net on images. On scripted Can at 5k steps: lr 1e-4 0.18 (old data) / 0.24 (fixed
  expert), lr 1e-3 0.90, lr 1e-3 with action_steps 4 0.98.
- action_steps 4 (re-plan every 4 steps instead of 8) corrects the approach to the object more often.
- Square needs a longer budget. FBC, one seed, code d566a86, cosine over 40k steps: 0.30 / 0.50 / 0.68 / 0.64
  at 10k / 20k / 30k / 40k (the 10k recipe gave 0.04-0.06 before the quaternion features, 0.36 with them).
  Cosine over 60k steps with sample_temperature 0 (code 5727e91, 3 seeds, README "Square at 60k steps"):
  0.613 ± 0.058 / 0.840 ± 0.080 / 0.920 ± 0.060 at 20k / 40k / 60k. 60k steps with three evaluations take
  about 33-34 min on one core of our 2-core machine, beside one other process.
- FBC on Can and Square samples with sample_temperature 0 (the flow integrated from z = 0, one chunk per
  observation), not on Lift. The same checkpoints, 50 episodes each, temperature 1 -> 0: Square at 40k
  (3 seeds) 0.707 -> 0.787; mixed Can at 10k (3 seeds) 0.800 -> 0.987; scripted Can 1.00 -> 1.00 (1 seed);
  but mixed Lift 0.96 -> 0.68 (1 seed; 0.90 at 0.5). The README's "Sampling from z = 0" has the table.
- ACFQL on Can acts with its one-step policy at z = 0 too (sample_temperature 0; its own horizons, network and
  lr stay). The same checkpoints, temperature 1 -> 0, 10k steps: mixed Can 0.74 -> 1.00 and 0.74 -> 0.96
  (seeds 1, 2); careless Can (3 seeds) 0.513 -> 0.593 in the README's "ACFQL at z = 0 on Can". Not measured on
  Square, so not set there; on mixed Lift it changed nothing (1.00 -> 1.00, 1 seed).
"""

import copy

# FBC with its default MLP: the settings measured on scripted Can (see the module docstring).
_FBC_MLP = {'network_type': 'mlp', 'lr': 1e-3, 'action_steps': 4}

_STATE = {
    'flags': {'offline_steps': 10000, 'eval_interval': 5000},  # 10k steps: ~5 min of training on one core
    'agent': {},
    # MFBC / IMFBC: the same network and re-planning; their own lr default is 1e-3 already
    'agents': {'fbc': _FBC_MLP, 'mfbc': _FBC_MLP, 'imfbc': _FBC_MLP},
}

TASK_DEFAULTS = {task: {'low_dim': copy.deepcopy(_STATE)} for task in ('lift', 'can', 'square')}
TASK_DEFAULTS['square']['low_dim']['flags'] = {'offline_steps': 60000, 'eval_interval': 20000}
# Can and Square: FBC acts with the flow's chunk from z = 0 (see the module docstring); not Lift.
for _task in ('can', 'square'):
    TASK_DEFAULTS[_task]['low_dim']['agents']['fbc'] = {**_FBC_MLP, 'sample_temperature': 0.0}
# ACFQL on Can: its one-step policy from z = 0 (see the module docstring).
TASK_DEFAULTS['can']['low_dim']['agents']['fql'] = {'sample_temperature': 0.0}


def task_defaults(task: str, obs_type: str, agent_name: str) -> tuple[dict, dict]:
    """(experiment flag values, agent field values) of the recipe for `task`, its obs type and the agent."""
    recipe = TASK_DEFAULTS.get(task, {}).get(obs_type, {})
    fields = dict(recipe.get('agent', {}))
    fields.update(recipe.get('agents', {}).get(agent_name, {}))
    return copy.deepcopy(dict(recipe.get('flags', {}))), copy.deepcopy(fields)
