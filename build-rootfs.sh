#!/usr/bin/env bash
# Builds the managed plugin bundle: plugin/config.json + plugin/rootfs/ (one static binary and
# the few files a rootfs needs). Nothing is pulled from a registry.
#
#   ./build-rootfs.sh                                  # build plugin/ only
#   ./build-rootfs.sh --install [NAME] [KEY=VALUE...]  # also (re)create and enable the plugin
#
# NAME defaults to vendor/sshfs:latest. KEY=VALUE pairs are applied with `docker plugin set`
# before enabling, e.g. DEBUG=1 state.source=/srv/sshfs-state sshkey.source=/home/me/.ssh.
# An existing plugin of that name is replaced; its volumes and state survive (state lives in
# the state.source directory on the host).
set -euo pipefail

cd "$(dirname "$0")"

TARGET=x86_64-unknown-linux-gnu
NAME=vendor/sshfs:latest
INSTALL=0
SETTINGS=()

usage() { sed -n '2,11s/^# \{0,1\}//p' "$0"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --install) INSTALL=1 ;;
        -h|--help) usage; exit 0 ;;
        *=*) SETTINGS+=("$1") ;;
        -*) echo "build-rootfs.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
        *)
            if [ "$INSTALL" != 1 ]; then
                echo "build-rootfs.sh: a plugin name is only taken after --install" >&2; exit 2
            fi
            NAME="$1" ;;
    esac
    shift
done
case "$NAME" in *:*) ;; *) NAME="$NAME:latest" ;; esac

echo "==> building the static binary ($TARGET)"
# crt-static: one self-contained binary; the rootfs has no libc.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TARGET"
BIN="target/$TARGET/release/docker-volume-sshfs"
if ldd "$BIN" 2>&1 | grep -q '=>'; then
    echo "build-rootfs.sh: $BIN is not statically linked; check RUSTFLAGS" >&2
    exit 1
fi

echo "==> assembling plugin/rootfs"
ROOTFS=plugin/rootfs
rm -rf "$ROOTFS" plugin/config.json
mkdir -p "$ROOTFS"
for d in etc mnt/state mnt/volumes root/.ssh run/docker/plugins tmp dev proc sys; do
    mkdir -p "$ROOTFS/$d"
done
chmod 0700 "$ROOTFS/root" "$ROOTFS/root/.ssh" "$ROOTFS/mnt/state"
chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$BIN" "$ROOTFS/docker-volume-sshfs"
# Symbols are not needed at run time; panics still name the message and location.
if command -v strip >/dev/null; then strip "$ROOTFS/docker-volume-sshfs"; fi
# With network type host, Docker bind-mounts the host's files over these two: they must exist.
: > "$ROOTFS/etc/hosts"
: > "$ROOTFS/etc/resolv.conf"
echo 'root:x:0:0:root:/root:/docker-volume-sshfs' > "$ROOTFS/etc/passwd"
echo 'root:x:0:' > "$ROOTFS/etc/group"
cp config.json plugin/config.json

echo "==> rootfs size: $(du -sh "$ROOTFS" | cut -f1) ($(du -sh "$ROOTFS/docker-volume-sshfs" | cut -f1) binary)"

if [ "$INSTALL" != 1 ]; then
    echo "Bundle ready in plugin/. Install with: $0 --install [NAME]"
    exit 0
fi

# The default mount sources must exist on the host or `docker plugin enable` fails.
state_src=/var/lib/docker/plugins/sshfs-state
key_src=/root/.ssh
for kv in "${SETTINGS[@]+"${SETTINGS[@]}"}"; do
    case "$kv" in
        state.source=*) state_src="${kv#state.source=}" ;;
        sshkey.source=*) key_src="${kv#sshkey.source=}" ;;
    esac
done
mkdir -p -m 0700 "$state_src"
mkdir -p -m 0700 "$key_src"

echo "==> installing $NAME"
if docker plugin inspect "$NAME" >/dev/null 2>&1; then
    echo "replacing the existing $NAME (its volumes and state are kept)"
    docker plugin disable -f "$NAME" >/dev/null 2>&1 || true
    docker plugin rm -f "$NAME" >/dev/null
fi
docker plugin create "$NAME" plugin/ >/dev/null
if [ ${#SETTINGS[@]} -gt 0 ]; then
    docker plugin set "$NAME" "${SETTINGS[@]}"
fi
docker plugin enable "$NAME" >/dev/null
docker plugin ls --filter enabled=true | grep -F "${NAME%:latest}" || true
echo "Installed. Try: docker volume create -d $NAME -o sshcmd=user@host:/path -o password=... myvol"
