"""Memory per idle socket of the embedded stack (``serve all``), and where it goes (tracemalloc), in-process.

    uv run python -m bench.socket_memory [--sockets 10000] [--traced 2000] [--top 15]

The all-in-one app runs under uvicorn with the services' own options (``chat_core.server.uvicorn_options``)
in this process; the sockets come from another process (``bench.socket_client``, which offers
permessage-deflate as browsers do). Twice, each time after a warm-up of 200 sockets:

1. untraced, ``--sockets`` more: RSS growth per socket, the figure against its target (issue 28: 20 KiB);
2. traced by tracemalloc (one frame per allocation), ``--traced`` more: the growth per socket as RSS (which
   then includes tracemalloc's own records), as traced (Python objects and whatever C code allocates
   through Python's allocators, zlib included), and the lines that allocated most. What RSS holds beyond
   the traced bytes is C memory tracemalloc cannot see (libuv handles; kernel-side socket buffers do not
   count in RSS). Tracing slows the process; the figures are bytes, not time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tracemalloc
from pathlib import Path

import uvicorn

from bench import guard, rt
from bench.guard import NEVER_REFUSING_LIMITS, BenchFailure
from bench.sockets import verdict
from chat_core.server import uvicorn_options
from chat_core.settings import load_settings
from chat_management import all as all_in_one

WARM_UP = 200
ROOT = str(Path(__file__).resolve().parents[1]) + "/"


def main() -> None:
    guard.run(_main)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000, help="sockets of the untraced RSS figure")
    parser.add_argument("--traced", type=int, default=2000, help="sockets of the tracemalloc breakdown")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 sockets")
    args = parser.parse_args()
    if args.quick:
        args.sockets = args.traced = 300
    limit = rt.raise_file_limit()
    if args.sockets + WARM_UP + 200 > limit:
        raise SystemExit(
            f"RLIMIT_NOFILE is {limit}: too low for {args.sockets} sockets (raise the hard limit)"
        )
    work = rt.workdir("chat-bench-socket-memory-")
    port = rt.PORTS[-2]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FIRESTORE_", "REDIS_"))},
        "AUTH_JWT_SECRET": rt.SECRET,
        "DATA_DIR": str(work),
        "PORT": str(port),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        **NEVER_REFUSING_LIMITS,
    }
    users = rt.users("m", WARM_UP + max(args.sockets, args.traced))
    asyncio.run(rt.seed(env, {"g": users[:100]}))  # some members in a conversation, as in real use
    asyncio.run(_measure(env, port, users[: WARM_UP + args.sockets], args, traced=False))
    tracemalloc.start(1)
    asyncio.run(_measure(env, port, users[: WARM_UP + args.traced], args, traced=True))


async def _measure(
    env: dict[str, str], port: int, users: list[str], args: argparse.Namespace, *, traced: bool
) -> None:
    settings = load_settings(env)
    app = all_in_one.create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **uvicorn_options(settings)))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.05)
    client = rt.ClientProcess()
    try:
        ask = client.ask
        warm = await asyncio.to_thread(
            ask, op="open", host="127.0.0.1", ports=[port], users=users[:WARM_UP], concurrency=32
        )
        await asyncio.sleep(2)
        rss_before = rt.rss_bytes(os.getpid())
        before = tracemalloc.take_snapshot() if traced else None
        opened = await asyncio.to_thread(
            ask, op="open", host="127.0.0.1", ports=[port], users=users[WARM_UP:], concurrency=32
        )
        await asyncio.sleep(3)
        rss_after = rt.rss_bytes(os.getpid())
        if warm["failed"] or opened["failed"]:
            raise BenchFailure(f"socket memory: {warm['failed'] + opened['failed']} sockets failed to open")
        count = opened["opened"]
        if before is None:
            rss = (rss_after - rss_before) / count / 1024
            print(f"\nmemory per idle socket, embedded stack (serve all), {count} sockets after {WARM_UP}")
            print(f"  RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB: "
                  f"{rss:.1f} KiB per socket ({verdict('memory per idle socket', rss)})")  # fmt: skip
            return
        stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
        traced_bytes = sum(stat.size_diff for stat in stats)
        print(
            f"\nmemory per idle socket, embedded stack (serve all), {count} sockets after {WARM_UP}, traced"
        )
        rss = (rss_after - rss_before) / count / 1024
        print(f"  RSS {rss:.1f} KiB, tracemalloc {traced_bytes / count / 1024:.1f} KiB (RSS: +its records)")
        print(f"  {'bytes/socket':>12} {'blocks/socket':>13}  allocated at")
        for stat in stats[: args.top]:
            frame = stat.traceback[0]
            where = frame.filename.replace(ROOT, "").split("site-packages/")[-1]
            print(
                f"  {stat.size_diff / count:>12.0f} {stat.count_diff / count:>13.2f}  {where}:{frame.lineno}"
            )
    finally:
        client.close()
        server.should_exit = True
        await task


if __name__ == "__main__":
    main()
