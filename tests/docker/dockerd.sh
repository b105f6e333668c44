#!/usr/bin/env bash
# Makes sure a Docker engine answers, for machines without an init system (CI, a fresh VM):
# if `docker info` fails, starts dockerd in the background (it starts its own containerd), waits
# up to 60 s for it and, if it does not come up, prints the end of its log. Used by .ci/run and
# try.sh.
#
#   tests/docker/dockerd.sh LOG    LOG: the file a dockerd started here writes its output to
#
# Exits 0 once an engine answers, 1 if none does.
set -euo pipefail

LOG=${1:?usage: tests/docker/dockerd.sh LOGFILE}

log() { echo "dockerd.sh: $*" >&2; }
answers() { docker info >/dev/null 2>&1; }
version() { docker version -f '{{.Server.Version}}' 2>/dev/null || echo unknown; }

if answers; then
    log "using the running Docker engine ($(version))"
    exit 0
fi
log "starting dockerd (log: $LOG)"
nohup dockerd >"$LOG" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if answers; then
        log "dockerd $(version) answers"
        exit 0
    fi
    sleep 1
done
log "dockerd did not come up within 60 s; the end of $LOG:"
tail -n 50 "$LOG" >&2 || true
exit 1
