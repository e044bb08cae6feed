"""Hardware-in-the-loop scenarios: a YAML file names the requirement it proves, the site, the
simulated devices, a timeline of steps and what must happen; the runner plays it against the
simulated rig (or a real one) and reports. The format and the library: docs/hil.md."""

from hil.scenario.loader import ScenarioError, load_scenario, parse_scenario
from hil.scenario.model import Expectation, Scenario, Step
from hil.scenario.runner import ScenarioResult, run_scenario

__all__ = [
    "Expectation",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "Step",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]
