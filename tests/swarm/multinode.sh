#!/usr/bin/env bash
# The multi-node swarm test (issue 14): a real two-node swarm on this machine, built from two NEW
# Docker engines (the host's engine is never touched: it is shared and never joins a swarm).
#
#   tests/swarm/multinode.sh          (tests/run.sh runs it after the Rust suites)
#   SSHFS_SWARM_KEEP=1 tests/swarm/multinode.sh   leave the engines running afterwards (to look:
#                                     docker -H unix:///run/sshfs-swarm/m/docker.sock ...)
#   tests/swarm/multinode.sh down     tear such a kept swarm down
#
# Each engine has its own data root, exec root, pidfile, socket, containerd and network namespace:
#   manager  netns $P-m, address $NET.1   worker  netns $P-w, address $NET.2   ($P=sshfs-swarm)
# joined by one veth pair. Only the network namespace is separate (nsenter --net): the engines
# share the host's mount namespace, so their plugins' FUSE mounts show in /proc/self/mountinfo.
# In the manager's namespace run a registry (Debian's docker-registry) and the test SSH server
# (the sshfs-test/sshd image, on the manager engine, host network): both nodes reach them at
# $NET.1. The plugin is pushed to the registry and installed on both nodes from it. Then:
#   1. a service with two replicas, one per node, mounts a volume given by volume-driver +
#      volume-opt; each replica appends numbered lines to its own file: both files reach the server;
#   2. the worker is drained: its task moves to the manager, which mounts the volume; the worker
#      has no mount left; the moved file's sequence has no gap and holds every line the old task
#      reported as written;
#   3. the service is removed: no FUSE mount is left on either node;
#   4. scope: each node lists the volume once, as `local`; a volume made with `docker volume
#      create` on the manager is unknown to the worker (a service there without volume-opt gets
#      the plugin's "missing option sshcmd").
# Everything is torn down at the end, also on failure; leftovers of an aborted run are removed
# first. Settings: tests/docker/env.sh (SSHFS_SWARM_*). Timings of each phase go to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
cd "$REPO"
# shellcheck source=tests/docker/env.sh
source tests/docker/env.sh

P=$SSHFS_SWARM_PREFIX
NET=$SSHFS_SWARM_NET
M_ADDR=$NET.1
W_ADDR=$NET.2
REG_PORT=$SSHFS_SWARM_REGISTRY_PORT
SSHD_PORT=$SSHFS_SWARM_SSHD_PORT
PLUGIN=$SSHFS_PLUGIN
# What the nodes install: the plugin's name under the registry both reach. The manager pushes
# through localhost (dockerd speaks plain HTTP to localhost registries); the nodes pull through
# $M_ADDR, which their engines list as --insecure-registry (plain HTTP, as any registry that
# has no TLS certificate).
PUSH_REF=localhost:$REG_PORT/$PLUGIN
PULL_REF=$M_ADDR:$REG_PORT/$PLUGIN
DATA=/var/lib/$P # engines' data roots, plugin state, the server's files, the registry's blobs
RUN=/run/$P      # engines' sockets, exec roots, pidfiles, logs
SRV=$DATA/server # the test SSH server's /data
SVC=$P-svc
VOL=$P-vol
START=$SECONDS

log() { echo "multinode.sh: [$((SECONDS - START))s] $*" >&2; }
die() {
    echo "multinode.sh: FAILED: $*" >&2
    exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2' (.ci/run does)"; }

[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, dockerd, FUSE)"
need ip iproute2
need nsenter util-linux
need dockerd docker.io
need containerd containerd
need docker-registry docker-registry
((${#P} <= 12)) || die "SSHFS_SWARM_PREFIX='$P' is too long: interface names ($P-m0) have at most 15 characters"

# dk NODE ARGS...: the docker CLI against engine NODE (m or w).
dk() {
    local node=$1
    shift
    timeout 150 docker -H "unix://$RUN/$node/docker.sock" "$@"
}
# in_ns NODE CMD...: CMD in NODE's network namespace (and the host's mount namespace).
in_ns() {
    local node=$1
    shift
    nsenter "--net=/run/netns/$P-$node" "$@"
}
# wait_for SECONDS WHAT CMD...: until CMD succeeds, or fail saying WHAT did not happen.
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not happen within ${limit}s"
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------------------------
# Teardown (also the cleanup of an aborted run)

# alive PID: PID runs (a process of ours that exited stays a zombie until this shell exits).
# Reads only PID's own stat: `ps` reads every process's, and can block for long on another
# session's process stuck in a hung FUSE request.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}
# stop_pid FILE: SIGTERM the process recorded in FILE (if it is still one we started: its
# command line names our directories), then SIGKILL after 30 s.
stop_pid() {
    local file=$1 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "/$P"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            alive "$pid" || break
            sleep 0.2
        done
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            FORCED=1
        fi
    fi
    rm -f "$file"
}

teardown() {
    local node pid mp f all_recorded=1
    for f in "$RUN"/{m,w}/{dockerd,containerd}.pid "$RUN/registry.pid"; do
        [[ -s $f ]] || all_recorded=0
    done
    FORCED=0
    # dockerd stops its containers and plugins (the plugin unmounts its volumes) on SIGTERM;
    # then its containerd. Workers first, so the manager sees them leave.
    for node in w m; do
        stop_pid "$RUN/$node/dockerd.pid"
        stop_pid "$RUN/$node/containerd.pid"
    done
    stop_pid "$RUN/registry.pid"
    # After a killed engine or an aborted start, something may still run in our namespaces (a
    # shim, a container process): it was started by this test. Only then look: listing a
    # namespace's processes reads every process's namespace, which can take a minute while the
    # kernel tears down another namespace (seen here).
    for node in w m; do
        if [[ -e /run/netns/$P-$node ]] && ((FORCED || !all_recorded)); then
            for pid in $(ip netns pids "$P-$node" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        fi
    done
    # Mounts left below our directories (overlay layers, plugin rootfs, FUSE mounts of a killed
    # plugin, netns files), deepest first, lazily.
    awk -v d="$DATA/" -v r="$RUN/" 'index($5, d) == 1 || index($5, r) == 1 { print $5 }' /proc/self/mountinfo |
        awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- |
        while read -r mp; do umount -l "$mp" 2>/dev/null || true; done
    for node in w m; do
        ip netns del "$P-$node" 2>/dev/null || true
    done
    # The engines' --cgroup-parent directories (rmdir: only empty ones go).
    for mp in /sys/fs/cgroup/"$P"-[mw] /sys/fs/cgroup/*/"$P"-[mw]; do
        if [[ -d $mp ]]; then find "$mp" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
    done
    # --one-file-system: never descend into a mount that survived the unmounting above.
    rm -rf --one-file-system "$DATA" "$RUN"
}

on_exit() {
    local rc=$?
    if [[ $rc != 0 && -d $RUN ]]; then
        local f svc
        if [[ -S $RUN/m/docker.sock ]]; then
            for svc in $(dk m service ls -q 2>/dev/null); do
                echo "multinode.sh: docker service ps $svc:" >&2
                dk m service ps --no-trunc "$svc" 2>&1 | sed 's/^/  /' >&2 || true
            done
        fi
        for f in "$RUN"/m/dockerd.log "$RUN"/w/dockerd.log "$RUN"/registry.log; do
            [[ -s $f ]] || continue
            echo "multinode.sh: the end of $f:" >&2
            grep -vF 'level=debug' "$f" | tail -n 25 | sed 's/^/  /' >&2 || true
        done
    fi
    if [[ ${SSHFS_SWARM_KEEP:-0} == 1 ]]; then
        log "SSHFS_SWARM_KEEP=1: leaving the engines running (docker -H unix://$RUN/m/docker.sock ...; tests/swarm/multinode.sh down)"
    else
        teardown
        log "torn down"
    fi
    exit "$rc"
}

if [[ ${1:-} == down ]]; then
    teardown
    log "torn down"
    exit 0
fi
[[ $# == 0 ]] || die "usage: tests/swarm/multinode.sh [down]"
log "removing leftovers of an earlier run"
teardown
trap on_exit EXIT

# ---------------------------------------------------------------------------------------------
# The plugin bundle and the test images (both from this checkout, nothing pulled)

log "building the plugin bundle and the test images"
./build-rootfs.sh >/dev/null
# build-rootfs.sh puts this machine's bundle in plugin/<arch>/.
case "$(uname -m)" in aarch64) BUNDLE=plugin/arm64 ;; armv7l) BUNDLE=plugin/armv7 ;; *) BUNDLE=plugin/amd64 ;; esac
tests/docker/images.sh

# ---------------------------------------------------------------------------------------------
# Network: two namespaces joined by a veth pair

log "network: $P-m ($M_ADDR) <-> $P-w ($W_ADDR)"
ip netns add "$P-m"
ip netns add "$P-w"
ip link add "$P-m0" netns "$P-m" type veth peer name "$P-w0" netns "$P-w"
ip -n "$P-m" addr add "$M_ADDR/24" dev "$P-m0"
ip -n "$P-w" addr add "$W_ADDR/24" dev "$P-w0"
for node in m w; do
    ip -n "$P-$node" link set lo up
    ip -n "$P-$node" link set "$P-${node}0" up
done

# ---------------------------------------------------------------------------------------------
# Registry (in the manager's namespace, on every address there)

mkdir -p "$RUN" "$DATA/registry"
cat >"$RUN/registry.yml" <<EOF
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $DATA/registry } }
http: { addr: "0.0.0.0:$REG_PORT" }
EOF
setsid nsenter "--net=/run/netns/$P-m" docker-registry serve "$RUN/registry.yml" \
    >"$RUN/registry.log" 2>&1 </dev/null &
echo $! >"$RUN/registry.pid"
registry_answers() { in_ns w bash -c "exec 3<>/dev/tcp/$M_ADDR/$REG_PORT"; }
wait_for 30 "the registry answering on $M_ADDR:$REG_PORT (from the worker)" registry_answers

# ---------------------------------------------------------------------------------------------
# Engines

# start_engine NODE: containerd and dockerd of NODE in its namespace.
start_engine() {
    local node=$1 r=$RUN/$1 d=$DATA/$1
    mkdir -p "$r" "$d"
    cat >"$r/containerd.toml" <<EOF
version = 2
root = "$d/containerd"
state = "$r/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$r/containerd.sock"
[debug]
  address = ""
EOF
    setsid nsenter "--net=/run/netns/$P-$node" containerd --config "$r/containerd.toml" \
        >"$r/containerd.log" 2>&1 </dev/null &
    echo $! >"$r/containerd.pid"
    wait_for 30 "containerd of $node creating its socket" test -S "$r/containerd.sock"
    # An empty daemon.json: the host's /etc/docker/daemon.json is not this engine's.
    echo '{}' >"$r/daemon.json"
    setsid nsenter "--net=/run/netns/$P-$node" dockerd \
        --data-root "$d/docker" --exec-root "$r/exec" --pidfile "$r/dockerd.pid" \
        --host "unix://$r/docker.sock" --containerd "$r/containerd.sock" \
        --config-file "$r/daemon.json" --insecure-registry "$M_ADDR:$REG_PORT" \
        --cgroup-parent "/$P-$node" \
        >"$r/dockerd.log" 2>&1 </dev/null &
    wait_for 60 "dockerd of $node answering on $r/docker.sock" dk "$node" info
}
log "starting two engines"
start_engine m
start_engine w
# The images the service and the server run, from the host engine.
for node in m w; do
    docker save "$SSHFS_TEST_BUSYBOX_IMAGE" "$SSHFS_TEST_SSHD_IMAGE" | dk "$node" load >/dev/null
done

# ---------------------------------------------------------------------------------------------
# The test SSH server: on the manager engine, in the manager's namespace, at $M_ADDR:$SSHD_PORT

mkdir -p "$SRV/svc"
chown 1000:1000 "$SRV/svc"
dk m run -d --name "$P-sshd" --network host \
    -e SSHD_PORT="$SSHD_PORT" -e SSHD_LISTEN="$M_ADDR" -e TESTER_PASSWORD="$SSHFS_TEST_PASSWORD" \
    -v "$SRV:/data" "$SSHFS_TEST_SSHD_IMAGE" >/dev/null
sshd_answers() {
    local banner
    banner=$(in_ns w timeout 2 bash -c "exec 3<>/dev/tcp/$M_ADDR/$SSHD_PORT && head -c 8 <&3") && [[ $banner == SSH-2.0* ]]
}
wait_for 30 "the test SSH server answering on $M_ADDR:$SSHD_PORT (from the worker)" sshd_answers

# ---------------------------------------------------------------------------------------------
# The plugin: pushed by the manager, installed on both nodes from the registry

log "pushing $PUSH_REF"
# Through the manager's engine: the registry is reachable only inside the namespaces (a push
# helper using the docker CLI works the same with DOCKER_HOST=unix://$RUN/m/docker.sock).
dk m plugin create "$PUSH_REF" "$BUNDLE" >/dev/null
dk m plugin push "$PUSH_REF" >/dev/null
dk m plugin rm -f "$PUSH_REF" >/dev/null
for node in m w; do
    # Own state and key directories per node: the plugin locks its state, and the host's
    # /root/.ssh (known_hosts) has nothing to do with this test.
    mkdir -m 0700 "$DATA/state-$node" "$DATA/sshkey-$node"
    log "installing $PULL_REF as $PLUGIN on $node"
    dk "$node" plugin install --grant-all-permissions --alias "$PLUGIN" "$PULL_REF" \
        "state.source=$DATA/state-$node" "sshkey.source=$DATA/sshkey-$node" >/dev/null
    [[ $(dk "$node" plugin inspect -f '{{.Enabled}}' "$PLUGIN") == true ]] || die "$PLUGIN is not enabled on $node"
done

# fuse_mounts NODE: FUSE mount points under NODE's plugin's propagated mount (in the mount
# namespace of NODE's dockerd, which is the host's).
fuse_mounts() {
    local node=$1 id root pid
    id=$(dk "$node" plugin inspect -f '{{.Id}}' "$PLUGIN")
    root=$DATA/$node/docker/plugins/$id/propagated-mount/
    pid=$(cat "$RUN/$node/dockerd.pid")
    awk -v root="$root" '{ split($0, p, " - "); split(p[2], t, " ") }
        index($5, root) == 1 && t[1] ~ /^fuse/ { print $5 }' "/proc/$pid/mountinfo" | sort -u
}

# active_mounts NODE: how many mounts of the volume NODE's plugin counts (its Status).
active_mounts() { dk "$1" volume inspect -f '{{.Status.active_mounts}}' "$VOL"; }
# expect_mounts M W: the manager's and the worker's plugin count M and W mounts of the volume.
expect_mounts() {
    local m w
    m=$(active_mounts m) w=$(active_mounts w)
    [[ $m == "$1" && $w == "$2" ]] || die "active mounts of $VOL: manager $m, worker $w (expected $1 and $2)"
}

# ---------------------------------------------------------------------------------------------
# The swarm

log "swarm: manager $M_ADDR, worker $W_ADDR"
dk m swarm init --advertise-addr "$M_ADDR" --listen-addr "$M_ADDR:2377" >/dev/null
TOKEN=$(dk m swarm join-token -q worker)
dk w swarm join --token "$TOKEN" --advertise-addr "$W_ADDR" --listen-addr "$W_ADDR:2377" "$M_ADDR:2377" >/dev/null
MID=$(dk m info -f '{{.Swarm.NodeID}}')
WID=$(dk w info -f '{{.Swarm.NodeID}}')
worker_ready() { [[ $(dk m node inspect -f '{{.Status.State}}' "$WID") == ready ]]; }
wait_for 60 "the worker becoming ready in the swarm" worker_ready
# Both engines have the same hostname (one machine): place by label, one value per node.
dk m node update --label-add "$P.node=manager" "$MID" >/dev/null
dk m node update --label-add "$P.node=worker" "$WID" >/dev/null

# ---------------------------------------------------------------------------------------------
# 1. Two replicas, one per node, each appending to its own file

# Appends "N NODE-ID" lines to /data/slot-SLOT.log, numbering on from the file's last line (so a
# moved task continues its predecessor's sequence), and logs "wrote N" once the append returned.
# shellcheck disable=SC2016 # expanded by the container's shell
APPEND='trap "exit 0" TERM
f=/data/slot-$SLOT.log
i=$(tail -n 1 "$f" 2>/dev/null | cut -d" " -f1)
i=${i:-0}
while true; do
    i=$((i + 1))
    echo "$i $NODE" >>"$f" || exit 1
    echo "wrote $i"
    sleep 0.2
done'
log "service $SVC: 2 replicas, volume $VOL by volume-driver/volume-opt"
dk m service create --detach --name "$SVC" --replicas 2 \
    --placement-pref "spread=node.labels.$P.node" \
    --env 'SLOT={{.Task.Slot}}' --env 'NODE={{.Node.ID}}' \
    --stop-grace-period 5s --no-resolve-image \
    --mount "type=volume,source=$VOL,target=/data,volume-driver=$PLUGIN,volume-opt=sshcmd=tester@$M_ADDR:/data/svc,volume-opt=port=$SSHD_PORT,volume-opt=password=$SSHFS_TEST_PASSWORD" \
    "$SSHFS_TEST_BUSYBOX_IMAGE" sh -c "$APPEND" >/dev/null

# running_tasks: "NODE-ID SLOT" of each running task of the service.
running_tasks() {
    local ids
    ids=$(dk m service ps -q --filter desired-state=running "$SVC")
    [[ -n $ids ]] || return 0
    # shellcheck disable=SC2086 # a list of task IDs
    dk m inspect --type task -f '{{if eq .Status.State "running"}}{{.NodeID}} {{.Slot}}{{end}}' $ids | grep . || true
}
# lines SLOT: the lines of slot SLOT's file on the server.
lines() { cat "$SRV/svc/slot-$1.log" 2>/dev/null || true; }
# last_node SLOT: the node ID on the last line of slot SLOT's file.
last_node() { lines "$1" | tail -n 1 | cut -d' ' -f2; }
count() { lines "$1" | wc -l; }

one_per_node() {
    local t
    t=$(running_tasks)
    [[ $(grep -c . <<<"$t") == 2 ]] && grep -q "^$MID " <<<"$t" && grep -q "^$WID " <<<"$t"
}
wait_for 120 "one running task on each node" one_per_node
TASKS=$(running_tasks)
M_SLOT=$(grep "^$MID " <<<"$TASKS" | cut -d' ' -f2)
W_SLOT=$(grep "^$WID " <<<"$TASKS" | cut -d' ' -f2)
log "slot $M_SLOT runs on the manager, slot $W_SLOT on the worker"
both_files_grow() {
    (($(count "$M_SLOT") >= 10 && $(count "$W_SLOT") >= 10)) &&
        [[ $(last_node "$M_SLOT") == "$MID" && $(last_node "$W_SLOT") == "$WID" ]]
}
wait_for 60 "both replicas' files reaching the server (10 lines each, from their own node)" both_files_grow
for node in m w; do
    [[ -n $(fuse_mounts "$node") ]] || die "no FUSE mount of the plugin on $node while its task runs"
done
expect_mounts 1 1
log "both files reach the server: slot-$M_SLOT.log from the manager, slot-$W_SLOT.log from the worker"

# ---------------------------------------------------------------------------------------------
# 2. Drain the worker: its task moves to the manager

before=$(count "$W_SLOT")
log "draining the worker ($before lines in slot-$W_SLOT.log)"
DRAIN_START=$SECONDS
dk m node update --availability drain "$WID" >/dev/null
moved() {
    local t
    t=$(running_tasks)
    [[ $(grep -c "^$MID " <<<"$t") == 2 ]] && [[ $(last_node "$W_SLOT") == "$MID" ]] &&
        (($(count "$W_SLOT") >= before + 10))
}
wait_for 120 "slot $W_SLOT moving to the manager and appending there" moved
log "slot $W_SLOT runs on the manager after $((SECONDS - DRAIN_START))s"
worker_unmounted() { [[ -z $(fuse_mounts w) ]]; }
wait_for 30 "the worker unmounting the volume after its task left" worker_unmounted
[[ -n $(fuse_mounts m) ]] || die "the manager has no FUSE mount of the volume"
# Both tasks on the manager use its one FUSE mount of the volume.
expect_mounts 2 0

# check_sequence SLOT: the numbers in slot SLOT's file are 1..max without a gap (a number may
# repeat where the moved task started before its predecessor had stopped). One snapshot of the
# file, which is still growing.
check_sequence() {
    local slot=$1 numbers max uniq total
    numbers=$(lines "$slot" | cut -d' ' -f1)
    total=$(wc -l <<<"$numbers")
    max=$(sort -n <<<"$numbers" | tail -n 1)
    uniq=$(sort -nu <<<"$numbers" | wc -l)
    sort -nu <<<"$numbers" | awk 'NR != $1 { exit 1 }' ||
        die "slot-$slot.log is not the sequence 1..$max: $uniq distinct numbers"
    log "slot-$slot.log: 1..$max without a gap ($((total - uniq)) repeated at the hand-over)"
}
check_sequence "$M_SLOT"
check_sequence "$W_SLOT"
# Every append the worker's task saw succeed is on the server, as written by the worker.
old=$(dk w ps -aq --filter "label=com.docker.swarm.service.name=$SVC")
[[ -n $old ]] || die "the worker's stopped task container is gone: cannot read what it wrote"
reported=$(dk w logs "$old" 2>&1 | awk '$1 == "wrote" { print $2 }')
[[ -n $reported ]] || die "the worker's task logged no write"
missing=$(comm -23 <(sort -u <<<"$reported") <(lines "$W_SLOT" | awk -v n="$WID" '$2 == n { print $1 }' | sort -u))
[[ -z $missing ]] || die "writes the worker's task saw succeed are not on the server: $(head -c 200 <<<"$missing")"
log "all $(wc -l <<<"$reported") appends the worker's task reported are on the server"

# ---------------------------------------------------------------------------------------------
# 3. Remove the service: no mount left on either node

log "removing the service"
dk m service rm "$SVC" >/dev/null
no_task_containers() {
    [[ -z $(dk m ps -aq --filter "label=com.docker.swarm.service.name=$SVC") ]] &&
        [[ -z $(dk w ps -aq --filter "label=com.docker.swarm.service.name=$SVC") ]]
}
wait_for 60 "the service's containers going away on both nodes" no_task_containers
no_mounts() { [[ -z $(fuse_mounts m) && -z $(fuse_mounts w) ]]; }
wait_for 30 "both nodes unmounting the volume" no_mounts
expect_mounts 0 0
log "no FUSE mount left on either node"

# ---------------------------------------------------------------------------------------------
# 4. Scope: what each node knows of the volume

for node in m w; do
    listed=$(dk "$node" volume ls -q --filter "driver=$PLUGIN" | grep -cx "$VOL" || true)
    [[ $listed == 1 ]] || die "$node lists $VOL $listed times (expected once, its own record)"
    scope=$(dk "$node" volume inspect -f '{{.Scope}}' "$VOL")
    [[ $scope == local ]] || die "$node shows $VOL with scope '$scope', expected local"
done
log "each node lists $VOL once, scope local"
# A volume created on the manager only: the worker has no record of it and no options for it.
dk m volume create -d "$PLUGIN" -o "sshcmd=tester@$M_ADDR:/data/svc" -o "port=$SSHD_PORT" \
    -o "password=$SSHFS_TEST_PASSWORD" "$VOL-manager-only" >/dev/null
[[ -z $(dk w volume ls -q --filter "name=$VOL-manager-only") ]] || die "the worker lists a volume created on the manager"
dk m node update --availability active "$WID" >/dev/null
dk m service create --detach --name "$SVC-2" --restart-condition none --no-resolve-image \
    --constraint "node.labels.$P.node==worker" --constraint "node.role==worker" \
    --mount "type=volume,source=$VOL-manager-only,target=/data,volume-driver=$PLUGIN" \
    "$SSHFS_TEST_BUSYBOX_IMAGE" true >/dev/null
task_error() { dk m service ps --no-trunc --format '{{.Error}}' "$SVC-2" | grep -q 'missing option sshcmd'; }
wait_for 60 "the worker's task failing with the plugin's 'missing option sshcmd'" task_error
log "a volume created on the manager only is unknown to the worker: give volume-opt in the service"
dk m service rm "$SVC-2" >/dev/null

log "PASSED in $((SECONDS - START))s"
