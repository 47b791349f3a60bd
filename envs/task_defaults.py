"""Training recipes per task: the settings that matter for each robomimic task, in one place.

`train_bc.py` applies them only to what the user did not give: an experiment flag absent from the command
line, or an agent field that neither the command line (`--agent.x`, `--network_type`, ...) nor the agent
file (a field whose value differs from its agent's `get_config()`) sets. The resolved values go into the
run's `flags.json` (`task_defaults` lists what was applied).

    TASK_DEFAULTS[task] = {
        'flags': {experiment flag: value},         # e.g. step budget and evaluation interval
        'agent': {agent field: value},             # every agent
        'agents': {agent name: {field: value}},    # one agent (wins over 'agent')
    }

The numbers behind each entry are in the README's results section.
"""

import copy

TASK_DEFAULTS = {
    'lift': {
        'flags': {'offline_steps': 20000, 'eval_interval': 10000},
        'agent': {},
        'agents': {},
    },
}


def task_defaults(task: str, agent_name: str) -> tuple[dict, dict]:
    """(experiment flag values, agent field values) of the recipe for `task` and `agent_name`."""
    recipe = TASK_DEFAULTS.get(task, {})
    fields = dict(recipe.get('agent', {}))
    fields.update(recipe.get('agents', {}).get(agent_name, {}))
    return copy.deepcopy(dict(recipe.get('flags', {}))), copy.deepcopy(fields)
