#!/usr/bin/env bash
# Wait until every HOST:PORT accepts TCP connections, then run the command after `--`.
#
#   wait-for.sh [-t SECONDS] HOST:PORT [HOST:PORT ...] [-- COMMAND ARGS...]
#
# Exits 1 (naming the address that never answered) when the deadline passes, so a container
# stops with a readable log instead of crash-looping inside the application.
set -euo pipefail

timeout=${WAIT_FOR_TIMEOUT:-120}
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -t|--timeout) timeout="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *:*) targets+=("$1"); shift ;;
        *) echo "wait-for: expected HOST:PORT, got '$1'" >&2; exit 2 ;;
    esac
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "wait-for: give at least one HOST:PORT" >&2
    exit 2
fi

deadline=$((SECONDS + timeout))
for target in "${targets[@]}"; do
    host=${target%:*}
    port=${target##*:}
    until (exec 3<>"/dev/tcp/${host}/${port}") 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "wait-for: ${host}:${port} did not accept connections within ${timeout}s" >&2
            exit 1
        fi
        sleep 1
    done
    echo "wait-for: ${host}:${port} is up"
done

if [ $# -gt 0 ]; then
    exec "$@"
fi
