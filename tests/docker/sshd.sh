#!/usr/bin/env bash
# Runs the test SSH server of docker-compose.test.yml.
#   tests/docker/sshd.sh up       build images, prepare $SSHFS_TEST_DIR, start sshd, wait until it answers
#   tests/docker/sshd.sh down     stop and remove it (keeps $SSHFS_TEST_DIR)
#   tests/docker/sshd.sh restart  restart the container (same host keys)
#   tests/docker/sshd.sh rekey    restart with freshly generated host keys (host-key change tests)
#   tests/docker/sshd.sh logs     sshd's log
#   tests/docker/sshd.sh env      print the settings tests use
set -euo pipefail

HERE=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/docker/env.sh
source "$HERE/env.sh"

die() { echo "sshd.sh: $*" >&2; exit 1; }
log() { echo "sshd.sh: $*" >&2; }

compose() {
    docker-compose --project-directory "$REPO" -p "$SSHFS_TEST_PROJECT" -f "$REPO/docker-compose.test.yml" "$@"
}

prepare_dirs() {
    mkdir -p "$SSHFS_TEST_DIR"/{data,hostkeys,client}
    chmod 0755 "$SSHFS_TEST_DIR" "$SSHFS_TEST_DIR/data"
    # The host keys dir is the server's secret; the client dir doubles as the plugin's
    # sshkey.source (mounted at /root/.ssh), so both are root-only.
    chmod 0700 "$SSHFS_TEST_DIR/hostkeys" "$SSHFS_TEST_DIR/client"
    local key=$SSHFS_TEST_DIR/client/id_ed25519
    if [[ ! -s $key || ! -s $key.pub ]]; then
        rm -f "$key" "$key.pub"
        ssh-keygen -q -t ed25519 -N '' -C sshfs-e2e-client -f "$key"
    fi
    cp "$key.pub" "$SSHFS_TEST_DIR/client/authorized_keys"
    chmod 0644 "$SSHFS_TEST_DIR/client/authorized_keys"
}

# wait_ready: until sshd sends its banner on the port (sshd -D logs nothing on success).
wait_ready() {
    local deadline=$((SECONDS + 30)) banner
    while ((SECONDS < deadline)); do
        if [[ "$(docker inspect -f '{{.State.Running}}' "$SSHFS_TEST_SSHD_CONTAINER" 2>/dev/null)" != true ]]; then
            docker logs "$SSHFS_TEST_SSHD_CONTAINER" >&2 || true
            die "the sshd container $SSHFS_TEST_SSHD_CONTAINER is not running (log above)"
        fi
        if banner=$(timeout 2 bash -c "exec 3<>/dev/tcp/$SSHFS_TEST_HOST/$SSHFS_TEST_PORT && head -c 8 <&3" 2>/dev/null) &&
            [[ $banner == SSH-2.0* ]]; then
            log "sshd ready on $SSHFS_TEST_HOST:$SSHFS_TEST_PORT"
            return 0
        fi
        sleep 0.3
    done
    docker logs "$SSHFS_TEST_SSHD_CONTAINER" >&2 || true
    die "sshd did not answer on $SSHFS_TEST_HOST:$SSHFS_TEST_PORT within 30 s (is the port taken? log above)"
}

case "${1:-}" in
up)
    "$HERE/images.sh"
    prepare_dirs
    # A container of that name from another checkout or an older run would make compose fail.
    docker rm -f "$SSHFS_TEST_SSHD_CONTAINER" >/dev/null 2>&1 || true
    compose up -d --force-recreate sshd
    wait_ready
    ;;
down)
    compose down --remove-orphans --timeout 5 || docker rm -f "$SSHFS_TEST_SSHD_CONTAINER" >/dev/null 2>&1 || true
    ;;
restart)
    compose restart --timeout 5 sshd
    wait_ready
    ;;
rekey)
    compose stop --timeout 5 sshd
    rm -f "$SSHFS_TEST_DIR"/hostkeys/ssh_host_*
    compose start sshd
    wait_ready
    ;;
logs)
    docker logs "$SSHFS_TEST_SSHD_CONTAINER"
    ;;
env)
    env | grep -E '^SSHFS_(PLUGIN|TEST_)' | sort
    ;;
*)
    echo "usage: $0 up|down|restart|rekey|logs|env" >&2
    exit 2
    ;;
esac
