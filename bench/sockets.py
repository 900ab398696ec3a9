"""Socket capacity of one message-service process: memory per idle socket, fan-out latency by group size.

    uv run python -m bench.sockets [--sockets 10000] [--samples 100] [--redis cluster|standalone]

One message-service process (SQLite store, Redis event bus: a local 3-primary cluster by default) on a
hand-run port; the sockets live in another process (``bench.socket_client``: one ``asyncio.Protocol`` per
socket). Memory per socket = RSS growth of the service / sockets, measured after a warm-up of 500 sockets
(first-use costs excluded). Fan-out latency: a member POSTs one message at a time to a conversation of 2,
100 and 1,000 online members; from just before the POST to the arrival on the last member's socket (the
client's own time to read 1,000 frames is included). CPU per delivered event: the service's CPU (user +
system, ``/proc``) over each group's sends divided by the events delivered, so the send itself, the store
write and the publish are in it. Conversations are seeded straight into the store: the API caps a group at
500 members, so 1,000 measures headroom past the product limit.

Each figure is printed against its target (``TARGETS``, issue 28): memory per idle socket at 10,000
sockets, fan-out p99 to 1,000 online members, CPU per delivered event in groups of 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import chat_devstack as devstack
from bench import guard, rt
from bench.guard import BenchFailure

WARM_UP = 500
GROUPS = (2, 100, 1000)
# figure -> (bound, unit): a figure meets its target at or under the bound (the p99 strictly under it)
TARGETS = {
    "memory per idle socket": (20.0, "KiB"),
    "fan-out p99, 1,000 members": (100.0, "ms"),
    "CPU per delivered event, 1,000 members": (25.0, "us"),
}


def verdict(figure: str, value: float) -> str:
    """``value`` against the target of ``figure``, as printed: ``target <= 20 KiB: met``."""
    bound, unit = TARGETS[figure]
    met = value < bound if "p99" in figure else value <= bound
    return f"target {'<' if 'p99' in figure else '<='} {bound:g} {unit}: {'met' if met else 'NOT MET'}"


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--redis", choices=("cluster", "standalone"), default="cluster")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1,200 sockets, 5 samples")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.samples = 1200, 5
    limit = rt.raise_file_limit()
    if args.sockets + 200 > limit:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit}: too low for {args.sockets} sockets (raise the hard limit)"
        )

    redis = devstack.start_local_redis_cluster(3) if args.redis == "cluster" else devstack.start_local_redis()
    client: rt.ClientProcess | None = None
    try:
        work = rt.workdir("chat-bench-sockets-")
        # Presence heartbeats out of the window (as in bench.pods): the CPU per event is the messages' own,
        # not 10,000 sockets' timers over however long the sends take on a busy machine.
        env = {**rt.service_env(work, redis.address, args.redis), "PRESENCE_TTL_SECONDS": "3600"}
        users = rt.users("u", args.sockets)
        groups = {f"g{size}": users[:size] for size in GROUPS}
        asyncio.run(rt.seed(env, groups))
        with rt.message_services(env, 1, work) as (service,):
            assert service.process is not None
            pid = service.process.pid
            client = rt.ClientProcess()
            ports = [service.port]
            warm = client.ask(op="open", host="127.0.0.1", ports=ports, users=users[:WARM_UP], concurrency=16)
            time.sleep(2)
            rss_before = rt.rss_bytes(pid)
            opened = client.ask(
                op="open", host="127.0.0.1", ports=ports, users=users[WARM_UP:], concurrency=16
            )
            time.sleep(3)
            rss_after = rt.rss_bytes(pid)
            total = warm["opened"] + opened["opened"]
            if failed := warm["failed"] + opened["failed"]:
                raise BenchFailure(f"sockets: {failed} of {args.sockets} failed to open")
            per_socket = (rss_after - rss_before) / max(1, opened["opened"])
            print(f"\nsocket capacity: one message-service process, Redis {args.redis}, {total} sockets open")
            rate = opened["opened"] / opened["seconds"]
            print(f"  opened {opened['opened']} after the warm-up in {opened['seconds']:.1f} s "
                  f"({rate:.0f}/s), failed {failed}")  # fmt: skip
            client_rss = rt.rss_bytes(client.pid) / 2**20
            print(f"  service RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB: "
                  f"{per_socket / 1024:.1f} KiB per socket; client RSS {client_rss:.0f} MiB")  # fmt: skip
            print(f"  memory per idle socket {per_socket / 1024:.1f} KiB "
                  f"({verdict('memory per idle socket', per_socket / 1024)})")  # fmt: skip
            print(f"\nfan-out latency, send -> last socket ({args.samples} messages each, one at a time, "
                  f"{total} sockets open)")  # fmt: skip
            print(f"  {'online members':>15} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'lost':>6} "
                  f"{'CPU us/event':>12}")  # fmt: skip
            figures: dict[str, float] = {}
            for size in GROUPS:
                cpu_before = rt.cpu_seconds(pid)
                result = client.ask(
                    op="fanout", url=service.url, conversation=f"g{size}", sender=users[0],
                    expected=size, samples=args.samples,
                )  # fmt: skip
                latencies = result["latencies"]
                if result["lost"]:
                    raise BenchFailure(f"fan-out to {size}: {result['lost']} events never arrived")
                cpu_per_event = (rt.cpu_seconds(pid) - cpu_before) / (size * args.samples) * 1e6
                print(f"  {size:>15} {percentile(latencies, 0.5) * 1000:>9.1f} "
                      f"{percentile(latencies, 0.99) * 1000:>9.1f} {max(latencies, default=0) * 1000:>9.1f} "
                      f"{result['lost']:>6} {cpu_per_event:>12.1f}")  # fmt: skip
                if size == 1000:
                    figures["fan-out p99, 1,000 members"] = percentile(latencies, 0.99) * 1000
                    figures["CPU per delivered event, 1,000 members"] = cpu_per_event
            for figure, value in figures.items():
                print(f"  {figure}: {value:.1f} {TARGETS[figure][1]} ({verdict(figure, value)})")
            cpu = rt.cpu_seconds(pid)
            end_rss = rt.rss_bytes(pid) / 2**20
            print(f"\n  service CPU for the whole run: {cpu:.1f} s; RSS at the end {end_rss:.0f} MiB")
    finally:
        if client is not None:
            client.close()
        redis.stop()


if __name__ == "__main__":
    main()
