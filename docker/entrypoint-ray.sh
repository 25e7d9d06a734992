#!/usr/bin/env bash
# Ray node container.
#
#   entrypoint-ray.sh head     the head node (GCS on RAY_PORT, dashboard on RAY_DASHBOARD_PORT)
#   entrypoint-ray.sh worker   a GPU worker that waits for RAY_HEAD_ADDRESS and joins it
#   entrypoint-ray.sh CMD...   anything else runs as given
#
# RAY_HEAD_CPUS / RAY_HEAD_GPUS     resources the head offers to trials (default 0: head only)
# RAY_WORKER_CPUS / RAY_WORKER_GPUS resources of one worker (default: all CPUs, all visible GPUs)
set -euo pipefail
here=$(dirname "$0")

count_gpus() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

case "${1:-}" in
    head)
        exec ray start --head --block --disable-usage-stats \
            --port="${RAY_PORT:-6379}" \
            --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
            --num-cpus="${RAY_HEAD_CPUS:-0}" --num-gpus="${RAY_HEAD_GPUS:-0}"
        ;;
    worker)
        head=${RAY_HEAD_ADDRESS:-ray-head:6379}
        "$here/wait-for.sh" -t "${WAIT_FOR_TIMEOUT:-120}" "$head"
        gpus=${RAY_WORKER_GPUS:-$(count_gpus)}
        cpus=()
        [ -n "${RAY_WORKER_CPUS:-}" ] && cpus=(--num-cpus="$RAY_WORKER_CPUS")
        exec ray start --address="$head" --block --disable-usage-stats \
            --num-gpus="$gpus" "${cpus[@]}"
        ;;
    *)
        exec "$@"
        ;;
esac
