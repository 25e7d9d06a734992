#!/usr/bin/env bash
# Coordinator container: wait for Postgres and the Ray head, join the Ray cluster as a node
# without resources (a Ray driver needs a local raylet), then run the given esnac command.
#
# ESNAC_DATABASE_URL   postgresql+psycopg://user:pass@HOST:PORT/db  (HOST:PORT is waited for)
# ESNAC_RAY_ADDRESS    HOST:PORT of the Ray head's GCS; empty: a local Ray inside the container
set -euo pipefail
here=$(dirname "$0")

# host:port of a SQLAlchemy URL; empty for SQLite.
db_target() {
    python - "$1" <<'PY'
import sys
from sqlalchemy.engine import make_url

url = make_url(sys.argv[1])
if url.get_backend_name() != "sqlite":
    print(f"{url.host or '127.0.0.1'}:{url.port or 5432}")
PY
}

targets=()
if [ -n "${ESNAC_DATABASE_URL:-}" ]; then
    db=$(db_target "$ESNAC_DATABASE_URL")
    [ -n "$db" ] && targets+=("$db")
fi
ray_address=${ESNAC_RAY_ADDRESS:-}
if [ -n "$ray_address" ] && [ "${ray_address#ray://}" = "$ray_address" ]; then
    targets+=("$ray_address")
fi
if [ ${#targets[@]} -gt 0 ]; then
    "$here/wait-for.sh" -t "${WAIT_FOR_TIMEOUT:-120}" "${targets[@]}"
fi

if [ -n "$ray_address" ] && [ "${ray_address#ray://}" = "$ray_address" ] && [ "${1:-}" = "esnac" ] \
        && [ "${2:-}" = "serve" ]; then
    ray start --address="$ray_address" --num-cpus=0 --num-gpus=0 --disable-usage-stats
fi

exec "$@"
