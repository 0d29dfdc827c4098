"""`aigw-dev run`: start the whole system locally (what `make run` does), keep it running, and stop
it on Ctrl-C or SIGTERM.

While it runs, a process that exits unexpectedly (a crash, `kill -9 <pid>`) is restarted with
backoff and the others are left alone (`supervise.Supervisor`); the terminal gets one line per event
and `<state>/logs/launcher.log` the same as JSON lines. Stopping stops every child by its pid.

`aigw-dev nats-config`: render a deployment's nats-server config (bus users and permissions,
`aigw_runtime.natsauth`) and one env file per service holding its own `AIGW_NATS_URL`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from aigw_runtime.logs import JsonFormatter

from .deploysecrets import write_secrets
from .natsconf import deploy_files
from .stack import Stack
from .supervise import Supervisor

EXAMPLE = """
aigw is running.
  edge (OpenAI-compatible API): {base}
  gateway:  model="demo"  (id {gid}, slug {slug}) -> {upstream}
  API key:  written to {keyfile}
  state:    {state} (logs in {state}/logs)
  pids:     {pids}
  NATS:     {nats} (authenticated: one user per service, passwords in {state}/nats-passwords.json)

Try it:

  curl -s {base}/chat/completions \\
    -H "Authorization: Bearer $(cat {keyfile})" -H "Content-Type: application/json" \\
    -d '{{"model": "demo", "messages": [{{"role": "user", "content": "Why use an AI gateway?"}}]}}'

  uv run python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}", api_key=open("{keyfile}").read().strip())
for chunk in client.chat.completions.create(
    model="demo", messages=[{{"role": "user", "content": "Why use an AI gateway?"}}], stream=True,
):
    print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="", flush=True)
print()
PY

A process that exits is restarted and the others keep running; Ctrl-C stops everything.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aigw-dev", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start NATS and every service on 127.0.0.1")
    run.add_argument("--state", type=Path, default=Path(os.environ.get("AIGW_STATE_DIR", ".aigw")))
    run.add_argument("--port", type=int, default=int(os.environ.get("AIGW_PORT", "8080")))
    run.add_argument("--workers", type=int, default=1)
    conf = sub.add_parser(
        "nats-config",
        help="render nats-server's config and each service's NATS credentials (compose, Kubernetes)",
        description="Writes <out>/nats.conf (bcrypt-hashed passwords), <out>/passwords.json and "
        "<out>/<user>.env (AIGW_NATS_URL=…), all 0600. Passwords already in passwords.json are kept, "
        "so re-rendering (new permissions, TLS) does not change any service's credentials.",
    )
    conf.add_argument("--out", type=Path, required=True, help="directory to write into")
    conf.add_argument("--host", default="nats", help="the NATS host name the services connect to")
    conf.add_argument("--port", type=int, default=4222)
    conf.add_argument("--listen", default="0.0.0.0:4222", help="where nats-server listens")
    conf.add_argument("--store-dir", default="/data", help="nats-server's JetStream directory")
    conf.add_argument("--tls-cert", help="server certificate (PEM): clients then connect with tls://")
    conf.add_argument("--tls-key", help="server certificate's key (PEM)")
    sec = sub.add_parser(
        "secrets",
        help="generate a deployment's application secrets (pepper, sealing key, ClickHouse, Grafana)",
        description="Writes <out>/aigw.env, clickhouse.env, grafana.env and compose.env (0600) from "
        "<out>/secrets.json, made once: re-running keeps every value (and a filled-in OPENAI_API_KEY).",
    )
    sec.add_argument("--out", type=Path, required=True, help="directory to write into")
    sec.add_argument(
        "--clickhouse-url", default="http://clickhouse:8123/aigw", help="ClickHouse as metering reaches it"
    )
    args = parser.parse_args(argv)
    if args.command == "nats-config":
        nats_config(args)
        return
    if args.command == "secrets":
        for name, path in write_secrets(args.out, args.clickhouse_url).items():
            print(f"{name:>10}: {path}")
        return

    stack = Stack(
        state_dir=args.state.resolve(),
        edge_port=args.port,
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        workers=args.workers,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("starting nats-server and the aigw services…", file=sys.stderr)
    try:
        stack.start()
        assert stack.demo is not None
        print(
            EXAMPLE.format(
                base=stack.base_url,
                gid=stack.demo.gateway_id,
                slug=stack.demo.gateway_slug,
                upstream=stack.demo.upstream
                + ("" if stack.openai_api_key else " (the aigw simulator: set OPENAI_API_KEY for OpenAI)"),
                keyfile=stack.state_dir / "demo-key",
                state=stack.state_dir,
                pids=", ".join(f"{name} {proc.pid}" for name, proc in stack.processes().items()),
                nats=stack.nats.url if stack.nats else "",
            ),
            flush=True,
        )
        _log_to(stack.state_dir / "logs" / "launcher.log")
        supervisor = Supervisor(stack.processes, lambda name: stack.restart(name, wait=False), _say)
        while not stop.wait(0.2):
            try:
                supervisor.check()
            except Exception as err:  # a supervision bug must not take the running stack down
                logging.getLogger("aigw.devstack").exception("supervision failed")
                _say(f"supervision failed ({err!r}); see {stack.state_dir}/logs/launcher.log")
    finally:
        print("stopping…", file=sys.stderr)
        stack.stop()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _log_to(path: Path) -> None:
    """The launcher's own structured log (what it restarted, when, why), beside the services' logs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter("devstack"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def nats_config(args: argparse.Namespace) -> None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    written = deploy_files(
        args.out,
        host=args.host,
        port=args.port,
        listen=args.listen,
        store_dir=args.store_dir,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    print(f"wrote {written.config} and, per user, {args.out}/<user>.env (0600):", file=sys.stderr)
    for user, path in written.env_files.items():
        print(f"  {user:<10} {path}  {written.urls[user]}", file=sys.stderr)


if __name__ == "__main__":
    main()
