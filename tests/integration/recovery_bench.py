"""Measure how fast a restarted worker rebuilds its journeys table (memory store) from the changelog.

Not a test: run it by hand, from the repository root::

    python -m tests.integration.recovery_bench --users 90000 --rounds 3 \
        --variant base=/work/main --variant new=.

It starts the embedded broker (as tests/integration/conftest.py does), fills
the journeys changelog by running `funnel generate` into a worker until the
pipeline is drained, stops it, then restarts a worker ``--rounds`` times per
variant, alternating the variants (A B A B ...). A variant is NAME=DIR: the
worker (recovery_bench_worker.py) runs with DIR first on the path, so the code
under test is DIR's; NAME=DIR:OPTIONS passes options to the launcher.
Each restart replays the whole changelog (the memory store keeps nothing);
the time is taken from the worker's log lines "Restoring state from
changelog topics" to "Done reading from changelog topics", and from process
start to /health ready. With ``--check`` the recovered table is compared
with the last value per key read from the changelog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from streams.tools.broker import EmbeddedBroker

from .harness import bootstrap_of, generating, pipeline_environment, start_worker, wait_drained

LAUNCHER = Path(__file__).with_name("recovery_bench_worker.py")
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def env_for(broker: EmbeddedBroker, root: Path) -> dict[str, str]:
    return {**pipeline_environment(broker.url, root, "funnel-bench"), "FUNNEL_STORE": "memory://"}


def read_changelog(bootstrap: str, topic: str) -> tuple[int, dict[bytes, bytes]]:
    """(records, last value per live key) of the changelog topic."""

    async def run() -> tuple[int, dict[bytes, bytes]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await consumer.start()
        n, last, quiet = 0, {}, 0
        try:
            while quiet < 6:
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                got = sum(len(v) for v in batch.values())
                quiet = 0 if got else quiet + 1
                for msgs in batch.values():
                    for m in msgs:
                        n += 1
                        if m.value is None:
                            last.pop(m.key, None)
                        else:
                            last[m.key] = m.value
        finally:
            await consumer.stop()
        return n, last

    return asyncio.run(run())


def check_table(dump: Path, last: dict[bytes, bytes]) -> str:
    """'exact' if the dumped table holds exactly the changelog's last value per key."""
    if not dump.exists():
        return "NO DUMP"
    table = {}
    for line in dump.read_bytes().splitlines():
        key, value = orjson.loads(line)
        table[bytes.fromhex(key)] = value
    if table.keys() != last.keys():
        return f"WRONG KEYS ({len(table)} keys, {len(table.keys() - last.keys())} extra, " \
               f"{len(last.keys() - table.keys())} missing)"
    wrong = sum(1 for k, v in last.items() if orjson.loads(v) != table[k])
    return f"exact ({len(table)} keys)" if not wrong else f"WRONG VALUES ({wrong})"


def recovery_seconds(log: Path, start_at: int) -> float | None:
    text = log.read_bytes()[start_at:].decode(errors="replace").splitlines()
    begin = end = None
    for line in text:
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if begin is None and "Restoring state from changelog topics" in line:
            begin = t
        if begin is not None and "Done reading from changelog topics" in line:
            end = t
            break
    return None if begin is None or end is None else end - begin


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=90_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=DIR[:OPTIONS] (OPTIONS: FUNNEL_BENCH_OPTIONS of recovery_bench_worker.py)")
    parser.add_argument("--check", action="store_true", help="compare the table size with the changelog")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    variants = []
    for spec in args.variant:
        name, _, where = spec.partition("=")
        directory, _, options = where.partition(":")
        variants.append((name, Path(directory).resolve(), options))

    root = Path(tempfile.mkdtemp(prefix="recovery-bench-"))
    with EmbeddedBroker(log_file=root / "broker.log") as broker:
        env = env_for(broker, root)
        changelog = f"{env['FUNNEL_APP_ID']}-journeys-changelog"
        t0 = time.monotonic()
        filler = start_worker(env, root / "fill.log")
        try:
            with generating(env, root / "truth.json", "--seed", "7", "--users", str(args.users),
                            "--rate", str(args.rate), "--stage-delay", "0.5",
                            log_path=root / "generate.log") as gen:
                assert gen.wait(1800) == 0, "generate failed"
            wait_drained(filler, 600)
        finally:
            assert filler.stop() == 0, filler.log_tail()
        records, last = read_changelog(bootstrap_of(env), changelog)
        print(f"filled {changelog}: {records} records, {len(last)} live keys in "
              f"{time.monotonic() - t0:.0f}s", flush=True)

        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
        for rnd in range(args.rounds):
            for name, directory, options in variants:
                log = root / f"{name}-{rnd}.log"
                dump = root / f"{name}-{rnd}.table"
                command = [sys.executable, str(LAUNCHER)]
                worker_env = {**env, "PYTHONPATH": str(directory), "FUNNEL_BENCH_OPTIONS": options,
                              **({"FUNNEL_BENCH_DUMP": str(dump)} if args.check else {})}
                cwd = os.getcwd()
                os.chdir(directory)  # `python -m` puts the working directory first on the path
                try:
                    started = time.monotonic()
                    worker = start_worker(worker_env, log, timeout=900, command=command)
                    ready = time.monotonic() - started
                finally:
                    os.chdir(cwd)
                try:
                    rec = recovery_seconds(log, 0)
                    size = None
                    if args.check:
                        size = check_table(dump, last)
                finally:
                    code = worker.stop(signal.SIGTERM)
                results[name].append((rec or float("nan"), ready))
                print(f"round {rnd} {name:>8}: recovery {rec or float('nan'):6.2f}s "
                      f"({records / rec if rec else float('nan'):8.0f} records/s), ready after {ready:6.2f}s"
                      f"{'' if size is None else f', table {size}'} exit {code}", flush=True)
        print(f"\n{records} changelog records, {len(last)} keys; median over {args.rounds} rounds:")
        for name, runs in results.items():
            recs = sorted(r for r, _ in runs)
            readys = sorted(r for _, r in runs)
            med, medr = recs[len(recs) // 2], readys[len(readys) // 2]
            print(f"  {name:>8}: recovery {med:6.2f}s = {records / med:8.0f} records/s; ready {medr:6.2f}s "
                  f"(runs: {', '.join(f'{r:.2f}' for r in recs)})")
    if not args.keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
