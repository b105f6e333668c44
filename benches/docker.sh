#!/usr/bin/env bash
# Benchmark through Docker: the workloads run INSIDE containers that use the volume, side by side
# for four peers on one throwaway loopback OpenSSH server, at emulated round-trip times:
#   ours           the installed managed plugin (./build-rootfs.sh --install, own name and state)
#   ours-wb        the same plugin with -o writeback=yes (journaled locally, replayed later)
#   sshfs          the C sshfs mounted on the host, bind-mounted into the containers (-v DIR:/data)
#   rclone         rclone's Docker plugin (`rclone serve docker`, legacy socket), default VFS mode
#   rclone-writes  the same with -o vfs-cache-mode=writes (answers from a local disk cache)
# Run as root; see benches/README.md for what each figure means.
#
#   ./benches/docker.sh                       # 256 MiB file, 2,000-file tree, RTT 0 and 10 ms
#   BENCH_RTTS="0 10 50" ./benches/docker.sh
#   BENCH_QUICK=1 ./benches/docker.sh         # smoke run: small sizes, a few minutes
#   BENCH_SCALE=1 ./benches/docker.sh         # add the scale section (200 volumes, 100k entries, 10 GiB)
#
# Knobs: BENCH_RTTS, BENCH_FILES (tree for tar/cat/rm/cp), BENCH_GIT_FILES (files of the git
# checkout), BENCH_SIZE_MB (sequential file), BENCH_PEERS (subset of "ours ours-wb sshfs rclone
# rclone-writes"), BENCH_TIMEOUT (seconds a workload may take, default 3600), BENCH_SETTLE
# (seconds to wait for written data to reach the server, default 600), BENCH_OUT (also write the
# tables there), BENCH_NO_BUILD=1 (no cargo build of latency-proxy; the plugin bundle is still
# built by build-rootfs.sh, a no-op when up to date), BENCH_PLUGIN (plugin name, default
# sshfs-bench/sshfs:latest), BENCH_STATE (its state.source, default /var/lib/sshfs-bench-state),
# BENCH_KEEP_PLUGIN=1 (leave the plugin installed), BENCH_RCLONE_OPTS (extra rclone volume options,
# space-separated, e.g. sftp-disable-hashcheck=true), BENCH_SSHFS_OPTS (extra sshfs -o options), BENCH_SSHD_PORT (default 2422; proxies use
# the next ports), BENCH_SCALE_VOLUMES (200), BENCH_SCALE_ENTRIES (100000), BENCH_SCALE_GIB (10).
set -euo pipefail
# Braces: bash reads the whole script before running it, so editing it during a run is safe.
{

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    : "${BENCH_SIZE_MB:=16}" "${BENCH_FILES:=50}" "${BENCH_GIT_FILES:=50}" "${BENCH_RTTS:=0 10}"
    : "${BENCH_SCALE_VOLUMES:=20}" "${BENCH_SCALE_ENTRIES:=10000}" "${BENCH_SCALE_GIB:=1}"
fi
SIZE_MB=${BENCH_SIZE_MB:-256}
FILES=${BENCH_FILES:-2000}
GIT_FILES=${BENCH_GIT_FILES:-3000}
RTTS=${BENCH_RTTS:-0 10}
PEERS=${BENCH_PEERS:-ours ours-wb sshfs rclone rclone-writes}
TIMEOUT=${BENCH_TIMEOUT:-3600}
SETTLE=${BENCH_SETTLE:-600}
PLUGIN=${BENCH_PLUGIN:-sshfs-bench/sshfs:latest}
STATE=${BENCH_STATE:-/var/lib/sshfs-bench-state}
SSHD_PORT=${BENCH_SSHD_PORT:-2422}
SCALE=${BENCH_SCALE:-0}
SCALE_VOLUMES=${BENCH_SCALE_VOLUMES:-200}
SCALE_ENTRIES=${BENCH_SCALE_ENTRIES:-100000}
SCALE_GIB=${BENCH_SCALE_GIB:-10}
# Extra rclone volume options, e.g. "sftp-disable-hashcheck=true" (rclone runs `md5sum` on the
# server over an ssh exec channel after every upload by default).
RCLONE_OPTS=()
for o in ${BENCH_RCLONE_OPTS:-}; do RCLONE_OPTS+=(-o "$o"); done
RCLONE_DRIVER=rclone-bench
RCLONE_SOCK=/run/docker/plugins/$RCLONE_DRIVER.sock
BUSYBOX_IMAGE=sshfs-bench/busybox:latest
DEBIAN_IMAGE=sshfs-bench/debian:latest
LABEL=org.sshfs-bench=$$
TAG=sshfs-bench-$$ # prefix of every volume and container this run creates

[[ $(id -u) == 0 ]] || { echo "run as root (FUSE mounts, drop_caches, docker)" >&2; exit 1; }
for t in docker /usr/sbin/sshd ssh-keygen sshfs rclone python3 busybox; do
    command -v "$t" >/dev/null ||
        { echo "missing $t (apt-get install docker.io openssh-server openssh-client sshfs rclone python3 busybox-static)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "dockerd does not answer (tests/docker/dockerd.sh starts one)" >&2; exit 1; }

log() { echo "[docker-bench $(date +%H:%M:%S)] $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

W=$(mktemp -d /tmp/sshfs-bench.XXXXXX)
chmod 0755 "$W"
PIDS=()     # background processes of ours (sshd, proxies, sshfs, rclone): killed on exit
VOLS=()     # docker volumes created and not yet removed (see rmvol)
SSHFS_MNTS=()
RCLONE_PID=
PLUGIN_INSTALLED=0

# mounts_under DIR: mount points below DIR, deepest first (from mountinfo: no stat, no hang).
mounts_under() { awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }

cleanup() {
    set +e
    log "cleaning up"
    docker ps -aq --filter "label=$LABEL" | xargs -r docker rm -f >/dev/null 2>&1
    for v in "${VOLS[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1; done
    for m in "${SSHFS_MNTS[@]}"; do umount -l "$m" 2>/dev/null; done
    if [[ $PLUGIN_INSTALLED == 1 && ${BENCH_KEEP_PLUGIN:-0} != 1 ]]; then
        docker plugin disable -f "$PLUGIN" >/dev/null 2>&1
        docker plugin rm -f "$PLUGIN" >/dev/null 2>&1
        rm -rf "$STATE"
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    [[ -n $RCLONE_PID ]] && rm -f "$RCLONE_SOCK"
    for m in $(mounts_under "$W"); do umount -l "$m" 2>/dev/null; done
    # The servers' and clients' logs outlive the run (the data does not).
    rm -rf /tmp/sshfs-bench-logs
    mkdir -p /tmp/sshfs-bench-logs
    cp "$W"/*.log /tmp/sshfs-bench-logs/ 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
# rmvol NAME: removes a volume this run made and forgets it. The cleanup must not remove it a
# second time: dockerd asks every volume driver it has seen about an unknown name, and retries a
# vanished one's socket (an earlier run's rclone) for about 15 s each time.
rmvol() {
    local v keep=()
    docker volume rm -f "$1" >/dev/null 2>&1 || return 1
    for v in "${VOLS[@]}"; do [[ $v == "$1" ]] || keep+=("$v"); done
    VOLS=("${keep[@]}")
}
trap 'exit 130' INT TERM

# ---- build: latency-proxy, the images, the plugin bundle ----
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    cargo build --release --bin latency-proxy >&2
fi
PROXY=$ROOT/target/release/latency-proxy
[[ -x $PROXY ]] || { echo "no $PROXY: cargo build --release --bin latency-proxy" >&2; exit 1; }
"$ROOT/benches/images.sh" >&2

# ---- the server: a throwaway sshd on 127.0.0.1:$SSHD_PORT (the plugin runs with host network) ----
# port_free PORT: nothing listens on 127.0.0.1:PORT (a leftover server would answer with old keys).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free "$SSHD_PORT" || { echo "port $SSHD_PORT is taken (BENCH_SSHD_PORT picks another)" >&2; exit 1; }
mkdir -p /run/sshd "$W/data" "$W/keys" "$W/in" "$W/mnt" "$W/wl"
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$W/keys/id_ed25519"
cp "$W/keys/id_ed25519.pub" "$W/authorized_keys"
/usr/sbin/sshd -D -e -f "$ROOT/tests/sshd/sshd_config.common" -o "Port=$SSHD_PORT" \
    -o ListenAddress=127.0.0.1 -o "HostKey=$W/hostkey" -o "PidFile=$W/sshd.pid" \
    -o "AuthorizedKeysFile=$W/authorized_keys" -o "Subsystem=sftp /usr/lib/openssh/sftp-server" \
    -o LogLevel=ERROR 2>"$W/sshd.log" &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break
    sleep 0.05
done
(exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null ||
    { echo "sshd did not start on $SSHD_PORT: $(cat "$W/sshd.log")" >&2; exit 1; }

# ---- our plugin, installed under its own name with its own state and key directory ----
have_peer() { [[ " $PEERS " == *" $1 "* ]]; }
PLUGIN_PID=
if have_peer ours || have_peer ours-wb || [[ $SCALE == 1 ]]; then
    log "building and installing $PLUGIN (state $STATE, keys $W/keys)"
    mkdir -p "$STATE"
    ./build-rootfs.sh --install "$PLUGIN" "state.source=$STATE" "sshkey.source=$W/keys" >"$W/build-rootfs.log" 2>&1 ||
        { tail -20 "$W/build-rootfs.log" >&2; exit 1; }
    PLUGIN_INSTALLED=1
    PLUGIN_ID=$(docker plugin inspect -f '{{.Id}}' "$PLUGIN")
    # The plugin's process: the docker-volume-sshfs whose cgroup names the plugin's id.
    for _ in $(seq 100); do
        for p in $(pgrep -x docker-volume-s); do
            grep -q "$PLUGIN_ID" "/proc/$p/cgroup" 2>/dev/null && PLUGIN_PID=$p
        done
        [[ -n $PLUGIN_PID ]] && break
        sleep 0.1
    done
    [[ -n $PLUGIN_PID ]] || { echo "cannot find the process of plugin $PLUGIN ($PLUGIN_ID)" >&2; exit 1; }
    log "plugin pid $PLUGIN_PID ($(docker plugin inspect -f '{{.PluginReference}}' "$PLUGIN"))"
fi

# ---- rclone serve docker, on its own legacy socket (driver name $RCLONE_DRIVER) ----
if have_peer rclone || have_peer rclone-writes; then
    [[ -e $RCLONE_SOCK ]] && { echo "$RCLONE_SOCK exists: another rclone-bench runs?" >&2; exit 1; }
    : >"$W/rclone.conf"
    rclone serve docker --socket-addr "$RCLONE_SOCK" --base-dir "$W/rclone-volumes" \
        --cache-dir "$W/rclone-cache" --config "$W/rclone.conf" -v >"$W/rclone.log" 2>&1 &
    RCLONE_PID=$!
    PIDS+=("$RCLONE_PID")
    for _ in $(seq 100); do [[ -S $RCLONE_SOCK ]] && break; sleep 0.1; done
    [[ -S $RCLONE_SOCK ]] || { echo "rclone serve docker did not start: $(cat "$W/rclone.log")" >&2; exit 1; }
    log "rclone serve docker pid $RCLONE_PID ($(rclone version | head -1))"
fi

# ---- test data, in $W/in (bind-mounted read-only at /in in every container) ----
log "generating a ${SIZE_MB} MiB file, a ${FILES}-file tree and a ${GIT_FILES}-file git repository"
dd if=/dev/urandom of="$W/in/big.bin" bs=1M count="$SIZE_MB" status=none
# make_tree DIR N: N files of 0-16 KiB, 10 to a directory: up to 40 x 5 directories (the
# 2,000-file tree of benches/run.sh), fewer for a smaller tree, whose per-file figures would
# otherwise be mostly the directories' (200 files in 240 directories).
make_tree() {
    python3 - "$1" "$2" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
tops = max(1, min(40, n // 50))
for i in range(n):
    d = os.path.join(root, f"dir{i % tops:02d}", f"sub{(i // tops) % 5}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
        f.write(r.randbytes(r.randrange(0, 16384)))
EOF
}
make_tree "$W/in/tree" "$FILES"
tar -C "$W/in" -cf "$W/in/tree.tar" tree
tar -C "$W/in" -cf "$W/in/gnutree.tar" --transform 's,^tree,gnutree,' tree
TREE_BYTES=$(du -sb --apparent-size "$W/in/tree" | cut -f1)
# The git repository: text files (source-like, so packs compress), one commit, a bare clone.
python3 - "$W/gitsrc" "$GIT_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(11)
words = [f"w{i}" for i in range(4000)]
for i in range(n):
    d = os.path.join(root, f"mod{i % 50:02d}", f"pkg{(i // 50) % 8}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"src{i:05d}.c"), "w") as f:
        for _ in range(r.randrange(5, 300)):
            f.write(" ".join(r.choice(words) for _ in range(8)) + ";\n")
EOF
git -C "$W/gitsrc" init -q
git -C "$W/gitsrc" add -A
git -C "$W/gitsrc" -c user.name=bench -c user.email=bench@localhost commit -qm tree
git clone -q --bare "$W/gitsrc" "$W/in/repo.git"
GIT_BYTES=$(du -sb --apparent-size --exclude=.git "$W/gitsrc" | cut -f1)
rm -rf "$W/gitsrc"

# The workload scripts the containers run (sh, in /in/wl). run.sh times one with /proc/uptime
# (the container's clock, no docker exec overhead) and prints "ELAPSED t0 t1 RC rc".
mkdir -p "$W/in/wl"
cat >"$W/in/wl/run.sh" <<EOF
read t0 _ </proc/uptime
timeout $TIMEOUT sh "/in/wl/\$1.sh" >/tmp/wl.out 2>&1
rc=\$?
read t1 _ </proc/uptime
tail -c 400 /tmp/wl.out
echo "ELAPSED \$t0 \$t1 RC \$rc"
EOF
echo 'dd if=/in/big.bin of=/data/seqwrite.bin bs=1M conv=fsync' >"$W/in/wl/seqwrite.sh"
echo 'dd if=/data/seqread.bin of=/dev/null bs=1M' >"$W/in/wl/seqread.sh"
echo 'cd /data && tar -xf /in/tree.tar' >"$W/in/wl/bbuntar.sh"
echo 'find /data/tree -type f -exec cat {} + >/dev/null' >"$W/in/wl/bbread.sh"
echo 'rm -rf /data/tree' >"$W/in/wl/bbrm.sh"
echo '/usr/bin/tar -C /data -xf /in/gnutree.tar' >"$W/in/wl/gnutar.sh"
echo '/usr/bin/cp -a /in/tree /data/cptree' >"$W/in/wl/cpa.sh"
echo 'HOME=/tmp git clone -q /in/repo.git /data/gitco' >"$W/in/wl/git.sh"

# ---- process figures ----
CLK_TCK=$(getconf CLK_TCK)
# ticks PID...: utime+stime+cutime+cstime of each pid and of its children.
ticks() {
    local total=0 p c t
    for p in "$@"; do
        for c in "$p" $(pgrep -P "$p" 2>/dev/null); do
            t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$c/stat" 2>/dev/null || echo 0)
            total=$((total + t))
        done
    done
    echo "$total"
}
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
# requests VOLUME: the SFTP requests our client has sent for VOLUME and the round trips they
# took (Status.requests, Status.round_trips: requests sent while none was in flight).
requests() {
    docker volume inspect -f '{{json .Status}}' "$1" 2>/dev/null |
        python3 -c 'import json, sys; s = json.load(sys.stdin); print(s.get("requests", 0), s.get("round_trips", 0))' 2>/dev/null || echo 0 0
}

# ---- results ----
declare -A RES CPU REQ RTS
SCALE_LINES=()
ROWS=() # "key|label|unit|kind|bytes|files"; kind: time (lower is better), rate (higher), settle
add_row() {
    local r
    for r in "${ROWS[@]}"; do [[ ${r%%|*} == "${1%%|*}" ]] && return 0; done
    ROWS+=("$1")
}

# sshfs_ssh PORT: the ssh that the sshfs on PORT started. sshfs forks twice to start it, so it
# is not sshfs's child (pgrep -P misses it) and its CPU and memory must be added by hand.
sshfs_ssh() {
    local pid
    for _ in $(seq 50); do
        pid=$(pgrep -n -f -- "^ssh .*-oPort=$1 .* sftp\$") && { echo "$pid"; return 0; }
        sleep 0.1
    done
    log "cannot find the ssh of the sshfs on port $1: its CPU and RSS are left out"
}
# peer_ticks PEER: CPU ticks so far of the client processes that serve PEER.
peer_ticks() {
    case $1 in
        ours | ours-wb) ticks "$PLUGIN_PID" ;;
        sshfs) ticks "$SSHFS_PID" "$SSHFS_SSH_PID" ;;
        rclone*) ticks "$RCLONE_PID" ;;
    esac
}

# check_remote KEY DIR: exits 0 when what the workload KEY wrote is all on the server in DIR
# (the peer's remote directory); prints what is missing otherwise.
check_remote() {
    local key=$1 r=$2 n b
    case $key in
        seqwrite)
            b=$(stat -c %s "$r/seqwrite.bin" 2>/dev/null || echo 0)
            [[ $b == $((SIZE_MB * 1048576)) ]] || { echo "$b of $((SIZE_MB * 1048576)) bytes on the server"; return 1; } ;;
        bbuntar | gnutar | cpa)
            local d
            d=$r/$(case $key in bbuntar) echo tree ;; gnutar) echo gnutree ;; cpa) echo cptree ;; esac)
            n=$(find "$d" -type f 2>/dev/null | wc -l)
            [[ $n == "$FILES" ]] || { echo "$n of $FILES files on the server"; return 1; } ;;
        bbrm)
            [[ ! -e $r/tree ]] || { echo "$(find "$r/tree" -type f 2>/dev/null | wc -l) files left on the server"; return 1; } ;;
        git)
            n=$(find "$r/gitco" -path "$r/gitco/.git" -prune -o -type f -print 2>/dev/null | wc -l)
            [[ $n == "$GIT_FILES" ]] || { echo "$n of $GIT_FILES files on the server"; return 1; } ;;
    esac
    return 0
}

# workload PEER RTT KEY CONTAINER VOLUME REMOTE: runs /in/wl/KEY.sh in CONTAINER, records its time
# (or FAIL (reason)), the client CPU and our request count around it, and for workloads that
# write, the time until all of it is on the server.
workload() {
    local peer=$1 rtt=$2 key=$3 ctr=$4 vol=$5 remote=$6
    local c0 c1 q0 q1 t0 out el rc reason="" why
    [[ $key == seqread || $key == bbread ]] && drop_caches
    c0=$(peer_ticks "$peer")
    [[ $peer == ours ]] && q0=$(requests "$vol")
    t0=$(now)
    out=$(docker exec "$ctr" sh /in/wl/run.sh "$key" 2>&1) || true
    el=$(awk '/^ELAPSED/ { printf "%.2f", $3 - $2 }' <<<"$out")
    rc=$(awk '/^ELAPSED/ { print $5 }' <<<"$out")
    if [[ -z $el ]]; then
        reason=$(tr '\n' ' ' <<<"$out" | cut -c1-60)
    elif [[ $rc != 0 ]]; then
        reason="rc $rc: $(grep -v '^ELAPSED' <<<"$out" | tail -1 | cut -c1-50)"
        [[ $rc == 124 || $rc == 143 ]] && reason="timeout ${TIMEOUT}s"
    fi
    if [[ -z $reason ]]; then
        RES["$rtt|$key|$peer"]=$el
        # Until it is on the server: poll for up to $SETTLE s (rclone-writes uploads later).
        case $key in seqwrite | bbuntar | bbrm | gnutar | cpa | git)
            local deadline
            deadline=$(awk -v t="$(now)" -v s="$SETTLE" 'BEGIN { printf "%.3f", t + s }')
            while ! why=$(check_remote "$key" "$remote"); do
                if awk -v t="$(now)" -v d="$deadline" 'BEGIN { exit !(t > d) }'; then
                    break
                fi
                sleep 0.5
            done
            if why=$(check_remote "$key" "$remote"); then
                RES["$rtt|$key-settle|$peer"]=$(since "$t0")
            else
                RES["$rtt|$key-settle|$peer"]="FAIL ($why after ${SETTLE}s)"
                # Synchronous peers had it all when the call returned: say so in the main row too.
                [[ $peer == ours || $peer == sshfs ]] && RES["$rtt|$key|$peer"]="FAIL ($why)"
            fi
            ;;
        esac
    else
        RES["$rtt|$key|$peer"]="FAIL ($reason)"
    fi
    c1=$(peer_ticks "$peer")
    CPU["$rtt|$key|$peer"]=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    if [[ $peer == ours ]]; then
        q1=$(requests "$vol")
        REQ["$rtt|$key"]=$((${q1% *} - ${q0% *}))
        RTS["$rtt|$key"]=$((${q1#* } - ${q0#* }))
    fi
    log "    $peer $key: ${RES["$rtt|$key|$peer"]} s (cpu ${CPU["$rtt|$key|$peer"]} s${q1:+, ${REQ["$rtt|$key"]} requests, ${RTS["$rtt|$key"]} round trips}${RES["$rtt|$key-settle|$peer"]:+; on the server: ${RES["$rtt|$key-settle|$peer"]}})"
}

WORKLOADS=(
    "mount|docker run -d with the volume|s|time|0|0"
    "seqwrite|dd write ${SIZE_MB} MiB (busybox, fsync)|MB/s|rate|$((SIZE_MB * 1048576))|0"
    "seqwrite-settle|  ... until all on the server|s|time|0|0"
    "seqread|dd read ${SIZE_MB} MiB (busybox, cold)|MB/s|rate|$((SIZE_MB * 1048576))|0"
    "bbuntar|busybox tar x $FILES files|s|time|$TREE_BYTES|$FILES"
    "bbuntar-settle|  ... until all on the server|s|time|0|0"
    "bbread|busybox cat $FILES files (cold)|s|time|$TREE_BYTES|$FILES"
    "bbrm|busybox rm -rf $FILES files|s|time|0|$FILES"
    "bbrm-settle|  ... until gone on the server|s|time|0|0"
    "gnutar|GNU tar x $FILES files|s|time|$TREE_BYTES|$FILES"
    "gnutar-settle|  ... until all on the server|s|time|0|0"
    "cpa|GNU cp -a $FILES files|s|time|$TREE_BYTES|$FILES"
    "cpa-settle|  ... until all on the server|s|time|0|0"
    "git|git clone $GIT_FILES files|s|time|$GIT_BYTES|$GIT_FILES"
    "git-settle|  ... until all on the server|s|time|0|0"
)
for w in "${WORKLOADS[@]}"; do add_row "$w"; done

# run_peer PEER RTT PORT: creates PEER's volume (or sshfs mount), starts the two worker
# containers on it and runs every workload.
run_peer() {
    local peer=$1 rtt=$2 port=$3
    local name=$TAG-$peer-$rtt remote=$W/data/$peer-$rtt vol src t0 out
    mkdir -p "$remote"
    # The file to read, made on the server before the mount lists anything (rclone caches
    # directory listings for 5 minutes: a file made later would not be seen).
    cp "$W/in/big.bin" "$remote/seqread.bin"
    case $peer in
        ours | ours-wb)
            vol=$name
            local wb=()
            [[ $peer == ours-wb ]] && wb=(-o writeback=yes)
            docker volume create -d "$PLUGIN" -o "sshcmd=root@127.0.0.1:$remote" -o "port=$port" \
                -o IdentityFile=/root/.ssh/id_ed25519 -o StrictHostKeyChecking=no "${wb[@]}" "$vol" >/dev/null
            VOLS+=("$vol")
            src=$vol ;;
        rclone | rclone-writes)
            vol=$name
            local extra=()
            [[ $peer == rclone-writes ]] && extra=(-o vfs-cache-mode=writes)
            docker volume create -d "$RCLONE_DRIVER" -o type=sftp -o sftp-host=127.0.0.1 \
                -o "sftp-port=$port" -o sftp-user=root -o "sftp-key-file=$W/keys/id_ed25519" \
                -o "path=$remote" -o allow-other=true "${extra[@]}" "${RCLONE_OPTS[@]}" "$vol" >/dev/null
            VOLS+=("$vol")
            src=$vol ;;
        sshfs)
            src=$W/mnt/$name
            mkdir -p "$src"
            sshfs -f -p "$port" -o "IdentityFile=$W/keys/id_ed25519,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,allow_other${BENCH_SSHFS_OPTS:+,$BENCH_SSHFS_OPTS}" \
                "root@127.0.0.1:$remote" "$src" 2>"$W/$name.log" &
            SSHFS_PID=$!
            PIDS+=("$SSHFS_PID")
            SSHFS_MNTS+=("$src")
            local ok=0
            for _ in $(seq 600); do
                if awk -v m="$src" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo &&
                    ls "$src" >/dev/null 2>&1; then ok=1; break; fi
                sleep 0.05
            done
            [[ $ok == 1 ]] || { RES["$rtt|mount|$peer"]="FAIL (sshfs: $(head -c 60 "$W/$name.log"))"; return 0; }
            SSHFS_SSH_PID=$(sshfs_ssh "$port") ;;
    esac
    local c0
    c0=$(peer_ticks "$peer")
    t0=$(now)
    if ! out=$(docker run -d --label "$LABEL" --name "$name-bb" --network none -v "$src:/data" \
        -v "$W/in:/in:ro" "$BUSYBOX_IMAGE" sleep 1d 2>&1); then
        RES["$rtt|mount|$peer"]="FAIL ($(tail -1 <<<"$out" | cut -c1-60))"
        log "    $peer: mount failed: $out"
        return 0
    fi
    RES["$rtt|mount|$peer"]=$(since "$t0")
    CPU["$rtt|mount|$peer"]=$(awk -v a="$c0" -v b="$(peer_ticks "$peer")" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    docker run -d --label "$LABEL" --name "$name-deb" --network none -v "$src:/data" \
        -v "$W/in:/in:ro" "$DEBIAN_IMAGE" sleep 1d >/dev/null
    log "  $peer at $rtt ms: mounted in ${RES["$rtt|mount|$peer"]} s"
    local key
    for key in seqwrite seqread bbuntar bbread bbrm; do workload "$peer" "$rtt" "$key" "$name-bb" "${vol:-}" "$remote"; done
    for key in gnutar cpa git; do workload "$peer" "$rtt" "$key" "$name-deb" "${vol:-}" "$remote"; done
    docker rm -f "$name-bb" "$name-deb" >/dev/null 2>&1 || true
    if [[ $peer == sshfs ]]; then
        umount -l "$src" 2>/dev/null || true
        kill "$SSHFS_PID" 2>/dev/null || true
    else
        rmvol "$vol" || log "    could not remove volume $vol"
    fi
    # The trees stay on the server until the end (deleting them through a slow peer costs minutes).
}

# ---- tables ----
pretty_peer() { case $1 in rclone-writes) echo rclone-w ;; *) echo "$1" ;; esac; }
# short_mode PEER: our mode's name in a speedup column's header.
short_mode() { case $1 in ours-wb) echo wb ;; *) echo "$1" ;; esac; }
# value RTT KEY PEER KIND BYTES: sets VAL, the figure to print (MB/s for rates), or n/a, or FAIL[n] with
# the reason added to NOTES (printed under the table: a reason is wider than a column).
NOTES=()
value() {
    local v=${RES["$1|$2|$3"]:-n/a} kind=$4 bytes=$5
    if [[ $v == FAIL* ]]; then
        local i note
        note="$(pretty_peer "$3") $2: ${v#FAIL }"
        for i in "${!NOTES[@]}"; do [[ ${NOTES[$i]} == "$note" ]] && { VAL="FAIL[$((i + 1))]"; return; }; done
        NOTES+=("$note")
        VAL="FAIL[${#NOTES[@]}]"
        return
    fi
    if [[ $v != n/a && $kind == rate ]]; then
        v=$(awk -v b="$bytes" -v s="$v" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "inf" }')
    fi
    VAL=$v
}
num() { [[ $1 =~ ^[0-9.]+$ ]]; }
# print_tables RTTS: the tables of these RTTs (and the scale lines, if any).
print_tables() {
    {
        echo
        echo "docker-volume-sshfs plugin vs sshfs $(sshfs --version 2>&1 | awk '/^SSHFS version/ { print $3 }')" \
            "vs $(rclone version | head -1) (serve docker), all through Docker; $(nproc) cores; loopback sshd"
        echo "tree $FILES files / $((TREE_BYTES / 1024)) KiB; git checkout $GIT_FILES files / $((GIT_BYTES / 1024)) KiB; sequential file $SIZE_MB MiB"
        echo "times in seconds inside the container (/proc/uptime); speedup columns MODE/PEER: >1 means our MODE is better"
        for rtt in $1; do
            echo
            echo "RTT $rtt ms"
            hdr="| %-36s | %-4s |"
            args=(workload unit)
            for p in $PEERS; do hdr+=" %10s |"; args+=("$(pretty_peer "$p")"); done
            # Speedups: each of our modes against each peer that is not ours.
            pairs=()
            for m in $PEERS; do
                [[ $m == ours* ]] || continue
                for p in $PEERS; do [[ $p == ours* ]] || pairs+=("$m:$p"); done
            done
            for pr in "${pairs[@]}"; do hdr+=" %13s |"; args+=("$(short_mode "${pr%%:*}")/$(pretty_peer "${pr#*:}")"); done
            # shellcheck disable=SC2059
            printf "$hdr\n" "${args[@]}"
            seps=("$(printf -- '-%.0s' {1..36})" ----)
            for p in $PEERS; do seps+=(----------); done
            for _ in "${pairs[@]}"; do seps+=(-------------); done
            # shellcheck disable=SC2059
            printf "$hdr\n" "${seps[@]}"
            for row in "${ROWS[@]}"; do
                IFS='|' read -r key label unit kind bytes files <<<"$row"
                vals=()
                for p in $PEERS; do value "$rtt" "$key" "$p" "$kind" "$bytes"; vals+=("$VAL"); done
                for pr in "${pairs[@]}"; do
                    value "$rtt" "$key" "${pr%%:*}" "$kind" "$bytes"
                    o=$VAL
                    value "$rtt" "$key" "${pr#*:}" "$kind" "$bytes"
                    s=$VAL
                    if num "$o" && num "$s"; then
                        vals+=("$(awk -v o="$o" -v s="$s" -v k="$kind" 'BEGIN { r = (k == "rate") ? (s > 0 ? o / s : 0) : (o > 0 ? s / o : 0); printf "%.2fx", r }')")
                    else
                        vals+=(-)
                    fi
                done
                # shellcheck disable=SC2059
                printf "$hdr\n" "$label" "$unit" "${vals[@]}"
            done
            for i in "${!NOTES[@]}"; do echo "  FAIL[$((i + 1))] ${NOTES[$i]}"; done
            NOTES=()
            echo
            echo "RTT $rtt ms: our SFTP requests and round trips (Status.requests, Status.round_trips) and client CPU"
            echo "(CPU seconds per GiB moved; rm -rf: CPU ms per file; ours = plugin process, sshfs = sshfs + ssh, rclone = rclone serve)"
            hdr="| %-36s | %17s |"
            args=(workload "ours req rt")
            for p in $PEERS; do hdr+=" %10s |"; args+=("cpu $(pretty_peer "$p")"); done
            # shellcheck disable=SC2059
            printf "$hdr\n" "${args[@]}"
            seps=("$(printf -- '-%.0s' {1..36})" -----------------)
            for p in $PEERS; do seps+=(----------); done
            # shellcheck disable=SC2059
            printf "$hdr\n" "${seps[@]}"
            for row in "${ROWS[@]}"; do
                IFS='|' read -r key label unit kind bytes files <<<"$row"
                [[ $key == *-settle ]] && continue
                q=${REQ["$rtt|$key"]:-}
                r=${RTS["$rtt|$key"]:-}
                if [[ -n $q ]]; then
                    if ((files > 0)); then q=$(awk -v q="$q" -v r="$r" -v n="$files" 'BEGIN { printf "%.2f %.2f/file", q / n, r / n }')
                    elif ((bytes > 0)); then q=$(awk -v q="$q" -v r="$r" -v b="$bytes" 'BEGIN { printf "%.1f %.1f/MiB", q / (b / 1048576), r / (b / 1048576) }')
                    fi
                fi
                vals=("${q:-n/a}")
                for p in $PEERS; do
                    c=${CPU["$rtt|$key|$p"]:-}
                    if [[ -z $c ]]; then vals+=(n/a)
                    elif ((bytes > 0)); then vals+=("$(awk -v c="$c" -v b="$bytes" 'BEGIN { printf "%.1f", c / (b / 1073741824) }')")
                    elif ((files > 0)); then vals+=("$(awk -v c="$c" -v n="$files" 'BEGIN { printf "%.2f ms", 1000 * c / n }')")
                    else vals+=("$c s")
                    fi
                done
                # shellcheck disable=SC2059
                printf "$hdr\n" "$label" "${vals[@]}"
            done
        done
        if ((${#SCALE_LINES[@]})); then
            echo
            echo "Scale (RTT 0, through the installed plugin):"
            printf '%s\n' "${SCALE_LINES[@]}"
        fi
    }
}

DONE_RTTS=
flip=0
port_next=$((SSHD_PORT + 1))
for rtt in $RTTS; do
    if [[ $rtt == 0 ]]; then
        port=$SSHD_PORT
    else
        port=$port_next
        port_next=$((port_next + 1))
        port_free "$port" || { log "port $port is taken (BENCH_SSHD_PORT picks another range)"; exit 1; }
        "$PROXY" "127.0.0.1:$port" "127.0.0.1:$SSHD_PORT" "$rtt" >"$W/proxy-$rtt.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do grep -q listening "$W/proxy-$rtt.out" && break; sleep 0.05; done
        grep -q listening "$W/proxy-$rtt.out" || { log "latency-proxy did not start: $(cat "$W/proxy-$rtt.out")"; exit 1; }
    fi
    log "RTT $rtt ms (port $port)"
    order=$PEERS
    if ((flip)); then order=$(tr ' ' '\n' <<<"$PEERS" | tac | tr '\n' ' '); fi
    flip=$((1 - flip))
    for peer in $order; do
        run_peer "$peer" "$rtt" "$port" || log "  $peer at $rtt ms: failed ($?)"
    done
    DONE_RTTS+=" $rtt"
    # What is measured so far, in case a later part of a long run is cut short.
    if [[ -n ${BENCH_OUT:-} ]]; then print_tables "$DONE_RTTS" >"$BENCH_OUT.partial"; fi
done

# ---- scale (BENCH_SCALE=1): through the plugin at RTT 0 ----
if [[ $SCALE == 1 ]]; then
    P=$PLUGIN_PID
    snap() { echo "RSS $(status_kib "$P" VmRSS) KiB, fds $(nfds "$P"), threads $(status_kib "$P" Threads)"; }
    mkvol() { # mkvol NAME REMOTE
        mkdir -p "$2"
        docker volume create -d "$PLUGIN" -o "sshcmd=root@127.0.0.1:$2" -o "port=$SSHD_PORT" \
            -o IdentityFile=/root/.ssh/id_ed25519 -o StrictHostKeyChecking=no "$1" >/dev/null
        VOLS+=("$1")
    }
    # A. $SCALE_VOLUMES volumes mounted at once.
    log "scale: $SCALE_VOLUMES mounted volumes"
    before=$(snap)
    for i in $(seq "$SCALE_VOLUMES"); do mkvol "$TAG-s$i" "$W/data/scale-$i"; done
    t0=$(now)
    docker run --rm --label "$LABEL" --network none "$BUSYBOX_IMAGE" true
    t_base=$(since "$t0")
    t0=$(now)
    docker run --rm --label "$LABEL" --network none -v "$TAG-s1:/d" "$BUSYBOX_IMAGE" ls /d >/dev/null
    t_first=$(since "$t0")
    args=()
    for i in $(seq 1 $((SCALE_VOLUMES - 1))); do args+=(-v "$TAG-s$i:/v/$i"); done
    t0=$(now)
    docker run -d --label "$LABEL" --name "$TAG-scale" --network none "${args[@]}" \
        "$BUSYBOX_IMAGE" sleep 1d >/dev/null
    t_mid=$(since "$t0")
    sleep 1
    mid=$(snap)
    t0=$(now)
    docker run --rm --label "$LABEL" --network none -v "$TAG-s$SCALE_VOLUMES:/d" -d --name "$TAG-scale-last" \
        "$BUSYBOX_IMAGE" sleep 1d >/dev/null
    t_last=$(since "$t0")
    sleep 1
    all=$(snap)
    docker rm -f "$TAG-scale" "$TAG-scale-last" >/dev/null 2>&1 || true
    SCALE_LINES+=(
        "$SCALE_VOLUMES volumes through the plugin (docker run of a container with one volume; without a volume: $t_base s):"
        "  1st mount (none other mounted): $t_first s; $((SCALE_VOLUMES - 1)) in one container: $t_mid s; the ${SCALE_VOLUMES}th (with $((SCALE_VOLUMES - 1)) mounted): $t_last s"
        "  plugin before: $before"
        "  plugin with $((SCALE_VOLUMES - 1)) mounted: $mid"
        "  plugin with $SCALE_VOLUMES mounted: $all"
    )
    for i in $(seq "$SCALE_VOLUMES"); do rmvol "$TAG-s$i" || true; done
    rm -rf "$W"/data/scale-*

    # B. A directory of $SCALE_ENTRIES entries: ls -l, ours vs sshfs, peak RSS sampled.
    log "scale: ls -l of $SCALE_ENTRIES entries"
    python3 - "$W/data/bigdir/d" "$SCALE_ENTRIES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
for i in range(n):
    open(os.path.join(d, f"entry-with-a-longish-name-{i:07d}"), "w").close()
EOF
    # sample_peak PID...: prints the peak of the summed VmRSS (KiB) while the file $W/sampling exists.
    sample_peak() {
        local peak=0 s p
        while [[ -e $W/sampling ]]; do
            s=0
            for p in "$@"; do s=$((s + $(status_kib "$p" VmRSS))); done
            ((s > peak)) && peak=$s
            sleep 0.05
        done
        echo "$peak"
    }
    ls_entries() { # ls_entries PEER SRC PIDS...: time of ls -l in a container, peak RSS
        local peer=$1 src=$2 t out rss0
        shift 2
        rss0=0
        for p in "$@"; do rss0=$((rss0 + $(status_kib "$p" VmRSS))); done
        docker run -d --label "$LABEL" --name "$TAG-ls-$peer" --network none -v "$src:/data" \
            -v "$W/in:/in:ro" "$BUSYBOX_IMAGE" sleep 1d >/dev/null
        echo 'ls -l /data/d | wc -l' >"$W/in/wl/lsbig.sh"
        touch "$W/sampling"
        sample_peak "$@" >"$W/peak" &
        local sp=$!
        out=$(docker exec "$TAG-ls-$peer" sh /in/wl/run.sh lsbig 2>&1) || true
        rm -f "$W/sampling"
        wait "$sp" || true
        t=$(awk '/^ELAPSED/ { if ($5 == 0) printf "%.2f s", $3 - $2; else print "FAIL (rc " $5 ")" }' <<<"$out")
        [[ -n $t ]] || t="FAIL ($(tr '\n' ' ' <<<"$out" | cut -c1-60))"
        local n
        n=$(head -1 <<<"$out")
        SCALE_LINES+=("  $peer: ls -l $t ($n lines), RSS before $rss0 KiB, peak $(cat "$W/peak") KiB")
        docker rm -f "$TAG-ls-$peer" >/dev/null 2>&1 || true
    }
    SCALE_LINES+=("A directory of $SCALE_ENTRIES entries (busybox ls -l in a container, first listing; RSS sampled every 50 ms):")
    mkvol "$TAG-bigdir" "$W/data/bigdir"
    ls_entries ours "$TAG-bigdir" "$PLUGIN_PID"
    rmvol "$TAG-bigdir" || true
    mkdir -p "$W/mnt/bigdir"
    sshfs -f -p "$SSHD_PORT" -o "IdentityFile=$W/keys/id_ed25519,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,allow_other" \
        "root@127.0.0.1:$W/data/bigdir" "$W/mnt/bigdir" 2>"$W/sshfs-bigdir.log" &
    spid=$!
    PIDS+=("$spid")
    SSHFS_MNTS+=("$W/mnt/bigdir")
    for _ in $(seq 200); do ls "$W/mnt/bigdir" >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 0.5
    ls_entries sshfs "$W/mnt/bigdir" "$spid" $(sshfs_ssh "$SSHD_PORT")
    umount -l "$W/mnt/bigdir" 2>/dev/null || true
    kill "$spid" 2>/dev/null || true
    rm -rf "$W/data/bigdir"

    # C. A $SCALE_GIB GiB file written and read back through the plugin; RSS sampled.
    log "scale: $SCALE_GIB GiB file"
    free_gib=$(df -BG --output=avail "$W" | tail -1 | tr -dc 0-9)
    if ((free_gib < SCALE_GIB + 5)); then
        SCALE_LINES+=("$SCALE_GIB GiB file: skipped, only $free_gib GiB free on $W")
    else
        mkvol "$TAG-huge" "$W/data/huge"
        docker run -d --label "$LABEL" --name "$TAG-huge" --network none -v "$TAG-huge:/data" \
            -v "$W/in:/in:ro" "$BUSYBOX_IMAGE" sleep 1d >/dev/null
        echo "dd if=/dev/zero of=/data/huge.bin bs=1M count=$((SCALE_GIB * 1024)) conv=fsync" >"$W/in/wl/hugewrite.sh"
        echo 'dd if=/data/huge.bin of=/dev/null bs=1M' >"$W/in/wl/hugeread.sh"
        for key in hugewrite hugeread; do
            [[ $key == hugeread ]] && drop_caches
            : >"$W/rss-$key"
            touch "$W/sampling"
            (while [[ -e $W/sampling ]]; do status_kib "$PLUGIN_PID" VmRSS >>"$W/rss-$key"; sleep 1; done) &
            sp=$!
            out=$(docker exec "$TAG-huge" sh /in/wl/run.sh "$key" 2>&1) || true
            rm -f "$W/sampling"
            wait "$sp" || true
            t=$(awk -v b="$((SCALE_GIB * 1073741824))" '/^ELAPSED/ { if ($5 == 0) printf "%.1f MB/s", b / 1048576 / ($3 - $2); else print "FAIL (rc " $5 ")" }' <<<"$out")
            SCALE_LINES+=("$SCALE_GIB GiB ${key#huge}: ${t:-FAIL}; plugin RSS (KiB, sampled each second): $(sort -n "$W/rss-$key" | awk 'NR == 1 { lo = $1 } { hi = $1; s += $1; n++ } END { if (n) printf "min %d, mean %d, max %d over %d samples", lo, s / n, hi, n }'); first/last $(head -1 "$W/rss-$key")/$(tail -1 "$W/rss-$key")")
        done
        docker rm -f "$TAG-huge" >/dev/null 2>&1 || true
        rmvol "$TAG-huge" || true
        rm -rf "$W/data/huge"
    fi
fi

print_tables "$RTTS" | tee ${BENCH_OUT:+"$BENCH_OUT"}
if [[ -n ${BENCH_OUT:-} ]]; then rm -f "$BENCH_OUT.partial"; fi
# Inside the braces: bash never reads past them, even if this file was edited during the run.
exit
}
