"""aigw-simulator: an OpenAI-compatible upstream SIMULATOR (not a model).

Deterministic answers, configurable latency and faults, and a record of what it received, for
demos without an API key, integration tests and benchmarks. Start it with `aigw-simulator` or
`python -m aigw_simulator`, or in-process with `create_app(SimConfig(...))` under any ASGI server.
"""

from aigw_simulator.app import SimulatorApp, create_app
from aigw_simulator.config import FAULTS, MODEL_ID, Knobs, SimConfig
from aigw_simulator.server import build_server, serve

__all__ = ["FAULTS", "MODEL_ID", "Knobs", "SimConfig", "SimulatorApp", "build_server", "create_app", "serve"]
