"""Where each service's time goes under load: py-spy samples of the worker, the edge and the router.

    uv run --with py-spy python -m bench.profile [--concurrency 16] [--duration 12] [--stream]

Starts the stack as `make bench` does (services pinned to CPU 0, the simulator and the load on
CPU 1), drives the demo gateway, and samples each service with `py-spy record` at 200 Hz while the
load runs. Printed per service: the functions with the most samples of their own, and the deepest
frame of our own code under each sample (what of ours, directly or through a library, costs most).

Read it with the layout in mind: the samples are wall-clock, and on one shared core a process that
wakes another by a socket write is often preempted inside that write, so nats-py's `writelines`
collects the time of whoever it woke. Those samples are counted apart; `bench.cpu` gives what each
process really spent.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.gateway import HOST, _body, _progress, start_pinned_stack
from bench.loadgen import run_load

SERVICES = ("worker-0", "edge", "router-0")
_IDLE = ("select (selectors", "poll (")  # the loop waiting: not a cost
_WOKEN = "writelines ("  # a socket write, including the time of the process it woke


def summary(raw: Path, top: int) -> str:
    """The report for one `py-spy record -f raw` file (one collapsed stack and its count a line)."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    busy = woken = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or any(idle in frames[-1] for idle in _IDLE):
            continue
        samples = int(count)
        busy += samples
        if any(_WOKEN in frame for frame in frames):
            woken += samples
            continue
        own[frames[-1]] += samples
        ours[next((f for f in reversed(frames) if "aigw" in f), "(no aigw frame)")] += samples
    rest = max(busy - woken, 1)
    lines = [f"{busy} busy samples, {100 * woken / max(busy, 1):.0f} % in socket writes (see above)"]
    lines.append(f"  own samples, % of the other {rest}:")
    lines += [f"    {100 * n / rest:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines.append("  deepest frame of our code:")
    lines += [f"    {100 * n / rest:5.1f}  {frame}" for frame, n in ours.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds sampled")
    parser.add_argument("--stream", action="store_true", help="streamed answers instead of whole ones")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy not found: run with `uv run --with py-spy python -m bench.profile`")

    stack = start_pinned_stack(metering=False, request_log=True)
    try:
        assert stack.demo is not None and stack.edge_port is not None
        body = _body("demo", 64 if args.stream else 16, args.stream)
        load = run_load(
            HOST, stack.edge_port, "/v1/chat/completions", body, stack.demo.key, args.concurrency, 1.0
        )
        asyncio.run(load)  # warm-up
        with tempfile.TemporaryDirectory() as tmp:
            outs = {name: Path(tmp) / f"{name}.txt" for name in SERVICES}
            spies = []
            for name, out in outs.items():
                pid = str(stack.procs[name].pid)
                command = [spy, "record", "-p", pid, "-d", str(int(args.duration)), "-r", "200"]
                command += ["-f", "raw", "-o", str(out), "--nonblocking"]
                spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _progress(f"sampling {', '.join(SERVICES)} for {args.duration:.0f} s at c={args.concurrency}")
            result = asyncio.run(
                run_load(
                    HOST,
                    stack.edge_port,
                    "/v1/chat/completions",
                    body,
                    stack.demo.key,
                    args.concurrency,
                    args.duration + 1,
                )
            )
            for proc in spies:
                proc.wait(timeout=args.duration + 60)
            print(f"{result.rps:.0f} req/s while sampled")
            for name, out in outs.items():
                print(
                    f"\n== {name}: "
                    + (summary(out, args.top) if out.exists() else "no samples (py-spy failed)")
                )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
