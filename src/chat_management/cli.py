"""``chat-management``: run a service, set up its backends, mint a dev token, print the config table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from litestar import Litestar

from chat_core.auth import USER_ID_PATTERN, mint_token
from chat_core.composition import Composition
from chat_core.server import load_or_exit, serve
from chat_core.settings import Settings, markdown_table
from chat_management import all as all_in_one
from chat_management import webclient

TARGETS: dict[str, Callable[[Settings], Litestar]] = {
    name: module.create_app for name, module in all_in_one.SERVICES.items()
}
TARGETS[all_in_one.COMPONENT] = all_in_one.create_app
TARGETS[webclient.COMPONENT] = webclient.create_app  # the page alone (the chart's optional `web`)


def _serve(args: argparse.Namespace) -> int:
    settings = load_or_exit()
    if args.port is not None:
        settings = msgspec.structs.replace(
            settings, service=msgspec.structs.replace(settings.service, port=args.port)
        )
    target, *also = args.target
    if target == all_in_one.COMPONENT:
        _print_banner(settings)
    if also:
        unknown = [name for name in args.target if name not in all_in_one.SERVICES]
        if unknown:
            print(f"serve: several targets must each be a service, not {', '.join(unknown)}", file=sys.stderr)
            return 2
        names = list(args.target)
        serve(
            functools.partial(all_in_one.create_combined_app, names),
            component=target,
            host=args.host,
            settings=settings,
        )
        return 0
    serve(TARGETS[target], component=target, host=args.host, settings=settings)
    return 0


def _print_banner(settings: Settings) -> None:
    """What a new user needs after `make run`: where it is, where the docs are, a token to try it with."""
    base = settings.service.base_url()
    lines = [
        f"chat-management: all five services in one process on {base}",
        f"  web client     {base}/"
        + ("  (sign in as anyone: DEV_LOGIN is on)" if settings.auth.dev_login else "  (paste a token)"),
        f"  API docs       {base}/docs",
        f"  data           {Path(settings.service.data_dir).resolve()}  (kept across restarts)",
        f"  backends       object store={settings.backends.object_store}, "
        f"messages={settings.backends.message_store}, bus={settings.backends.event_bus}, "
        f"queue={settings.backends.notification_queue}, push={','.join(settings.backends.push_provider)}",
    ]
    auth = settings.auth
    if auth.jwt_secret:
        token = mint_token(auth.jwt_secret, "alice", issuer=auth.issuer, audience=auth.audience)
        lines += [
            f"  dev token      {token}",
            "                 (user alice, 24 h; `uv run chat-management token --user bob` mints others)",
        ]
    print("\n".join(lines), flush=True)


def _token(args: argparse.Namespace) -> int:
    if not USER_ID_PATTERN.fullmatch(args.user):
        print(f"--user {args.user!r}: letters, digits and _ . @ : - only", file=sys.stderr)
        return 2
    settings = load_or_exit()
    if not settings.auth.jwt_secret:
        print("AUTH_JWT_SECRET: required to mint dev tokens", file=sys.stderr)
        return 2
    print(
        mint_token(
            settings.auth.jwt_secret,
            args.user,
            ttl_seconds=args.ttl,
            issuer=settings.auth.issuer,
            audience=settings.auth.audience,
        )
    )
    return 0


def _lifecycle_job(args: argparse.Namespace) -> int:
    """erase-user, export-user, apply-retention: the operators' jobs, run here and now."""
    from chat_core.logging import configure_logging
    from message_service.app import standalone_lifecycle

    settings = load_or_exit()
    configure_logging(settings.service.log_level, service="lifecycle")
    actor = f"cli:{getpass.getuser()}"

    async def run() -> int:
        async with standalone_lifecycle(settings) as lifecycle:
            if args.command == "erase-user":
                report: msgspec.Struct = await lifecycle.erase_user(args.user, actor=actor)
            elif args.command == "export-user":
                export = await lifecycle.export_user(args.user, export_id=str(uuid.uuid4()), actor=actor)
                report = export
                if args.output:
                    _info, data = await lifecycle.objects.read(export.object_key)
                    await asyncio.to_thread(Path(args.output).write_bytes, data)
            else:
                report = await lifecycle.apply_retention()
        print(msgspec.json.encode(report).decode())
        return 0

    if args.command in ("erase-user", "export-user") and not USER_ID_PATTERN.fullmatch(args.user):
        print(f"not a user id: {args.user!r}", file=sys.stderr)
        return 2
    return asyncio.run(run())


def _cleanup_orphans(args: argparse.Namespace) -> int:
    import structlog

    from chat_core.logging import configure_logging
    from upload_service import cleanup

    settings = load_or_exit()
    configure_logging(settings.service.log_level, service="cleanup")
    try:
        asyncio.run(cleanup.run(settings, dry_run=args.dry_run))
    except Exception as exc:
        structlog.get_logger("upload_service.cleanup").exception(
            "cleanup_failed", error=f"{type(exc).__name__}: {exc}"
        )
        return 1
    return 0


def _smoke(args: argparse.Namespace) -> int:
    from chat_management import smoke

    ready_urls: dict[str, str] = {}
    for given in args.ready:
        component, _, url = given.partition("=")
        if not (component and url):
            print(f"--ready {given!r}: component=url", file=sys.stderr)
            return 2
        ready_urls[component] = url
    if args.ready_only:
        if not ready_urls:
            print("--ready-only needs at least one --ready component=url", file=sys.stderr)
            return 2
        return smoke.main(
            smoke.SmokeTargets(
                upload_url="", message_url="", proxy_url="", token="", ready_urls=ready_urls, ready_only=True
            )
        )
    urls = {name: getattr(args, f"{name}_url") or args.base_url for name in ("upload", "message", "proxy")}
    if not all(urls.values()):
        print("--base-url, or all of --upload-url, --message-url and --proxy-url", file=sys.stderr)
        return 2
    urls = {name: url.rstrip("/") for name, url in urls.items()}
    if args.token:
        targets = smoke.SmokeTargets(
            upload_url=urls["upload"],
            message_url=urls["message"],
            proxy_url=urls["proxy"],
            token=args.token,
            stranger_token=args.stranger_token,
            ready_urls=ready_urls,
        )
    else:
        auth = load_or_exit().auth
        if not auth.jwt_secret:
            print("AUTH_JWT_SECRET (to mint test users' tokens), or --token", file=sys.stderr)
            return 2

        def mint(user: str) -> str:
            return mint_token(
                auth.jwt_secret, user, ttl_seconds=600, issuer=auth.issuer, audience=auth.audience
            )

        targets = smoke.SmokeTargets(
            upload_url=urls["upload"],
            message_url=urls["message"],
            proxy_url=urls["proxy"],
            token=mint("smoke-sender"),
            peer_token=mint("smoke-member"),
            peer_id="smoke-member",
            stranger_token=mint("smoke-stranger"),
            ready_urls=ready_urls,
        )
    return smoke.main(targets)


def _setup_steps(root: Composition) -> list[tuple[str, Callable[[], Awaitable[str | None]]]]:
    """What ``setup`` makes exist: one idempotent step per thing to ensure, each saying what it did.

    The cloud (an S3 bucket, SQS queues) is ``chat_management.provision``'s alone; the embedded object
    store only needs its directory.
    """
    from chat_management import provision

    settings = root.settings
    steps: list[tuple[str, Callable[[], Awaitable[str | None]]]] = []
    plan = provision.Plan.from_settings(settings)
    if plan.bucket is None:
        store = root.object_store

        async def ensure_store() -> None:
            await store.start()

        steps.append((f"object store ({store.name}): its directory", ensure_store))
    if plan.bucket is not None or plan.queues:
        s3, sqs = provision.clients(settings)
        for what, step in provision.steps(plan, s3, sqs):
            steps.append((what, functools.partial(asyncio.to_thread, step)))
    return steps


def _setup(_args: argparse.Namespace) -> int:
    settings = load_or_exit()

    async def run() -> int:
        root = Composition(settings)
        steps = _setup_steps(root)
        async with root:
            # Stops at the first failure (later steps may need it); every step is idempotent, so the
            # fix is to run setup again.
            for what, ensure in steps:
                try:
                    done = await ensure()
                except Exception as exc:
                    print(f"failed: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    return 1
                print(f"ok: {what}" + (f" ({done})" if done else ""), flush=True)
        return 0

    return asyncio.run(run())


def _dev(args: argparse.Namespace) -> int:
    import signal
    import threading
    from pathlib import Path

    try:
        import chat_devstack as devstack  # dev-only (tools/devstack): never in the runtime image
    except ImportError:
        print(
            "chat-management dev: a development command; run it from a checkout after `uv sync` "
            "(the dev group brings tools/devstack)",
            file=sys.stderr,
        )
        return 2
    workdir = Path(args.data_dir).resolve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("starting Redis, LocalStack and the Firestore emulator ...", flush=True)
    with devstack.local_backends() as (redis, localstack, firestore):
        stack = devstack.Stack(
            redis_url=redis.address,
            aws_endpoint_url=localstack.address,
            firestore_host=firestore.address,
            workdir=workdir,
            base_port=args.base_port,
            gateway=True,
        )
        print("starting the five services, the web client and the gateway ...", flush=True)
        try:
            stack.start()
            scrape = workdir / "prometheus.yml"
            scrape.write_text(stack.prometheus_config())
            secret = stack.env()["AUTH_JWT_SECRET"]
            print("\nchat-management dev stack (each service its own process, cloud adapters):")
            for backend in (redis, localstack, firestore):
                print(f"  {backend.describe()}")
            for name, service in stack.services.items():
                print(f"  {name:<22} {service.url}   log: {service.log_path}")
            print(f"  prometheus scrape config: {scrape}  (prometheus --config.file={scrape})")
            print(f"  token for alice: {mint_token(secret, 'alice')}")
            print(
                f"\nOpen {stack.public_url}/  (the web client and the whole API on one origin, routed as the "
                "chart's ingress routes them; sign in as anyone: DEV_LOGIN is on)"
            )
            print("Ctrl-C stops everything.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stop.wait()
        finally:
            print("stopping ...", flush=True)
            stack.stop()
    return 0


def _config_table(_args: argparse.Namespace) -> int:
    print(markdown_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-management", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run one service, or `all` of them in one process")
    serve_cmd.add_argument(
        "target",
        nargs="+",
        choices=sorted(TARGETS),
        help="one service, `all`, `web` (the web client's page alone), or several services in one process",
    )
    serve_cmd.add_argument("--host", default=None, help="overrides HOST")
    serve_cmd.add_argument("--port", type=int, default=None, help="overrides PORT")
    serve_cmd.set_defaults(func=_serve)

    token_cmd = commands.add_parser("token", help="mint an HS256 dev token with AUTH_JWT_SECRET")
    token_cmd.add_argument("--user", required=True)
    token_cmd.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds")
    token_cmd.set_defaults(func=_token)

    setup_cmd = commands.add_parser(
        "setup",
        help="create what the configured backends need (the hardened bucket, its media queue and "
        "notification, SQS queues); idempotent",
    )
    setup_cmd.set_defaults(func=_setup)

    dev_cmd = commands.add_parser(
        "dev",
        help="the cluster's topology on one machine: Redis, LocalStack, the Firestore emulator and each "
        "service as its own process (cloud adapters)",
    )
    dev_cmd.add_argument(
        "--base-port",
        type=int,
        default=8100,
        help="the gateway (the URL to open) listens on base; the services on base+1 .. base+5",
    )
    dev_cmd.add_argument("--data-dir", default=".data/dev", help="logs and the Prometheus scrape config")
    dev_cmd.set_defaults(func=_dev)

    config_cmd = commands.add_parser("config", help="print every setting as a Markdown table")
    config_cmd.set_defaults(func=_config_table)

    cleanup_cmd = commands.add_parser(
        "cleanup-orphans", help="delete uploaded images no message references (after ORPHAN_GRACE_SECONDS)"
    )
    cleanup_cmd.add_argument(
        "--dry-run", action="store_true", help="log what would be deleted, delete nothing"
    )
    cleanup_cmd.set_defaults(func=_cleanup_orphans)

    erase_cmd = commands.add_parser(
        "erase-user",
        help="erase a user: tombstone every message they sent (and its image), leave, forget devices",
    )
    erase_cmd.add_argument("user", help="the user id (the token's sub)")
    erase_cmd.set_defaults(func=_lifecycle_job)
    export_cmd = commands.add_parser(
        "export-user", help="export a user's messages (JSON) and images as a zip into the object store"
    )
    export_cmd.add_argument("user", help="the user id (the token's sub)")
    export_cmd.add_argument("--output", help="also write the zip to this file")
    export_cmd.set_defaults(func=_lifecycle_job)
    retention_cmd = commands.add_parser(
        "apply-retention",
        help="delete messages older than their retention (MESSAGE_RETENTION_DAYS, retentionDays)",
    )
    retention_cmd.set_defaults(func=_lifecycle_job)

    smoke_cmd = commands.add_parser(
        "smoke", help="walk one image message end to end over HTTP: upload URL, PUT, send, proxy"
    )
    smoke_cmd.add_argument("--base-url", help="where clients reach the API (the ingress)")
    smoke_cmd.add_argument("--upload-url", help="the upload service (overrides --base-url)")
    smoke_cmd.add_argument("--message-url", help="the message service (overrides --base-url)")
    smoke_cmd.add_argument("--proxy-url", help="the image proxy (overrides --base-url)")
    smoke_cmd.add_argument("--token", help="the sender's token (default: minted with AUTH_JWT_SECRET)")
    smoke_cmd.add_argument("--stranger-token", help="a non-member's token, which the proxy must refuse")
    smoke_cmd.add_argument(
        "--ready",
        action="append",
        default=[],
        metavar="COMPONENT=URL",
        help="a component whose /readyz must answer 200 first (repeatable)",
    )
    smoke_cmd.add_argument(
        "--ready-only", action="store_true", help="ask the --ready components only, walk no message"
    )
    smoke_cmd.set_defaults(func=_smoke)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))
