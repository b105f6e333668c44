#!/usr/bin/env bash
# Benchmark: our FUSE filesystem (`docker-volume-sshfs mount`) against the C sshfs, side by side on
# one throwaway loopback OpenSSH server, at emulated round-trip times (latency-proxy), plus the raw
# `ssh cat` ceiling. Prints a table; run as root (FUSE mounts, drop_caches). Then runs
# benches/docker.sh (the same through Docker, with rclone's plugin too) unless BENCH_DOCKER=0.
#
#   ./benches/run.sh                    # full run: 256 MiB files, 2,000-file tree, RTT 0 and 10 ms
#   BENCH_RTTS="0 10 50" ./benches/run.sh
#   BENCH_QUICK=1 ./benches/run.sh      # smoke run (small sizes, 5 mounts), about two minutes
#
# Knobs: BENCH_RTTS (ms list), BENCH_REPEAT (runs of each sequential transfer and of the ceiling,
# best kept; default 3), BENCH_SIZE_MB, BENCH_FILES, BENCH_RANDOM_READS, BENCH_MOUNTS (RSS
# test), BENCH_IMPLS ("ours sshfs", either alone), BENCH_OUT (also write the table to this file),
# BENCH_NO_BUILD=1 (use the existing target/release binaries), BENCH_SSHFS_OPTS (extra sshfs -o
# options, e.g. Ciphers=aes128-gcm@openssh.com), BENCH_CEILING_CIPHERS (ssh -c list for the ceiling),
# BENCH_HOST=0 (skip this host-side table), BENCH_DOCKER=0 (skip the Docker benchmark that follows
# it, benches/docker.sh: the installed plugin vs sshfs vs rclone inside containers; its own knobs
# are listed there; BENCH_DOCKER_OUT writes its tables to a file).
#
# Method: one sshd, one latency-proxy per RTT (0 ms connects directly), each implementation mounts
# its own remote directory through the same path; per RTT the two run their workloads one after
# the other, the order flipping at each RTT. Reads use files written on the server side that the
# mount has never seen, with the page cache dropped first (and the server file re-read locally so
# the server's disk is not what is measured). ls -lR and the small-file read use a tree unpacked
# on the server side; untar and rm -rf use the tree unpacked through the mount. Sequential
# transfers and the ceiling run BENCH_REPEAT times each and keep the best: on a small shared
# machine one run can be a quarter off. The ceiling is sampled right before each of our reads.
# At RTT 0 the other workloads (a second or two each) also run BENCH_REPEAT times. The ceiling is timed from the start of the remote
# `cat` to the end of ssh, so the login is not in it.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    : "${BENCH_SIZE_MB:=16}" "${BENCH_FILES:=40}" "${BENCH_RANDOM_READS:=200}" "${BENCH_RTTS:=0 10}"
    : "${BENCH_MOUNTS:=5}"
fi
SIZE_MB=${BENCH_SIZE_MB:-256}
FILES=${BENCH_FILES:-2000}
RANDOM_READS=${BENCH_RANDOM_READS:-2000}
REPEAT=${BENCH_REPEAT:-3}
RTTS=${BENCH_RTTS:-0 10}
MOUNTS=${BENCH_MOUNTS:-20}
IMPLS=${BENCH_IMPLS:-ours sshfs}

[[ $(id -u) == 0 ]] || { echo "run as root (FUSE mounts, drop_caches)" >&2; exit 1; }
# BENCH_HOST=0: only the Docker benchmark (benches/docker.sh), not the host-side table.
if [[ ${BENCH_HOST:-1} == 0 ]]; then
    BENCH_OUT=${BENCH_DOCKER_OUT:-} exec "$ROOT/benches/docker.sh"
fi
for t in /usr/sbin/sshd ssh-keygen ssh sshfs python3 tar; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install openssh-server openssh-client sshfs python3)" >&2; exit 1; }
done

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    cargo build --release --bins >&2
fi
BIN=$ROOT/target/release/docker-volume-sshfs
PROXY=$ROOT/target/release/latency-proxy

W=$(mktemp -d /tmp/dvs-bench.XXXXXX)
PIDS=()
MNTS=()
cleanup() {
    set +e
    for m in "${MNTS[@]}"; do
        is_mounted "$m" && umount -l "$m"
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for m in "${MNTS[@]}"; do is_mounted "$m" && umount -l "$m"; done
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[bench] $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# is_mounted DIR: DIR is a mount point in /proc/self/mountinfo. mountinfo writes space, tab,
# newline and backslash in paths as \ooo: escape DIR the same way and compare the raw field
# (through ENVIRON: awk -v would decode the backslashes again). No stat(2), so a dead FUSE mount
# counts as mounted instead of hanging or failing.
is_mounted() {
    local m=${1//\\/\\134}
    m=${m// /\\040}
    m=${m//$'\t'/\\011}
    m=${m//$'\n'/\\012}
    MNT=$m awk '$5 == ENVIRON["MNT"] { f = 1 } END { exit !f }' /proc/self/mountinfo
}
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---- the server ----
mkdir -p /run/sshd "$W/data" "$W/mnt"
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
cp "$W/key.pub" "$W/authorized_keys"
SSHD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The settings every test server shares, plus this one's own.
/usr/sbin/sshd -D -e -f "$ROOT/tests/sshd/sshd_config.common" -o "Port=$SSHD_PORT" \
    -o ListenAddress=127.0.0.1 -o "HostKey=$W/hostkey" -o "PidFile=$W/sshd.pid" \
    -o "AuthorizedKeysFile=$W/authorized_keys" -o "Subsystem=sftp /usr/lib/openssh/sftp-server" \
    2>"$W/sshd.log" &
PIDS+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$SSHD_PORT") 2>/dev/null && break
    sleep 0.05
done
# The ceiling uses the cipher our client prefers (AES-GCM), so it bounds what we can reach.
CEILING_CIPHERS=${BENCH_CEILING_CIPHERS:-aes256-gcm@openssh.com,aes128-gcm@openssh.com,chacha20-poly1305@openssh.com}
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -i "$W/key"
    -c "$CEILING_CIPHERS")

# ---- test data (local, generated once) ----
log "generating ${SIZE_MB} MiB file and a ${FILES}-file tree in $W"
dd if=/dev/urandom of="$W/big.src" bs=1M count="$SIZE_MB" status=none
python3 - "$W/tree" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for i in range(n):
    d = os.path.join(root, "tree", f"dir{i % 40:02d}", f"sub{(i // 40) % 5}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file{i:05d}.txt"), "wb") as f:
        f.write(r.randbytes(r.randrange(0, 16384)))
EOF
tar -C "$W/tree" -cf "$W/tree.tar" tree
TREE_BYTES=$(du -sb "$W/tree" | cut -f1)

# ---- mounting ----
# mount_impl IMPL PORT NAME: mounts the remote dir $W/data/NAME at $W/mnt/NAME; sets MOUNT_PID and
# MOUNT_SECS (time from starting the command until the mount answers a directory listing).
mount_impl() {
    local impl=$1 port=$2 name=$3
    local mnt=$W/mnt/$name
    mkdir -p "$mnt" "$W/data/$name"
    local t0
    t0=$(now)
    if [[ $impl == ours ]]; then
        "$BIN" mount -p "$port" \
            -o "IdentityFile=$W/key,StrictHostKeyChecking=no,UserKnownHostsFile=$W/known_hosts" \
            "root@127.0.0.1:$W/data/$name" "$mnt" 2>"$W/$name.log" &
    else
        sshfs -f -p "$port" \
            -o "IdentityFile=$W/key,StrictHostKeyChecking=no,UserKnownHostsFile=$W/known_hosts${BENCH_SSHFS_OPTS:+,$BENCH_SSHFS_OPTS}" \
            "root@127.0.0.1:$W/data/$name" "$mnt" 2>"$W/$name.log" &
    fi
    MOUNT_PID=$!
    PIDS+=("$MOUNT_PID")
    MNTS+=("$mnt")
    for _ in $(seq 3000); do
        # Ready = listed in mountinfo and answering (sshfs mounts before it has connected).
        if is_mounted "$mnt" && ls "$mnt" >/dev/null 2>&1; then
            MOUNT_SECS=$(elapsed "$t0")
            log "  $impl mounted $name in $MOUNT_SECS s"
            return 0
        fi
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.01
    done
    log "$impl failed to mount at $mnt: $(head -c 2000 "$W/$name.log")"
    MOUNT_SECS=
    return 1
}

unmount_impl() {
    local pid=$1 mnt=$2
    if [[ $mnt == "$W/mnt/sshfs"* ]]; then umount -l "$mnt" 2>/dev/null || true; fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$pid" 2>/dev/null || true
    is_mounted "$mnt" && umount -l "$mnt"
    return 0
}

# ---- results ----
declare -A RES # RES[rtt|workload|impl] = value
ROWS=()        # "workload|unit|kind" in print order; kind: rate (higher is better) or time
add_row() {
    local r
    for r in "${ROWS[@]}"; do [[ $r == "$1|$2|$3" ]] && return 0; done
    ROWS+=("$1|$2|$3")
}
put() { RES["$1|$2|$3"]=$4; }
# keep RTT WORKLOAD IMPL VALUE rate|time: the best value so far (highest rate, shortest time).
keep() {
    local old=${RES["$1|$2|$3"]:-}
    if [[ -z $old ]] || awk -v n="$4" -v o="$old" -v k="$5" 'BEGIN { exit !(k == "rate" ? n > o : n < o) }'; then
        RES["$1|$2|$3"]=$4
    fi
}

mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", b / 1048576 / s; else print "inf" }'; }
max() { tr ' ' '\n' <<<"$*" | sort -g | tail -1; }

# ceiling_rate PORT: MiB/s of `ssh cat` of ceiling.bin into /dev/null, timed from the moment the
# remote command starts (stamped on stderr; the server is this machine, so one clock) until ssh
# exits: the login is not in it, and the output goes straight to /dev/null as in plain `ssh cat`.
ceiling_rate() {
    local t1
    ssh "${SSH_OPTS[@]}" -p "$1" root@127.0.0.1 "date +%s.%N >&2; exec cat '$W/data/ceiling.bin'" \
        2>"$W/ceiling.t" >/dev/null
    t1=$(now)
    mbps $((SIZE_MB * 1048576)) "$(awk -v a="$(head -1 "$W/ceiling.t")" -v b="$t1" 'BEGIN { print b - a }')"
}

# run_workloads IMPL MNT RTT PORT: every workload on one mount, results into RES.
run_workloads() {
    local impl=$1 mnt=$2 rtt=$3 port=$4 t0 s
    local remote
    remote=$W/data/$(basename "$mnt")

    local rates i
    # The files to read, made on the server side now: a name the mount listed moments ago
    # may count as absent for up to a second (its negative-entry time).
    for i in $(seq "$REPEAT"); do cp "$W/big.src" "$remote/seq-read-$rtt-$i.bin"; done
    sleep 1.1
    log "  $impl: sequential write ${SIZE_MB} MiB, best of $REPEAT"
    rates=()
    for i in $(seq "$REPEAT"); do
        rm -f "$mnt/seq-write.bin"
        drop_caches
        cat "$W/big.src" >/dev/null
        t0=$(now)
        dd if="$W/big.src" of="$mnt/seq-write.bin" bs=1M conv=fsync status=none || return 1
        rates+=("$(mbps $((SIZE_MB * 1048576)) "$(elapsed "$t0")")")
        cmp -s "$W/big.src" "$remote/seq-write.bin" || log "  WARNING: $impl wrote a different file"
    done
    log "    ${rates[*]} MB/s"
    put "$rtt" "seq write ${SIZE_MB} MiB" "$impl" "$(max "${rates[@]}")"

    log "  $impl: sequential read ${SIZE_MB} MiB (fresh server-side file, caches dropped), best of $REPEAT"
    rates=()
    for i in $(seq "$REPEAT"); do
        # The ceiling is sampled right before each of our reads, so both see the same machine.
        if [[ $impl == ours || " $IMPLS " != *" ours "* ]]; then
            cat "$W/data/ceiling.bin" >/dev/null
            CEILINGS+=("$(ceiling_rate "$port")")
        fi
        # A new name each time: the mount has not read it before.
        drop_caches
        cat "$remote/seq-read-$rtt-$i.bin" >/dev/null # server side warm, client side cold
        t0=$(now)
        dd if="$mnt/seq-read-$rtt-$i.bin" of=/dev/null bs=1M status=none || return 1
        rates+=("$(mbps $((SIZE_MB * 1048576)) "$(elapsed "$t0")")")
        rm -f "$remote/seq-read-$rtt-$i.bin"
    done
    log "    ${rates[*]} MB/s"
    put "$rtt" "seq read ${SIZE_MB} MiB" "$impl" "$(max "${rates[@]}")"

    # The short workloads: at RTT 0 a run takes a second or two and one run is noise, so they
    # run BENCH_REPEAT times there (best kept); at longer RTTs they are long and steady: once.
    local reps=1 rep
    (( rtt == 0 )) && reps=$REPEAT
    cp "$W/big.src" "$remote/rand-$rtt.bin"
    for rep in $(seq "$reps"); do
        log "  $impl: $RANDOM_READS random 4 KiB reads ($rep/$reps)"
        drop_caches
        cat "$remote/rand-$rtt.bin" >/dev/null
        s=$(python3 - "$mnt/rand-$rtt.bin" "$RANDOM_READS" <<'EOF'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
blocks = os.fstat(fd).st_size // 4096
r = random.Random(1)
t = time.monotonic()
for _ in range(int(sys.argv[2])):
    assert len(os.pread(fd, 4096, r.randrange(blocks) * 4096)) == 4096
print(f"{time.monotonic() - t:.3f}")
EOF
)
        keep "$rtt" "random 4 KiB reads ($RANDOM_READS)" "$impl" \
            "$(awk -v n="$RANDOM_READS" -v s="$s" 'BEGIN { printf "%.0f", n / s }')" rate

        log "  $impl: unpack $FILES files ($rep/$reps)"
        t0=$(now)
        tar -C "$mnt" -xf "$W/tree.tar" || return 1
        keep "$rtt" "untar $FILES files" "$impl" "$(elapsed "$t0")" time
        [[ $(find "$remote/tree" -type f | wc -l) == "$FILES" ]] || log "  WARNING: $impl untar incomplete"

        # ls -lR and reading: a tree the mount has never seen (unpacked on the server side, a
        # second ahead: see the seq-read files).
        tar -C "$remote" -xf "$W/tree.tar" --transform "s,^tree,fresh$rep,"
        sleep 1.1
        drop_caches
        log "  $impl: ls -lR ($rep/$reps)"
        t0=$(now)
        ls -lR "$mnt/fresh$rep" >/dev/null
        keep "$rtt" "ls -lR $FILES files" "$impl" "$(elapsed "$t0")" time
        log "  $impl: read all files ($rep/$reps)"
        t0=$(now)
        find "$mnt/fresh$rep" -type f -exec cat {} + >/dev/null
        keep "$rtt" "read $FILES files" "$impl" "$(elapsed "$t0")" time

        log "  $impl: rm -rf ($rep/$reps)"
        t0=$(now)
        rm -rf "$mnt/tree"
        keep "$rtt" "rm -rf $FILES files" "$impl" "$(elapsed "$t0")" time
        [[ ! -e $remote/tree ]] || log "  WARNING: $impl rm -rf left files"
        rm -rf "$remote/fresh$rep"
    done
    rm -rf "$remote"/*.bin
}

for w in "seq write ${SIZE_MB} MiB|MB/s|rate" "seq read ${SIZE_MB} MiB|MB/s|rate" \
    "random 4 KiB reads ($RANDOM_READS)|reads/s|rate" "untar $FILES files|s|time" \
    "ls -lR $FILES files|s|time" "read $FILES files|s|time" "rm -rf $FILES files|s|time" \
    "time to mount|s|time"; do
    add_row "${w%%|*}" "$(cut -d'|' -f2 <<<"$w")" "${w##*|}"
done

flip=0
for rtt in $RTTS; do
    if [[ $rtt == 0 ]]; then
        port=$SSHD_PORT
    else
        "$PROXY" 127.0.0.1:0 "127.0.0.1:$SSHD_PORT" "$rtt" >"$W/proxy-$rtt.out" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 100); do grep -q listening "$W/proxy-$rtt.out" && break; sleep 0.05; done
        port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$W/proxy-$rtt.out")
        [[ -n $port ]] || { log "latency-proxy did not start: $(cat "$W/proxy-$rtt.out")"; exit 1; }
    fi
    log "RTT $rtt ms (port $port)"

    # Raw ceiling: ssh cat of the same file through the same path (see run_workloads).
    cp "$W/big.src" "$W/data/ceiling.bin"
    CEILINGS=()

    # In alternation: the order flips at each RTT so neither side always goes first.
    order=$IMPLS
    if (( flip )); then order=$(tr ' ' '\n' <<<"$IMPLS" | tac | tr '\n' ' '); fi
    flip=$((1 - flip))
    for impl in $order; do
        name=$impl-$rtt
        if mount_impl "$impl" "$port" "$name"; then
            put "$rtt" "time to mount" "$impl" "$MOUNT_SECS"
            pid=$MOUNT_PID
            run_workloads "$impl" "$W/mnt/$name" "$rtt" "$port" || log "  $impl: a workload failed"
            unmount_impl "$pid" "$W/mnt/$name"
        fi
    done
    log "  ceiling: ${CEILINGS[*]} MB/s"
    RES["$rtt|ceiling"]=$(max "${CEILINGS[@]:-0}")
    rm -f "$W/data/ceiling.bin"
done

# ---- memory: 1 and $MOUNTS idle mounts at RTT 0 ----
mem_ours_1="" mem_ours_n="" mem_sshfs_1="" mem_sshfs_n=""
procs_rss() { # total VmRSS (KiB) of the given pids and their children (sshfs runs ssh)
    local total=0 p c
    for p in "$@"; do
        total=$((total + $(rss_kib "$p")))
        for c in $(pgrep -P "$p" 2>/dev/null); do total=$((total + $(rss_kib "$c"))); done
    done
    echo "$total"
}
for impl in $IMPLS; do
    log "memory: $impl with 1 and $MOUNTS idle mounts"
    pids=() mnts=()
    for i in $(seq "$MOUNTS"); do
        if mount_impl "$impl" "$SSHD_PORT" "$impl-mem$i"; then
            pids+=("$MOUNT_PID") mnts+=("$W/mnt/$impl-mem$i")
            ls "$W/mnt/$impl-mem$i" >/dev/null
        fi
        if [[ $i == 1 ]]; then
            sleep 1
            one=$(procs_rss "${pids[@]}")
        fi
    done
    sleep 1
    all=$(procs_rss "${pids[@]}")
    if [[ $impl == ours ]]; then mem_ours_1=$one mem_ours_n=$all; else mem_sshfs_1=$one mem_sshfs_n=$all; fi
    for i in "${!pids[@]}"; do unmount_impl "${pids[$i]}" "${mnts[$i]}"; done
done

# ---- memory: the plugin itself, one `serve` process with $MOUNTS mounted volumes ----
# Driven over its socket as dockerd would (VolumeDriver.Create + Mount), then VmRSS of that process.
mem_plugin=
if [[ " $IMPLS " == *" ours "* ]] && command -v curl >/dev/null; then
    log "memory: plugin process with $MOUNTS mounted volumes"
    P=$W/plugin
    mkdir -p "$P/state" "$P/volumes"
    "$BIN" serve --socket "$P/sock" --state-dir "$P/state" --volumes-dir "$P/volumes" 2>"$W/plugin.log" &
    plugin_pid=$!
    PIDS+=("$plugin_pid")
    for _ in $(seq 200); do [[ -S $P/sock ]] && break; sleep 0.05; done
    plugin_call() {
        curl -sS --unix-socket "$P/sock" -H 'Content-Type: application/json' -d "$2" \
            "http://plugin/VolumeDriver.$1"
    }
    mounted=0
    for i in $(seq "$MOUNTS"); do
        mkdir -p "$W/data/plugin-$i"
        plugin_call Create "{\"Name\":\"v$i\",\"Opts\":{\"sshcmd\":\"root@127.0.0.1:$W/data/plugin-$i\",\"port\":\"$SSHD_PORT\",\"IdentityFile\":\"$W/key\",\"StrictHostKeyChecking\":\"no\",\"UserKnownHostsFile\":\"$W/known_hosts\"}}" >/dev/null
        mp=$(plugin_call Mount "{\"Name\":\"v$i\",\"ID\":\"bench$i\"}" |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("Mountpoint", ""))' 2>/dev/null || true)
        if [[ -n $mp ]] && ls "$mp" >/dev/null 2>&1; then
            MNTS+=("$mp")
            mounted=$((mounted + 1))
        else
            log "  plugin mount $i failed: $(tail -c 500 "$W/plugin.log")"
        fi
    done
    sleep 1
    mem_plugin="$(rss_kib "$plugin_pid") KiB with $mounted mounted volumes"
    for i in $(seq "$MOUNTS"); do plugin_call Unmount "{\"Name\":\"v$i\",\"ID\":\"bench$i\"}" >/dev/null || true; done
    kill "$plugin_pid" 2>/dev/null || true
fi

# ---- table ----
{
    echo
    echo "docker-volume-sshfs vs sshfs $(sshfs --version 2>&1 | awk '/^SSHFS version/ { print $3 }'),"\
         "$(nproc) cores, loopback sshd, file ${SIZE_MB} MiB, tree $FILES files / $((TREE_BYTES / 1024)) KiB"
    echo "speedup = ours vs sshfs, >1 means ours is better (rates: ours/sshfs; times: sshfs/ours);"
    echo "best of $REPEAT runs: sequential write and read and the ceiling at every RTT, all workloads at RTT 0"
    for rtt in $RTTS; do
        echo
        echo "RTT $rtt ms   raw ceiling (ssh -c ${CEILING_CIPHERS%%,*} cat, login excluded, best of $REPEAT): ${RES["$rtt|ceiling"]} MB/s"
        printf '| %-32s | %-8s | %10s | %10s | %8s | %10s |\n' workload unit ours sshfs speedup "% ceiling"
        printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..34})" "----------" "------------" \
            "------------" "----------" "------------"
        for row in "${ROWS[@]}"; do
            IFS='|' read -r wl unit kind <<<"$row"
            o=${RES["$rtt|$wl|ours"]:-n/a}
            s=${RES["$rtt|$wl|sshfs"]:-n/a}
            ratio=n/a pct=
            if [[ $o != n/a && $s != n/a ]]; then
                if [[ $kind == rate ]]; then
                    ratio=$(awk -v o="$o" -v s="$s" 'BEGIN { if (s > 0) printf "%.2fx", o / s; else print "n/a" }')
                else
                    ratio=$(awk -v o="$o" -v s="$s" 'BEGIN { if (o > 0) printf "%.2fx", s / o; else print "n/a" }')
                fi
            fi
            if [[ $wl == "seq read"* && $o != n/a ]]; then
                pct=$(awk -v o="$o" -v c="${RES["$rtt|ceiling"]}" 'BEGIN { printf "%.0f%%", 100 * o / c }')
            fi
            printf '| %-32s | %-8s | %10s | %10s | %8s | %10s |\n' "$wl" "$unit" "$o" "$s" "$ratio" "$pct"
        done
    done
    echo
    echo "Memory (VmRSS, idle mounts at RTT 0; sshfs counts its ssh child too):"
    echo "  ours:  1 mount ${mem_ours_1:-n/a} KiB, $MOUNTS mount processes ${mem_ours_n:-n/a} KiB total"
    echo "  sshfs: 1 mount ${mem_sshfs_1:-n/a} KiB, $MOUNTS mount processes ${mem_sshfs_n:-n/a} KiB total"
    echo "  (the command line runs one process per mount; the plugin serves all volumes in one process)"
    echo "  plugin (one serve process, VolumeDriver.Create + Mount over its socket): ${mem_plugin:-n/a}"
} | tee ${BENCH_OUT:+"$BENCH_OUT"}

# ---- the Docker benchmark: the installed plugin vs sshfs vs rclone, inside containers ----
if [[ ${BENCH_DOCKER:-1} != 0 ]]; then
    cleanup
    trap - EXIT
    BENCH_NO_BUILD=1 BENCH_OUT=${BENCH_DOCKER_OUT:-} "$ROOT/benches/docker.sh"
fi
