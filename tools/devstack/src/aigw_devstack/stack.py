"""The whole system as local processes: nats-server, the simulator and every service.

`make run`, the integration tests and the benchmarks all start the system through `Stack`, so what
a newcomer runs is what the tests prove. Each process logs to `<state>/logs/<name>.log`.

NATS runs with authentication (`aigw_runtime.natsauth`): each service connects as its own user with
its own `AIGW_NATS_URL`, and the config store is seeded as `admin`; `nats_url(user)` gives tests a
user's URL, `bus_violations()` what nats-server refused.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import nats

from aigw_contracts import ApiKey, ConfigSnapshot, Gateway, Prices, Tenant, Upstream
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import hash_secret, new_secret
from aigw_runtime import natsauth
from aigw_runtime.configstore import ConfigWriter
from aigw_runtime.secretbox import new_key

from .nats import NatsServer
from .procs import Process, free_port

HOST = "127.0.0.1"
SIM_UPSTREAM = "@sim/sim-model"
# The simulator is priced like gpt-5-mini so the demo shows real-looking, exact amounts.
SIM_PRICES = Prices(input=Decimal("2.5E-7"), output=Decimal("0.000002"), cached_input=Decimal("2.5E-8"))


# The bus user each service's console script connects as (`aigw_runtime.natsauth`).
_SCRIPT_USERS = {
    "aigw-edge": natsauth.EDGE,
    "aigw-router": natsauth.ROUTER,
    "aigw-worker": natsauth.WORKER,
    "aigw-retrieval": natsauth.RETRIEVAL,
    "aigw-metering": natsauth.METERING,
}


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _log_says_ready(proc: Process) -> bool:
    return '"msg": "ready"' in proc.output()  # this run's lines only: a restart appends to the log


@dataclass
class Demo:
    """What `make run` creates: a tenant, a private key and a gateway named `demo`."""

    tenant: str
    key: str
    gateway_id: str
    gateway_slug: str
    upstream: str
    operator_key: str


@dataclass
class Stack:
    state_dir: Path
    edge_port: int | None = None
    openai_api_key: str | None = None  # with it, the demo gateway uses OpenAI; without, the simulator
    workers: int = 1
    with_metering: bool = True
    cpu_services: str | None = None  # e.g. "0": pin NATS and every service to that core (benchmarks)
    cpu_simulator: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra AIGW_* settings for every service
    quiet: bool = False  # benchmarks: no access log
    routers: int = 1
    # Edge replicas: the first serves `edge_port` (`base_url`); each other one its own port
    # (`edge_ports`), as replicas behind a load balancer would.
    edges: int = 1
    # Called after the config file is written and before any service starts (tests add gateways).
    start_hooks: list[Callable[[Stack], None]] = field(default_factory=list)

    nats: NatsServer | None = None
    procs: dict[str, Process] = field(default_factory=dict)
    # Each NATS service's health port (GET /healthz, /readyz, /metrics), by process name.
    health_ports: dict[str, int] = field(default_factory=dict)
    sim_port: int = 0
    demo: Demo | None = None
    edge_ports: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ paths and URLs
    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.edge_port}/v1"

    def base_urls(self) -> list[str]:
        """Every edge replica's API base URL, the first one's (`base_url`) first."""
        return [f"http://{HOST}:{port}/v1" for port in self.edge_ports]

    @property
    def sim_url(self) -> str:
        return f"http://{HOST}:{self.sim_port}"

    def metrics_url(self, name: str) -> str:
        """Where process `name` serves its Prometheus metrics (the edge: on its HTTP port)."""
        if name == "edge":
            return f"http://{HOST}:{self.edge_port}/metrics"
        return f"http://{HOST}:{self.health_ports[name]}/metrics"

    def _pin(self, cpus: str | None, argv: Sequence[str]) -> list[str]:
        return ["taskset", "-c", cpus, *argv] if cpus else list(argv)

    def nats_url(self, user: str) -> str:
        """The NATS URL of `user` (`aigw_runtime.natsauth`): the bus runs with authentication."""
        assert self.nats is not None
        return self.nats.url_for(user)

    def bus_violations(self) -> list[str]:
        """What nats-server refused so far (logged permission violations and failed logins): a
        service doing something its bus user may not shows up here (`natsauth.PERMISSIONS`)."""
        try:
            text = (self.state_dir / "logs" / "nats-server.log").read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if "Violation" in line or "authentication error" in line]

    def _service_env(self, user: str) -> dict[str, str]:
        env = {
            "AIGW_NATS_URL": self.nats_url(user),
            "AIGW_KEY_PEPPER": self._pepper(),
            "AIGW_SECRETS_KEY": self._state_secret("secrets-key", new_key),
            "AIGW_METERING_DSN": f"chdb://{self.state_dir / 'usage.chdb'}",
            **self.env,
        }
        if self.openai_api_key:
            env["OPENAI_API_KEY"] = self.openai_api_key
        return env

    def _pepper(self) -> str:
        return self._state_secret("pepper", lambda: secrets.token_urlsafe(32))

    def _state_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret made once per state folder (so keys made by an earlier `make run` keep working)."""
        path = self.state_dir / name
        if not path.exists():
            path.write_text(make())
            path.chmod(0o600)
        return path.read_text().strip()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Stack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.edge_port = self.edge_port or free_port()
        try:
            self.nats = NatsServer(self.state_dir, host=HOST, cpus=self.cpu_services, auth=True).start()
            if not self.openai_api_key:
                self.start_simulator()
            self.demo = self.write_config()
            for hook in self.start_hooks:
                hook(self)
            self.seed_store()
            for i in range(self.routers):
                self.start_service(f"router-{i}", ["aigw-router"])
            for i in range(self.workers):
                self.start_service(f"worker-{i}", ["aigw-worker"])
            if self.with_metering:
                self.start_service("metering", ["aigw-metering"], timeout=60)
            # One process owns the embedded knowledge store (a directory under the state folder).
            self.start_service(
                "retrieval",
                ["aigw-retrieval"],
                timeout=60,
                AIGW_KNOWLEDGE_PATH=str(self.state_dir / "knowledge"),
            )
            for i in range(self.edges):
                self.start_edge(i)
        except BaseException:
            self.stop()
            raise
        return self

    def start_simulator(self) -> Process:
        self.sim_port = self.sim_port or free_port()
        argv = self._pin(
            self.cpu_simulator, [_bin("aigw-simulator"), "--host", HOST, "--port", str(self.sim_port)]
        )
        proc = Process("simulator", argv, self.state_dir / "logs" / "simulator.log").start()
        self.procs["simulator"] = proc
        proc.wait_ready(lambda: httpx.get(f"{self.sim_url}/healthz", timeout=1).status_code == 200)
        return proc

    def start_service(
        self, name: str, argv: Sequence[str], timeout: float = 30.0, *, user: str | None = None, **env: str
    ) -> Process:
        """Start a service process, and wait for its ready line. It connects to NATS as `user`,
        by default the bus user of the console script it runs (`aigw-router` → `router`, …)."""
        user = user or _SCRIPT_USERS[argv[0]]
        port = self.health_ports.setdefault(name, free_port())
        env = {
            ("AIGW_METERING_HEALTH_PORT" if user == natsauth.METERING else "AIGW_HEALTH_PORT"): str(port),
            **env,
        }
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.unlink(missing_ok=True)
        argv = self._pin(self.cpu_services, [_bin(argv[0]), *argv[1:]])
        proc = Process(name, argv, log_path, env={**self._service_env(user), **env}).start()
        self.procs[name] = proc
        proc.wait_ready(lambda: _log_says_ready(proc), timeout)
        return proc

    def start_edge(self, index: int = 0) -> Process:
        """Start edge replica `index` (0: `edge`, on `edge_port`; others: `edge-<i>`, own port)."""
        name = "edge" if index == 0 else f"edge-{index}"
        port = self.edge_port if index == 0 else free_port()
        assert port is not None
        if index >= len(self.edge_ports):
            self.edge_ports.append(port)
        env = {"AIGW_PORT": str(port), "AIGW_HOST": HOST}
        if self.quiet:
            env["AIGW_ACCESS_LOG"] = "false"
        log_path = self.state_dir / "logs" / f"{name}.log"
        argv = self._pin(self.cpu_services, [_bin("aigw-edge")])
        proc = Process(
            name, argv, log_path, env={**self._service_env(_SCRIPT_USERS["aigw-edge"]), **env}
        ).start()
        self.procs[name] = proc
        proc.wait_ready(lambda: httpx.get(f"http://{HOST}:{port}/readyz", timeout=1).status_code == 200)
        if index:
            return proc
        # Beside demo-key: the `aigw` CLI reads both from .aigw/, so it finds this edge on any port.
        (self.state_dir / "gateway-url").write_text(self.base_url + "\n")
        return proc

    def stop_service(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def stop(self) -> None:
        """Stop in reverse order of start: the edge first, so clients see a clean refusal."""
        for name in reversed(list(self.procs)):
            self.stop_service(name)
        if self.nats is not None:
            self.nats.stop()

    # ------------------------------------------------------------------ one process at a time
    def processes(self) -> dict[str, Process]:
        """Every child by name, nats-server included: what `aigw-dev run` supervises."""
        nats_proc = self.nats.process if self.nats is not None else None
        return {**({"nats-server": nats_proc} if nats_proc is not None else {}), **self.procs}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Kill one process as a crash would and wait until it is gone; its exit status."""
        return self.processes()[name].kill(sig)

    def restart(self, name: str, wait: bool = True) -> Process:
        """Start one process again as it was started (stopping it first if it still runs); with
        `wait`, once it is ready. nats-server keeps its port and JetStream directory."""
        if name == "nats-server" and self.nats is not None:
            self.nats.stop()
            self.nats.start()
            return self.processes()[name]
        return self.procs[name].restart(wait)

    # ------------------------------------------------------------------ configuration
    def write_config(self) -> Demo:
        """Create (or reuse) the demo tenant, key and gateway, and write the config file services read."""
        existing = ConfigSnapshot()
        if self.config_path.exists():
            existing = ConfigSnapshot.model_validate_json(self.config_path.read_bytes())
        pepper = self._pepper()
        secret = self._state_secret("demo-key", new_secret)
        operator = self._state_secret("operator-key", new_secret)
        gateway_id = existing.gateways[0].id if existing.gateways else uuid7()
        upstream_id = "@openai/gpt-5-mini" if self.openai_api_key else SIM_UPSTREAM
        upstreams = []
        if not self.openai_api_key:
            upstreams.append(
                self.sim_upstream(
                    "sim-model",
                    description="aigw's OpenAI-compatible SIMULATOR (not a model), for demos and tests",
                )
            )
        gateway = Gateway(
            id=gateway_id,
            name="demo",
            tenant="demo",
            upstream=upstream_id,
            instructions="You are a concise, helpful assistant.",
            parameters={"temperature": 0.7},
            description="Created by make run",
        )
        snapshot = ConfigSnapshot(
            tenants=[Tenant(id="demo", name="Demo tenant"), Tenant(id="operator", name="Operator")],
            keys=[
                ApiKey(
                    id="demo-key",
                    tenant="demo",
                    hash=hash_secret(secret, pepper),
                    name="make run",
                    admin=True,
                ),
                ApiKey(
                    id="operator-key",
                    tenant="operator",
                    hash=hash_secret(operator, pepper),
                    name="make run (operator)",
                    admin=True,
                    operator=True,
                ),
            ],
            upstreams=upstreams,
            gateways=[gateway],
        )
        merged = self._merge(existing, snapshot)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(merged.model_dump_json(indent=2))
        os.replace(tmp, self.config_path)
        return Demo(
            tenant="demo",
            key=secret,
            gateway_id=gateway.id,
            gateway_slug=gateway.slug,
            upstream=upstream_id,
            operator_key=operator,
        )

    @staticmethod
    def _merge(old: ConfigSnapshot, new: ConfigSnapshot) -> ConfigSnapshot:
        """New entries replace old ones with the same id; the rest of the old file is kept."""
        out = {}
        for part in ("tenants", "keys", "upstreams", "gateways"):
            items = {item.id: item for item in getattr(old, part)}
            items.update({item.id: item for item in getattr(new, part)})
            out[part] = list(items.values())
        return ConfigSnapshot.model_validate(out)

    def sim_upstream(self, model: str, description: str = "") -> Upstream:
        """The simulator as catalog upstream `@sim/<model>` (its `fault_model` directive faults
        only the requests for one such model: a flaky or hanging upstream beside a healthy one)."""
        return Upstream(
            id=f"@sim/{model}",
            provider="sim",
            model=model,
            base_url=f"{self.sim_url}/v1",
            prices=SIM_PRICES,
            description=description,
        )

    def add_to_config(self, snapshot: ConfigSnapshot) -> None:
        """Merge more tenants, keys, upstreams or gateways into the file (services read it at start)."""
        merged = self._merge(ConfigSnapshot.model_validate_json(self.config_path.read_bytes()), snapshot)
        self.config_path.write_text(merged.model_dump_json(indent=2))

    def seed_store(self) -> None:
        """Write the config file's entries into the config store (the KV bucket every service watches)."""
        snapshot = ConfigSnapshot.model_validate_json(self.config_path.read_bytes())
        asyncio.run(_load_store(self.nats_url(natsauth.ADMIN), snapshot))

    def pepper(self) -> str:
        return self._pepper()


async def _load_store(url: str, snapshot: ConfigSnapshot) -> None:
    nc = await nats.connect(url, inbox_prefix=natsauth.inbox_prefix_of(url))
    try:
        await (await ConfigWriter.open(nc.jetstream())).load(snapshot)
    finally:
        await nc.close()
