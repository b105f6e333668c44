#!/usr/bin/env bash
# Builds the managed plugin bundle of one architecture: plugin/<arch>/config.json +
# plugin/<arch>/rootfs/ (one static binary and the few files a rootfs needs). Nothing is pulled
# from a registry.
#
#   ./build-rootfs.sh [--arch A]                        # build plugin/<arch>/ only
#   ./build-rootfs.sh --install [NAME] [KEY=VALUE...]   # also (re)create and enable the plugin
#   ./build-rootfs.sh [--arch A] --push REGISTRY/NAME:TAG   # create it under that name and push
#
# A is amd64, arm64 or armv7 (default: this machine's). Foreign ones need `rustup target add`
# and Debian's cross gcc (gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf; .cargo/config.toml).
# NAME defaults to vendor/sshfs:latest. KEY=VALUE pairs are applied with `docker plugin set`
# before enabling, e.g. DEBUG=1 state.source=/srv/sshfs-state sshkey.source=/home/me/.ssh.
# An existing plugin of that name is replaced; its volumes and state survive (state lives in
# the state.source directory on the host). --push leaves no local plugin of that name behind
# (install it from the registry). SSHFS_BUILD_VERSION=X sets the version the plugin reports.
set -euo pipefail

cd "$(dirname "$0")"

NAME=vendor/sshfs:latest
ACTION=build
ARCH=
PUSH_REF=
SETTINGS=()

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
die() { echo "build-rootfs.sh: $*" >&2; exit 2; }

host_arch() {
    case "$(uname -m)" in
        x86_64) echo amd64 ;;
        aarch64 | arm64) echo arm64 ;;
        armv7l | armv8l) echo armv7 ;;
        *) echo "unsupported-$(uname -m)" ;;
    esac
}

while [ $# -gt 0 ]; do
    case "$1" in
        --install) ACTION=install ;;
        --push)
            [ $# -ge 2 ] || die "--push needs a plugin reference, e.g. localhost:5000/vendor/sshfs:0.1.0"
            ACTION=push; PUSH_REF="$2"; shift ;;
        --arch)
            [ $# -ge 2 ] || die "--arch needs one of amd64, arm64, armv7"
            ARCH="$2"; shift ;;
        --arch=*) ARCH="${1#--arch=}" ;;
        -h|--help) usage; exit 0 ;;
        *=*) SETTINGS+=("$1") ;;
        -*) echo "build-rootfs.sh: unknown flag $1" >&2; usage >&2; exit 2 ;;
        *)
            [ "$ACTION" = install ] || die "a plugin name is only taken after --install (or --push REF)"
            NAME="$1" ;;
    esac
    shift
done
case "$NAME" in *:*) ;; *) NAME="$NAME:latest" ;; esac
HOST_ARCH=$(host_arch)
ARCH=${ARCH:-$HOST_ARCH}

# Rust target, and the prefix of Debian's cross binutils for it (empty: the host's own).
case "$ARCH" in
    amd64) TARGET=x86_64-unknown-linux-gnu; TOOLS=x86_64-linux-gnu- ;;
    arm64) TARGET=aarch64-unknown-linux-gnu; TOOLS=aarch64-linux-gnu- ;;
    armv7) TARGET=armv7-unknown-linux-gnueabihf; TOOLS=arm-linux-gnueabihf- ;;
    *) die "unknown --arch '$ARCH': use amd64, arm64 or armv7" ;;
esac
if [ "$ARCH" = "$HOST_ARCH" ]; then TOOLS=; fi
if [ "$ACTION" = install ] && [ "$ARCH" != "$HOST_ARCH" ]; then
    die "--install installs on this machine ($HOST_ARCH) only: Docker runs no foreign-arch plugin. Push the $ARCH bundle with --push REF and install it on the $ARCH machine"
fi
if [ "$ACTION" = push ] && [ ${#SETTINGS[@]} -gt 0 ]; then
    die "settings (${SETTINGS[*]}) are given at install time: docker plugin install REF KEY=VALUE..."
fi
if [ -n "$TOOLS" ]; then
    command -v "${TOOLS}gcc" >/dev/null ||
        die "${TOOLS}gcc not found: apt-get install gcc-${TOOLS%-} (cross compiler for $ARCH)"
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$TARGET"; then
        die "the Rust target $TARGET is not installed: rustup target add $TARGET"
    fi
fi

OUT=plugin/$ARCH
TARGET_DIR=${CARGO_TARGET_DIR:-target}
VERSION=${SSHFS_BUILD_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}

echo "==> building the static binary ($TARGET, version $VERSION)"
started=$SECONDS
# crt-static: one self-contained binary; the rootfs has no libc. SSHFS_BUILD_VERSION, if set,
# reaches the build through the environment (src/version.rs).
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TARGET" --bin docker-volume-sshfs
BIN="$TARGET_DIR/$TARGET/release/docker-volume-sshfs"
echo "==> built in $((SECONDS - started)) s"
# readelf reads any architecture's ELF: a static binary has no interpreter and no NEEDED.
if readelf -lW "$BIN" | grep -q 'program interpreter' || readelf -dW "$BIN" | grep -q '(NEEDED)'; then
    echo "build-rootfs.sh: $BIN is not statically linked; check RUSTFLAGS" >&2
    exit 1
fi

echo "==> assembling $OUT/rootfs"
ROOTFS=$OUT/rootfs
rm -rf "$OUT"
mkdir -p "$ROOTFS"
for d in etc mnt/state mnt/volumes root/.ssh run/docker/plugins tmp dev proc sys; do
    mkdir -p "$ROOTFS/$d"
done
chmod 0700 "$ROOTFS/root" "$ROOTFS/root/.ssh" "$ROOTFS/mnt/state"
chmod 1777 "$ROOTFS/tmp"
install -m 0755 "$BIN" "$ROOTFS/docker-volume-sshfs"
# Symbols are not needed at run time; panics still name the message and location.
if command -v "${TOOLS}strip" >/dev/null; then "${TOOLS}strip" "$ROOTFS/docker-volume-sshfs"; fi
# With network type host, Docker bind-mounts the host's files over these two: they must exist.
: > "$ROOTFS/etc/hosts"
: > "$ROOTFS/etc/resolv.conf"
echo 'root:x:0:0:root:/root:/docker-volume-sshfs' > "$ROOTFS/etc/passwd"
echo 'root:x:0:' > "$ROOTFS/etc/group"
# dockerd refuses to create a plugin whose rootfs is byte-identical to one it already has
# ("content sha256:...: already exists"): the build stamp makes each bundle unique, so the same
# build can be installed next to itself or pushed under several tags.
printf 'version=%s\narch=%s\nbuilt=%s\n' "$VERSION" "$ARCH" "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" \
    > "$ROOTFS/etc/sshfs-build"
cp config.json "$OUT/config.json"

# What a registry stores and a user downloads is the gzipped rootfs layer.
packed=$(tar -C "$ROOTFS" -cf - . | gzip -6 | wc -c)
echo "==> $ARCH rootfs: $(du -sh "$ROOTFS" | cut -f1) ($(du -sh "$ROOTFS/docker-volume-sshfs" | cut -f1) binary), $((packed / 1024)) KiB gzipped"

case "$ACTION" in
    build)
        echo "Bundle ready in $OUT/. Install with: $0 --install [NAME], or push with: $0 --arch $ARCH --push REGISTRY/NAME:TAG"
        exit 0 ;;
    push)
        if docker plugin inspect "$PUSH_REF" >/dev/null 2>&1; then
            die "a local plugin $PUSH_REF exists already: push under another tag, or remove it first (docker plugin rm -f $PUSH_REF)"
        fi
        echo "==> pushing $PUSH_REF"
        docker plugin create "$PUSH_REF" "$OUT" >/dev/null
        pushed=0
        docker plugin push "$PUSH_REF" && pushed=1
        # The local copy only carried the push; left here it would block `docker plugin install`.
        docker plugin rm -f "$PUSH_REF" >/dev/null
        [ "$pushed" = 1 ] || { echo "build-rootfs.sh: docker plugin push $PUSH_REF failed (output above)" >&2; exit 1; }
        echo "Pushed. Install with: docker plugin install --grant-all-permissions --alias vendor/sshfs $PUSH_REF"
        exit 0 ;;
esac

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
docker plugin create "$NAME" "$OUT" >/dev/null
if [ ${#SETTINGS[@]} -gt 0 ]; then
    docker plugin set "$NAME" "${SETTINGS[@]}"
fi
docker plugin enable "$NAME" >/dev/null
docker plugin ls --filter enabled=true | grep -F "${NAME%:latest}" || true
echo "Installed. Try: docker volume create -d $NAME -o sshcmd=user@host:/path -o password=... myvol"
