"""The `esnac` command line: run the coordinator, and drive it through its REST API.

    esnac serve                      the API, scheduler and dashboard (SQLite + local Ray default)
    esnac db upgrade                 bring the database schema up to date
    esnac teacher train|register|list|show
    esnac submit / status / watch / results / cancel / export
    esnac demo                       everything above on this machine, offline, in a few minutes

Client commands read the server from `--url` / `ESNAC_URL` (default http://127.0.0.1:8000) and
the token from `--token` / `ESNAC_API_TOKEN`. Errors from the server are printed as the server
worded them, and the command exits non-zero.

Modules: `parser` (arguments, `main`), `commands` (client commands), `admin` (serve, db),
`demo`, `client` (HTTP client and errors), `render` (tables and the progress bar). The local
server the demo and the tests start lives in `service.devserver`.
"""

from __future__ import annotations

from service.cli.client import CliError
from service.cli.commands import job_body
from service.cli.parser import build_parser, main

__all__ = ["CliError", "build_parser", "job_body", "main"]
