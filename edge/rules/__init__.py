"""Local rules: the gateway's judgement of every reading, and the alarms it raises.

* :mod:`edge.rules.judges`: one judge per rule kind and device, pure code over readings;
* :mod:`edge.rules.engine`: routes readings to judges, derived points, composites, state;
* :mod:`edge.rules.alarms`: the alarm lifecycle (raised, escalated, silenced, cleared);
* :mod:`edge.rules.state`: where the state lives between restarts.

Rules do no I/O: the gateway hands their transitions to the annunciator first (the buzzer)
and to the buffer second, so the judgement never waits on a disk or a network.
"""

from edge.rules.alarms import Alarm, AlarmBook
from edge.rules.engine import STATE_PREFIX, STATE_SCHEMA, ModelInfo, RuleEngine
from edge.rules.state import MemoryStateStore, StateStore, load_rule_state, save_rule_state
from edge.rules.types import SEVERITY_RANK, Severity, Transition, TransitionKind, worse

__all__ = [
    "SEVERITY_RANK",
    "STATE_PREFIX",
    "STATE_SCHEMA",
    "Alarm",
    "AlarmBook",
    "MemoryStateStore",
    "ModelInfo",
    "RuleEngine",
    "Severity",
    "StateStore",
    "Transition",
    "TransitionKind",
    "load_rule_state",
    "save_rule_state",
    "worse",
]
