#!/usr/bin/env bash
# Builds the two container images the Docker benchmark (benches/docker.sh) runs its workloads in,
# without any registry (assembled from this machine's binaries and `docker import`ed, as
# tests/docker/images.sh does):
#   sshfs-bench/busybox:latest  busybox-static only: the tools small images ship (tar, cat, rm, dd)
#   sshfs-bench/debian:latest   GNU tar, coreutils cp, git (with its git-core helpers) and their
#                               shared libraries from this machine, plus busybox for sh/dd/find
# Each image carries a hash of its inputs in a label: a rerun with nothing changed is a no-op.
#
# Usage: benches/images.sh [--force]      (remove with: docker image rm sshfs-bench/busybox sshfs-bench/debian)
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
BUSYBOX_IMAGE=${BENCH_BUSYBOX_IMAGE:-sshfs-bench/busybox:latest}
DEBIAN_IMAGE=${BENCH_DEBIAN_IMAGE:-sshfs-bench/debian:latest}
HASH_LABEL=org.sshfs-bench.inputs
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

die() { echo "images.sh: $*" >&2; exit 1; }
log() { echo "images.sh: $*" >&2; }

command -v docker >/dev/null || die "docker not found"
BUSYBOX=$(command -v busybox) || die "busybox not found: apt-get install busybox-static"
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked: apt-get install busybox-static"
GIT=/usr/bin/git
GIT_CORE=/usr/lib/git-core
[[ -x $GIT && -d $GIT_CORE ]] || die "Debian's git not found ($GIT, $GIT_CORE): apt-get install git"
[[ -x /usr/bin/tar && -x /usr/bin/cp ]] || die "GNU tar / coreutils missing"

WORK=$(mktemp -d /tmp/sshfs-bench-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

current_hash() { docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true; }

import_rootfs() {
    local root=$1 image=$2 hash=$3
    tar --numeric-owner -C "$root" -c . |
        docker import --change "LABEL $HASH_LABEL=$hash" --change 'CMD ["/bin/sh"]' \
            --change 'ENV PATH=/usr/bin:/bin HOME=/tmp' - "$image" >/dev/null
    log "built $image ($(du -sh "$root" | cut -f1) rootfs)"
}

# skeleton ROOT: directories, passwd/group, the files Docker bind-mounts over.
skeleton() {
    local root=$1
    mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev,data,in}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
}

# add_busybox ROOT: busybox at /bin/busybox, an applet link for each name that has no file yet.
add_busybox() {
    local root=$1 applet
    install -D -m 0755 "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ -e $root/bin/$applet || -L $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
}

# add_libs ROOT FILE...: every shared library ldd lists for each ELF FILE, at the same path.
add_libs() {
    local root=$1 f lib
    shift
    for f in "$@"; do
        while read -r lib; do
            [[ -e $root$lib ]] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
        done < <(ldd "$f" 2>/dev/null | grep -oE '/[^ ]+' | grep -v ':$' || true)
    done
}

build_busybox() {
    local hash root
    hash=$( { sha256sum "$SELF" "$BUSYBOX"; } | sha256sum | cut -c1-32)
    if [[ $FORCE == 0 && $(current_hash "$BUSYBOX_IMAGE") == "$hash" ]]; then
        log "$BUSYBOX_IMAGE is up to date"; return
    fi
    root=$WORK/busybox
    skeleton "$root"
    add_busybox "$root"
    import_rootfs "$root" "$BUSYBOX_IMAGE" "$hash"
}

build_debian() {
    local hash root f elves=()
    hash=$( { sha256sum "$SELF" "$BUSYBOX" /usr/bin/tar /usr/bin/cp "$GIT";
        dpkg-query -W -f '${Package}=${Version}\n' git tar coreutils libc6 2>/dev/null; } |
        sha256sum | cut -c1-32)
    if [[ $FORCE == 0 && $(current_hash "$DEBIAN_IMAGE") == "$hash" ]]; then
        log "$DEBIAN_IMAGE is up to date"; return
    fi
    root=$WORK/debian
    # Merged /usr as on Debian 12, so the paths ldd prints (/lib/x86_64-linux-gnu/...,
    # /lib64/ld-linux-x86-64.so.2) are valid in the image.
    mkdir -p "$root"/usr/{bin,lib,lib64}
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    skeleton "$root"
    rmdir "$root/bin" && ln -s usr/bin "$root/bin"
    install -m 0755 /usr/bin/tar /usr/bin/cp "$GIT" "$root/usr/bin/"
    # git runs its helpers from git-core (hard links to git mostly; cp -a keeps them linked).
    cp -a "$GIT_CORE" "$root/usr/lib/"
    [[ -d /usr/share/git-core/templates ]] && mkdir -p "$root/usr/share/git-core" &&
        cp -a /usr/share/git-core/templates "$root/usr/share/git-core/"
    elves=(/usr/bin/tar /usr/bin/cp "$GIT")
    while IFS= read -r -d '' f; do
        head -c 4 "$f" | grep -q ELF && elves+=("$f")
    done < <(find "$GIT_CORE" -maxdepth 1 -type f -print0)
    add_libs "$root" "${elves[@]}"
    add_busybox "$root"
    import_rootfs "$root" "$DEBIAN_IMAGE" "$hash"
}

build_busybox
build_debian
