#!/usr/bin/env bash
# Builds the local images the end-to-end tests use, without any registry:
#   sshfs-test/busybox:latest  containers that use the volumes (busybox-static + passwd with nobody)
#   sshfs-test/sshd:latest     the test SSH server (OpenSSH from this machine's Debian packages)
# Both are assembled as a rootfs tarball and `docker import`ed. Each image carries a label with a
# hash of its inputs (this script, the files it copies in, package versions/binaries), so a rerun
# with nothing changed is a no-op and a changed input rebuilds.
#
# Usage: tests/docker/images.sh [--force]
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
# shellcheck source=tests/docker/env.sh
source "$HERE/env.sh"
# The sshd settings all test servers share; the image's /etc/ssh/sshd_config.
SSHD_CONFIG=$(readlink -f "$HERE/../sshd/sshd_config.common")

BUSYBOX_IMAGE=$SSHFS_TEST_BUSYBOX_IMAGE
SSHD_IMAGE=$SSHFS_TEST_SSHD_IMAGE
HASH_LABEL=org.sshfs-test.inputs
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die() { echo "images.sh: $*" >&2; exit 1; }
log() { echo "images.sh: $*" >&2; }

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install the Debian package '$2' (.ci/run does)"
}
need_cmd docker docker.io
need_cmd busybox busybox-static
need_cmd dpkg-query dpkg
need_cmd ldconfig libc-bin
[[ -x /usr/sbin/sshd ]] || die "/usr/sbin/sshd not found; install openssh-server (.ci/run does)"
[[ -x /usr/bin/ssh-keygen ]] || die "/usr/bin/ssh-keygen not found; install openssh-client"

# The busybox binary must be static: it is copied into images without any libraries.
BUSYBOX=$(command -v busybox)
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static (not busybox)"
fi

WORK=$(mktemp -d /tmp/sshfs-test-images.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# current_hash IMAGE -> the input hash label of IMAGE, empty if the image is absent.
current_hash() {
    docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true
}

# import ROOT IMAGE HASH [--change ...]: tar ROOT up and import it as IMAGE.
import_rootfs() {
    local root=$1 image=$2 hash=$3
    shift 3
    tar --numeric-owner -C "$root" -c . |
        docker import --change "LABEL $HASH_LABEL=$hash" "$@" - "$image" >/dev/null
    log "built $image ($(du -sh "$root" | cut -f1) rootfs)"
}

# add_busybox ROOT: busybox at /bin/busybox and a symlink for every applet that has no file yet.
add_busybox() {
    local root=$1 applet
    install -D -m 0755 "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ -e "$root/bin/$applet" || -L "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
    done
}

build_busybox() {
    local hash root
    hash=$( { sha256sum "$SELF"; sha256sum "$BUSYBOX"; } | sha256sum | cut -c1-32)
    if [[ $FORCE == 0 && "$(current_hash "$BUSYBOX_IMAGE")" == "$hash" ]]; then
        log "$BUSYBOX_IMAGE is up to date"
        return
    fi
    root=$WORK/busybox
    mkdir -p "$root"/{bin,etc,root,tmp,proc,sys,dev}
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    add_busybox "$root"
    # root and nobody: the allow_other test runs a container as `-u nobody`.
    cat >"$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
    cat >"$root/etc/group" <<'GR'
root:x:0:
nogroup:x:65534:
GR
    # Docker bind-mounts these over the files, but they must exist in the image.
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    import_rootfs "$root" "$BUSYBOX_IMAGE" "$hash" --change 'CMD ["/bin/sh"]'
}

# copy_with_libs ROOT FILE...: copy each file to the same path in ROOT, plus every shared library
# ldd lists for it (symlinks resolved, so the copy needs no link targets).
copy_with_libs() {
    local root=$1 f lib
    shift
    for f in "$@"; do
        install -D -m 0755 "$f" "$root$f"
        while read -r lib; do
            [[ -e "$root$lib" ]] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
        done < <(ldd "$f" | grep -oE '/[^ ]+' | grep -v '^/.*:$' || true)
    done
}

build_sshd() {
    local hash root versions
    versions=$(dpkg-query -W -f '${Package}=${Version}\n' openssh-server openssh-sftp-server \
        openssh-client libc6 busybox-static) || die "openssh-server/openssh-client/busybox-static not installed"
    hash=$( { sha256sum "$SELF" "$HERE/sshd-entrypoint.sh" "$SSHD_CONFIG"; echo "$versions"; } |
        sha256sum | cut -c1-32)
    if [[ $FORCE == 0 && "$(current_hash "$SSHD_IMAGE")" == "$hash" ]]; then
        log "$SSHD_IMAGE is up to date"
        return
    fi
    root=$WORK/sshd
    # Merged /usr like Debian 12, so library paths from ldd (/lib/..., /lib64/...) and the
    # binaries' paths (/usr/sbin/sshd) are all valid in the image.
    mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{etc/ssh,root,tmp,proc,sys,dev,run/sshd,home/tester,data,var/empty}
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s usr/lib64 "$root/lib64"
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/root"
    chmod 0755 "$root/run/sshd"
    copy_with_libs "$root" /usr/sbin/sshd /usr/lib/openssh/sftp-server /usr/bin/ssh-keygen
    add_busybox "$root"
    [[ -f /etc/ssh/moduli ]] && cp /etc/ssh/moduli "$root/etc/ssh/moduli"
    install -m 0644 "$SSHD_CONFIG" "$root/etc/ssh/sshd_config"
    install -D -m 0755 "$HERE/sshd-entrypoint.sh" "$root/usr/local/bin/sshd-entrypoint"
    # No /etc/ld.so.cache otherwise: let the loader find the copied libraries by cache, whatever
    # its built-in search path.
    find "$root/usr/lib" -name '*.so*' -printf '%h\n' | sed "s|^$root||" | sort -u >"$root/etc/ld.so.conf"
    ldconfig -r "$root"
    # Users: root and tester (uid 1000) log in with passwords set at start; sshd is the
    # privilege-separation user. Shadow entries are locked until the entrypoint sets them.
    cat >"$root/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privsep:/run/sshd:/usr/sbin/nologin
tester:x:1000:1000:tester:/home/tester:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PW
    cat >"$root/etc/group" <<'GR'
root:x:0:
tester:x:1000:
nogroup:x:65534:
GR
    cat >"$root/etc/shadow" <<'SH'
root:!:19000:0:99999:7:::
sshd:!:19000:0:99999:7:::
tester:!:19000:0:99999:7:::
nobody:!:19000:0:99999:7:::
SH
    chmod 0640 "$root/etc/shadow"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' >"$root/etc/nsswitch.conf"
    : >"$root/etc/hosts"
    : >"$root/etc/resolv.conf"
    chown 1000:1000 "$root/home/tester"
    chmod 0755 "$root/home/tester"
    import_rootfs "$root" "$SSHD_IMAGE" "$hash" \
        --change 'ENTRYPOINT ["/usr/local/bin/sshd-entrypoint"]'
}

build_busybox
build_sshd
