"""Per-pod cost as pods are added: 1, 2 and 4 message-service processes behind a round-robin balancer.

    uv run python -m bench.pods [--sockets 2000] [--seconds 8] [--pods 1,2,4]

Same total load for each pod count: ``--sockets`` online users (one socket each, spread over the pods by
the balancer, ``bench.lb``), and for each conversation size (2, 100, 1,000 online members) messages at a
fixed rate, open loop, each POSTed over a new connection (so the balancer spreads the sends too), on a
local 3-primary Redis Cluster (``REDIS_MODE=cluster``). Per message: CPU seconds of all message-service
processes (``/proc/<pid>/stat``, user + system) and Redis commands (``INFO commandstats`` deltas summed over
the three nodes: "redis cmd/msg" counts what the services send, "incl. scripts" adds the commands a Lua
script runs inside, "upkeep" is redis-py's connection upkeep, HELLO and PING, not tied to messages).
Presence heartbeats are pushed out of the window (``PRESENCE_TTL_SECONDS=3600``) so the figures are the
messages' own.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import redis

import chat_devstack as devstack
from bench import guard, results, rt
from bench.guard import BenchFailure, require_clean

# conversation size -> messages per second (the same total for every pod count)
RATES = {2: 40.0, 100: 10.0, 1000: 1.5}
LB_PORT = rt.PORTS[-1]
INSIDE_SCRIPTS = {
    "cmdstat_zcount",
    "cmdstat_time",
    "cmdstat_zadd",
    "cmdstat_zremrangebyscore",
    "cmdstat_pexpire",
}
# redis-py's connection upkeep (a new pooled connection says HELLO; idle ones are PINGed): not per message
UPKEEP = {"cmdstat_hello", "cmdstat_ping", "cmdstat_client|setinfo", "cmdstat_command"}


def command_calls(ports: list[int]) -> dict[str, int]:
    calls: dict[str, int] = {}
    for port in ports:
        client = redis.Redis(port=port)
        try:
            stats: dict[str, Any] = client.info("commandstats")
        finally:
            client.close()
        for name, value in stats.items():
            calls[name] = calls.get(name, 0) + int(value["calls"])
    return calls


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) and "info" not in k}


def run(pods: int, args: argparse.Namespace, cluster: devstack.Backend) -> list[dict[str, Any]]:
    work = rt.workdir(f"chat-bench-pods{pods}-")
    env = {**rt.service_env(work, cluster.address, "cluster"), "PRESENCE_TTL_SECONDS": "3600"}
    users = rt.users("p", args.sockets)
    asyncio.run(rt.seed(env, {f"g{size}": users[:size] for size in RATES}))
    rows: list[dict[str, Any]] = []
    with rt.message_services(env, pods, work) as services:
        pids = [s.process.pid for s in services if s.process is not None]
        lb = subprocess.Popen(
            [sys.executable, "-m", "bench.lb", "--port", str(LB_PORT),
             "--backends", ",".join(str(s.port) for s in services)],
            start_new_session=True,
        )  # fmt: skip
        client = rt.ClientProcess()
        try:
            devstack.wait_until(
                lambda: devstack.http_ok(f"http://127.0.0.1:{LB_PORT}/readyz"), 30, "balancer"
            )
            opened = client.ask(op="open", host="127.0.0.1", ports=[LB_PORT], users=users, concurrency=64)
            if opened["failed"]:
                raise BenchFailure(f"{opened['failed']} sockets failed to open")
            time.sleep(1)
            for size, rate in RATES.items():
                count = max(1, int(rate * args.seconds))
                online = min(size, args.sockets)
                sends = [[f"g{size}", users[i % online]] for i in range(count)]
                before_cpu = sum(rt.cpu_seconds(pid) for pid in pids)
                lb_before = rt.cpu_seconds(lb.pid)
                before_calls = command_calls(cluster.cluster_ports)
                result = client.ask(
                    op="load",
                    urls=[f"http://127.0.0.1:{LB_PORT}"],
                    sends=sends,
                    rate=rate,
                    expected=count * online,
                )
                statuses = {int(k): v for k, v in result["statuses"].items()}
                row = f"{pods} pods, {size} members"
                require_clean(row, errors=0, requests=count, statuses=statuses, expected=201)
                if result["delivered"] < count * online:
                    raise BenchFailure(f"{row}: {count * online - result['delivered']} events never arrived")
                time.sleep(0.5)  # the last relays and presence reads
                cpu = sum(rt.cpu_seconds(pid) for pid in pids) - before_cpu
                calls = diff(command_calls(cluster.cluster_ports), before_calls)
                upkeep = sum(v for k, v in calls.items() if k in UPKEEP or k.startswith("cmdstat_cluster"))
                client_calls = sum(v for k, v in calls.items() if k not in INSIDE_SCRIPTS) - upkeep
                rows.append({
                    "pods": pods, "size": size, "messages": count, "rate": rate,
                    "ok": result["statuses"].get("201", 0), "delivered": result["delivered"],
                    "expected": count * online, "upkeep": upkeep / count,
                    "cpu_per_message_ms": cpu / count * 1000,
                    "cpu_per_event_us": cpu / max(1, result["delivered"]) * 1e6,
                    "lb_cpu_per_message_ms": (rt.cpu_seconds(lb.pid) - lb_before) / count * 1000,
                    "client_commands": client_calls / count,
                    "total_commands": (sum(calls.values()) - upkeep) / count,
                    "calls": {k: round(v / count, 2) for k, v in sorted(calls.items())},
                })  # fmt: skip
        finally:
            client.close()
            devstack.kill_group(lb)
    return rows


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--pods", default="1,2,4")
    parser.add_argument("--verbose", action="store_true", help="print each run's commands per message")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 pods, 300 sockets, 2 s")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.seconds, args.pods = 300, 2.0, "1,2"
    rt.raise_file_limit()
    cluster = devstack.start_local_redis_cluster(3)
    rows: list[dict[str, Any]] = []
    try:
        for pods in (int(p) for p in args.pods.split(",")):
            rows.extend(run(pods, args, cluster))
    finally:
        cluster.stop()
    print(f"\nper-pod cost: {args.sockets} sockets over the pods, 3-primary Redis Cluster, same total load")
    print(f"{'pods':>4} {'members':>7} {'msg/s':>6} {'sent':>5} {'201':>5} {'delivered':>10} "
          f"{'CPU ms/msg':>10} {'CPU us/event':>12} {'LB ms/msg':>9} {'redis cmd/msg':>13} "
          f"{'incl. scripts':>13} {'upkeep':>6}")  # fmt: skip
    for row in rows:
        print(f"{row['pods']:>4} {row['size']:>7} {row['rate']:>6.1f} {row['messages']:>5} {row['ok']:>5} "
              f"{row['delivered']:>5}/{row['expected']:<5} {row['cpu_per_message_ms']:>9.2f} "
              f"{row['cpu_per_event_us']:>12.0f} {row['lb_cpu_per_message_ms']:>9.2f} "
              f"{row['client_commands']:>13.2f} {row['total_commands']:>13.1f} "
              f"{row['upkeep']:>6.2f}")  # fmt: skip
        if args.verbose:
            print(f"      {row['calls']}")
        results.record(
            "pods",
            {key: value for key, value in row.items() if key != "calls"} | {"sockets": args.sockets},
            key=("pods", "size"),
        )


if __name__ == "__main__":
    main()
