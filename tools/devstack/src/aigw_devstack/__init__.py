"""Local stack for `make run`, tests and benchmarks: nats-server plus every aigw service as processes."""

from .nats import NatsServer
from .procs import Process, free_port, port_open, wait_until

__all__ = ["NatsServer", "Process", "free_port", "port_open", "wait_until"]
