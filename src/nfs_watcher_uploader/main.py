"""Entry points: the app factory (`create_app`) and the console script (`run`): the service,
`verify` or `status`."""

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from nfs_watcher_uploader import settings_checks
from nfs_watcher_uploader.api import routes
from nfs_watcher_uploader.api.auth import ApiToken, TokenFileError
from nfs_watcher_uploader.api.limits import server_options
from nfs_watcher_uploader.cli import status
from nfs_watcher_uploader.cloud import verify
from nfs_watcher_uploader.config import Settings, unsafe_paths
from nfs_watcher_uploader.service import Service
from nfs_watcher_uploader.telemetry import Telemetry, configure_logging, setup_telemetry

logger = logging.getLogger(__name__)


def create_app(settings: Settings, **service_options: Any) -> FastAPI:
    """Build the app. `service_options` are test seams passed on to `Service`. Raises
    TokenFileError when APP_API_TOKEN_FILE holds no usable token."""
    token = ApiToken.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        if problems := unsafe_paths(settings) + settings_checks.problems(settings):
            raise RuntimeError("settings that cannot work: " + "; ".join(problems))
        if token is None:
            logger.warning(
                "APP_API_TOKEN is not set: anyone who can reach port %d can start and stop "
                "sessions and requeue files (README, Security)",
                settings.port,
            )
        telemetry = Telemetry(providers.tracer_provider, providers.meter_provider)
        service = Service(settings, telemetry=telemetry, **service_options)
        app.state.service = service
        service.start()
        # A token from a file is read again as it changes (rotation without a restart).
        rotation = None
        if token is not None and token.path is not None:
            rotation = asyncio.create_task(token.run(), name="api-token")
        try:
            yield
        finally:
            if rotation is not None:
                rotation.cancel()
                await asyncio.gather(rotation, return_exceptions=True)
            await service.shutdown()
            # Last: flush spans and metrics of the shutdown itself.
            providers.shutdown()

    # /docs is the package's own page (Swagger UI from files served here, no CDN); no ReDoc.
    app = FastAPI(title="nfs-watcher-uploader", lifespan=lifespan, docs_url=None, redoc_url=None)
    routes.install(app, token, settings.metrics_require_token)
    providers = setup_telemetry(app)
    app.state.metrics_registry = providers.registry
    return app


def _return_freed_memory() -> None:
    """Blocks of several MiB are allocated and freed in many threads. glibc's dynamic mmap
    threshold then serves them from per-thread arenas that keep the memory; a fixed 1 MiB
    threshold maps them directly, so freeing returns them to the OS (bounded RSS)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run(argv: list[str] | None = None) -> None:
    """Console script: with no command (or `serve`), the service; `verify <date>/<session>`
    checks a session in storage against its manifest; `status` shows what a running service is
    doing."""
    parser = argparse.ArgumentParser(
        prog="nfs-watcher-uploader", description="Upload finished recordings from NFS to Azure."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="watch, upload and serve the API (the default)")
    # Commands other than the service: (name, help, description, arguments, main).
    tools: dict[str, Callable[[argparse.Namespace], int]] = {}
    for name, help_text, doc, add_arguments, main in (
        ("verify", verify.HELP, verify.__doc__, verify.add_arguments, verify.main),
        ("status", status.HELP, status.__doc__, status.add_arguments, status.main),
    ):
        formatter = argparse.RawDescriptionHelpFormatter
        add_arguments(
            commands.add_parser(name, help=help_text, description=doc, formatter_class=formatter)
        )
        tools[name] = main
    args = parser.parse_args(argv)
    if args.command in tools:
        sys.exit(tools[args.command](args))
    serve()


class _EndOnFatal:
    """Told by the service why start-up cannot succeed: ends the server, keeps the reason."""

    def __init__(self) -> None:
        self.server: Any = None
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        self.reason = reason
        if self.server is not None:
            self.server.should_exit = True


def serve() -> None:
    """Serve the API on APP_HOST:APP_PORT (default 0.0.0.0:8000), and upload. Exits with status
    1 and a line saying what to check when start-up cannot succeed."""
    import uvicorn

    _return_freed_memory()
    configure_logging()
    settings = settings_checks.load_settings()
    end = _EndOnFatal()
    try:
        app = create_app(settings, on_fatal=end)
    except TokenFileError as exc:
        sys.exit(f"nfs-watcher-uploader: {exc}")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        **server_options(),
        # Open HTTP requests get 5 s; then the lifespan gives uploads APP_SHUTDOWN_GRACE_S. The
        # sum must stay below the pod's terminationGracePeriodSeconds.
        timeout_graceful_shutdown=5,
    )
    # uvicorn.run, with a server the service can end (it would exit 0 after a clean shutdown).
    server = end.server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if end.reason is not None:
        sys.exit(f"nfs-watcher-uploader: cannot start: {end.reason}")
    if not server.started:
        sys.exit("nfs-watcher-uploader: the server did not start (see the lines above)")
