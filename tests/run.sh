#!/usr/bin/env bash
# THE test command (README, .ci/run): builds the test images, (re)installs the plugin from this
# checkout, starts the test SSH server, runs every Rust test with a real Docker engine, tears down.
#
#   tests/run.sh [extra cargo test args, e.g. --test plugin_e2e -- --nocapture]
#
# Needs: a running dockerd, docker-compose, openssh-server/-client, busybox-static (.ci/run installs
# them). Settings: tests/docker/env.sh. Useful switches:
#   SSHFS_SKIP_PLUGIN_INSTALL=1   test the plugin already installed as $SSHFS_PLUGIN
#   SSHFS_KEEP_SSHD=1             leave the test SSH server running afterwards
#   SSHFS_PLUGIN_SETTINGS="k=v.." `docker plugin set` settings applied at install, e.g. a separate
#                                 state.source when another instance of the plugin runs here
#   SSHFS_CROSS=0                 skip the arm64/armv7 bundles and their qemu tests
#   SSHFS_SWARM=0|1               skip / force tests/swarm/multinode.sh (default: run it when no
#                                 cargo arguments are given)
#   SSHFS_WRITEBACK_SUITES=0|1    skip / force the fs and torture tests in write-back mode
#                                 (SSHFS_TEST_WRITEBACK=1; default: as SSHFS_SWARM)
# It starts from whatever Docker state it finds: leftovers of earlier runs (containers, volumes,
# services, compose projects named/labelled sshfs-e2e) are removed first; nothing else is touched.
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$REPO"
# shellcheck source=tests/docker/env.sh
source tests/docker/env.sh
# The end-to-end tests skip themselves unless this is set, so a bare `cargo test` on a machine
# without Docker still works; here they must run.
export SSHFS_E2E=1

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "run.sh: $*" >&2; }

for cmd in docker docker-compose cargo ssh-keygen busybox; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found (.ci/run installs everything needed)"
done
docker info >/dev/null 2>&1 || die "cannot talk to dockerd ('docker info' fails): start it (.ci/run does)"

# Everything the e2e tests create is named sshfs-e2e-* or labelled org.sshfs-test.e2e.
cleanup_owned() {
    # A run aborted in the middle of a disable/enable test may leave the plugin disabled, and
    # its volumes cannot be removed then.
    if [[ "$(docker plugin inspect -f '{{.Enabled}}' "$SSHFS_PLUGIN" 2>/dev/null)" == false ]]; then
        docker plugin enable "$SSHFS_PLUGIN" >/dev/null 2>&1 || true
    fi
    docker ps -aq --filter label=org.sshfs-test.e2e | xargs -r docker rm -f >/dev/null 2>&1 || true
    if [[ "$(docker info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null)" == active ]]; then
        docker service ls -q --filter name=sshfs-e2e- 2>/dev/null | xargs -r docker service rm >/dev/null 2>&1 || true
        # The swarm test records that it created the swarm; leave only a swarm we made.
        if [[ -e $SSHFS_TEST_DIR/swarm-created-by-e2e ]]; then
            sleep 2 # let service tasks release their volumes first
            docker swarm leave --force >/dev/null 2>&1 || true
        fi
    fi
    rm -f "$SSHFS_TEST_DIR/swarm-created-by-e2e"
    docker ps -aq --filter label=org.sshfs-test.e2e | xargs -r docker rm -f >/dev/null 2>&1 || true
    # Only volumes of the plugin under test: others may share this machine and the prefix.
    docker volume ls -q --filter "driver=$SSHFS_PLUGIN" | grep '^sshfs-e2e-' |
        xargs -r docker volume rm -f >/dev/null 2>&1 || true
}

teardown() {
    local rc=$?
    if [[ $rc != 0 ]]; then
        log "failed (exit $rc); the test SSH server's log ends with:"
        docker logs --tail 40 "$SSHFS_TEST_SSHD_CONTAINER" 2>&1 | sed 's/^/  sshd: /' >&2 || true
    fi
    cleanup_owned
    if [[ ${SSHFS_KEEP_SSHD:-0} != 1 ]]; then
        tests/docker/sshd.sh down >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap teardown EXIT

log "cleaning up leftovers of earlier runs"
cleanup_owned
# Remote files of earlier runs; the tests create their own subdirectories.
mkdir -p "$SSHFS_TEST_DIR"
rm -rf "${SSHFS_TEST_DIR:?}/data" "$SSHFS_TEST_DIR"/state-*

if [[ ${SSHFS_SKIP_PLUGIN_INSTALL:-0} != 1 ]]; then
    [[ -x ./build-rootfs.sh ]] || die "./build-rootfs.sh missing: cannot build the plugin"
    log "building and installing the plugin as $SSHFS_PLUGIN"
    # shellcheck disable=SC2086 # a list of key=value words
    ./build-rootfs.sh --install "$SSHFS_PLUGIN" ${SSHFS_PLUGIN_SETTINGS:-}
fi
[[ "$(docker plugin inspect -f '{{.Enabled}}' "$SSHFS_PLUGIN" 2>/dev/null)" == true ]] ||
    die "plugin $SSHFS_PLUGIN is not installed and enabled"

if [[ $SSHFS_CROSS == 1 ]]; then
    # The foreign-arch bundles whose binaries tests/cross_arch.rs runs under qemu-user.
    for arch in arm64 armv7; do
        log "building the $arch bundle (SSHFS_CROSS=0 skips this)"
        ./build-rootfs.sh --arch "$arch"
    done
fi

# dockerd's log carries the plugin's output; the DEBUG test checks it for secrets. Find it when
# dockerd writes to a plain file (as .ci/run starts it).
if [[ -z ${SSHFS_DOCKERD_LOG:-} ]]; then
    dockerd_pid=$(pidof dockerd 2>/dev/null | cut -d' ' -f1 || true)
    if [[ -n $dockerd_pid && -f "$(readlink -f "/proc/$dockerd_pid/fd/2" 2>/dev/null)" ]]; then
        SSHFS_DOCKERD_LOG=$(readlink -f "/proc/$dockerd_pid/fd/2")
        export SSHFS_DOCKERD_LOG
    fi
fi

log "starting the test SSH server"
tests/docker/sshd.sh up

log "running cargo test --release --no-fail-fast $*"
# --no-fail-fast: one failing test binary must not hide the results of the others.
rc=0
cargo test --release --no-fail-fast "$@" || rc=$?

# The filesystem suite and the torture test again in write-back mode (issue 13): every mount
# journals its changes, and the tests look at the server after an fsync of the mount. Part of a
# full run only, like the swarm test; SSHFS_WRITEBACK_SUITES=1 forces it, =0 skips it.
if [[ ${SSHFS_WRITEBACK_SUITES:-$(($# == 0))} == 1 ]]; then
    log "running the fs and torture tests in write-back mode"
    SSHFS_TEST_WRITEBACK=1 cargo test --release --no-fail-fast --test fs --test torture || rc=$?
fi

# The multi-node swarm test runs its own engines, registry and SSH server (README, Swarm); a run
# restricted to some cargo tests skips it, SSHFS_SWARM=1 forces it, SSHFS_SWARM=0 skips it.
if [[ ${SSHFS_SWARM:-$(($# == 0))} == 1 ]]; then
    log "running tests/swarm/multinode.sh"
    tests/swarm/multinode.sh || rc=$?
fi
exit "$rc"
