"""Server CPU per ingested message (wall clock here varies +-30% with load; CPU time much less).

  .venv/bin/python bench/ingest_cpu.py [REF ...] [--messages 3000] [--rounds 2]

Runs `kefu run` (SQLite) of this tree and of each git commit REF given (exported to a temporary
directory), in turn, round after round; each gets the same 300 warm-up webhook messages and then
--messages more at concurrency 32 (bench/ingest.py's workload: every other message from a new
customer), and prints the CPU time (user + system, from /proc/PID/stat, every thread) the kefu
process spent on the measured messages, per message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import ingest  # noqa: E402

from tests.servers.ports import free_port  # noqa: E402

WARMUP = 300


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(code: Path, n: int) -> float:
    """Milliseconds of kefu CPU per message."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = ingest.start_kefu(port, Path(tmp), code)
        try:
            reqs = ingest.requests(n + WARMUP)
            asyncio.run(ingest.drive([port], reqs[:WARMUP], 32))
            before = cpu_seconds(proc.pid)
            asyncio.run(ingest.drive([port], reqs[WARMUP:], 32))
            spent = cpu_seconds(proc.pid) - before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return spent / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="*", help="git commits to compare with this tree")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        for ref in args.refs:
            dest = Path(tmp) / ref
            dest.mkdir()
            trees[ingest.export(ref, dest)] = dest
        figures: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(1, args.rounds + 1):
            for name, code in trees.items():
                figures[name].append(measure(code, args.messages))
                print(f"round {r}  {name:10}  {figures[name][-1]:.3f} ms CPU/message", flush=True)
    for name, values in figures.items():
        print(f"median  {name:10}  {statistics.median(values):.3f} ms CPU/message")


if __name__ == "__main__":
    main()
