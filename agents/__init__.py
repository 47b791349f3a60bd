"""Agent registry: a plain dict from name to agent class."""

from agents.fbc import BCAgent
from agents.fql import FQLAgent
from agents.imfbc import IMFBCAgent
from agents.mfbc import MFBCAgent

AGENTS = {
    'fbc': BCAgent,
    'mfbc': MFBCAgent,
    'imfbc': IMFBCAgent,
    'fql': FQLAgent,
}
