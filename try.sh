#!/usr/bin/env bash
# One-command try-out on a fresh Debian machine (as root): starts a Docker engine if none runs
# (installing docker.io if missing), builds and installs the plugin, starts the local test SSH
# server from docker-compose.test.yml, creates a volume on it, writes from one container and
# reads from another. Prints every step and how to clean up.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"
# shellcheck source=tests/docker/env.sh
source tests/docker/env.sh

step() { printf '\n==> %s\n' "$*"; }
die() { echo "try.sh: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: installing a Docker plugin and mounting FUSE need it"

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v docker-compose >/dev/null || need_pkgs+=(docker-compose)
command -v ssh-keygen >/dev/null || need_pkgs+=(openssh-client)
[[ -x /bin/busybox ]] || need_pkgs+=(busybox-static)
if ((${#need_pkgs[@]})); then
    step "installing ${need_pkgs[*]} with apt-get"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need_pkgs[@]}" build-essential pkg-config cmake
fi
command -v cargo >/dev/null || die "no cargo: install a Rust toolchain (https://rustup.rs) first"

step "a Docker engine (started if none runs; log: /var/log/dockerd-try.log)"
tests/docker/dockerd.sh /var/log/dockerd-try.log || die "dockerd did not start (its log above)"

step "building and installing the plugin as $SSHFS_PLUGIN"
./build-rootfs.sh --install "$SSHFS_PLUGIN"

step "starting the test SSH server on $SSHFS_TEST_HOST:$SSHFS_TEST_PORT (docker-compose.test.yml)"
tests/docker/sshd.sh up

# The demo server's key was generated just now: pin it, so that a known_hosts entry left for
# this address by an earlier server (the plugin reads the sshkey mount's known_hosts) cannot
# make the demo fail. Real servers are pinned on first use instead.
HOSTKEY=$(ssh-keygen -lf "$SSHFS_TEST_DIR/hostkeys/ssh_host_ed25519_key.pub" | awk '{print $2}')
[[ $HOSTKEY == SHA256:* ]] || die "cannot read the demo server's host key"

VOL=sshfs-try
step "creating volume $VOL (the password goes in a file under sshkey.source in real use)"
docker volume rm "$VOL" >/dev/null 2>&1 || true
set -x
docker volume create -d "$SSHFS_PLUGIN" \
    -o sshcmd="tester@$SSHFS_TEST_HOST:/data" -o port="$SSHFS_TEST_PORT" \
    -o password="$SSHFS_TEST_PASSWORD" -o hostkey="$HOSTKEY" "$VOL"
docker run --rm --network none -v "$VOL:/data" "$SSHFS_TEST_BUSYBOX_IMAGE" \
    sh -c 'echo "hello from container 1 at $(date)" > /data/hello.txt'
docker run --rm --network none -v "$VOL:/data" "$SSHFS_TEST_BUSYBOX_IMAGE" cat /data/hello.txt
docker volume inspect "$VOL" --format '{{json .Status}}'
{ set +x; } 2>/dev/null

step "the same file on the server side: $SSHFS_TEST_DIR/data/hello.txt"
cat "$SSHFS_TEST_DIR/data/hello.txt"

cat <<EOT

Done. The plugin is installed as $SSHFS_PLUGIN; the test SSH server keeps running.
Clean up with:
  docker volume rm $VOL                # forgets the volume; the remote file stays
  tests/docker/sshd.sh down            # stops the test SSH server
  docker plugin disable $SSHFS_PLUGIN && docker plugin rm $SSHFS_PLUGIN
Run the test suite with:
  tests/run.sh
EOT
