"""Agent registry: a plain dict from name to agent class, keyed by each class's `name`.

Adding an agent: one file in agents/ (a `get_config()` whose `agent_name` is the class's `name`, and the
class) plus one entry below. `Agent.get_config()` / `Agent.config_file()` find the file from the class.
"""

from agents.fbc import BCAgent
from agents.fql import FQLAgent
from agents.imfbc import IMFBCAgent
from agents.mfbc import MFBCAgent

AGENTS = {cls.name: cls for cls in (
    BCAgent,
    MFBCAgent,
    IMFBCAgent,
    FQLAgent,
)}
