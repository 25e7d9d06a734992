"""Run the API + scheduler with uvicorn (`esnac serve`, `python -m service.server`)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from service.db.migrate import SchemaError, check
from service.settings import Settings

__all__ = ["UnsafeBindError", "is_loopback", "serve"]


class UnsafeBindError(RuntimeError):
    """A non-loopback bind without an API token."""


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(settings: Settings | None = None, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API (and run the scheduler) until interrupted.

    Raises:
        UnsafeBindError: `host` is not loopback and no `ESNAC_API_TOKEN` is configured.
        SchemaError: the database schema is missing or outdated (run `esnac db upgrade`).
    """
    import uvicorn

    from service.app import create_app

    settings = settings or Settings()
    if not settings.api_token and not is_loopback(host):
        raise UnsafeBindError(
            f"refusing to listen on {host}: without an API token anyone who can reach it could "
            "submit jobs. Set ESNAC_API_TOKEN, or bind to 127.0.0.1."
        )
    check(settings.database_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(Settings(), args.host, args.port)
    except (UnsafeBindError, SchemaError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
