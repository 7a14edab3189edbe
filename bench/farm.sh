#!/usr/bin/env bash
# Throughput of the build farm: K small conversion jobs (`dbimage import
# SRC --no-publish`) through the Redis queue, run by 1, 2 and 4 workers
# (`dbimage worker -n 1 --drain`, started together), and prints workers,
# wall seconds (first worker started to last worker exited), jobs per
# minute and the speed-up over 1 worker.
# Not a test: run it by hand as root, then record the figures in README.md.
#
#   bench/farm.sh
#   K=32 bench/farm.sh        # jobs per run (default 16)
#   WORKERS="1 2 3 4"         # worker counts to time (default "1 2 4"; the first is the baseline)
#   DATA_MIB=24               # MiB of random data in each source disk (default 24)
#   BUILD=0                   # skip scripts/setup-host and cargo build
#
# It starts its own redis-server on a free 127.0.0.1 port (no persistence,
# the default user off, one ACL user with a random password), makes K raw
# MBR disks with an ext4 root (/etc/os-release and DATA_MIB of random data)
# once, and for each worker count uses a fresh queue prefix and output
# directory. A run fails loudly unless all K jobs succeeded (per `dbimage
# jobs -f json`) and all K images exist. Everything happens under a scratch
# directory in /var/tmp, removed at exit; on exit, Ctrl-C or SIGTERM the
# workers are stopped (their jobs' dbimage processes undo their own loop
# devices), redis-server is stopped by its PID, and any loop device or
# mount still backed by the scratch directory is undone.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "farm.sh: run as root (import attaches loop devices)" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "${BUILD:-1}" != 0 ]; then
    "$here/scripts/setup-host"
    cargo build --quiet --release --manifest-path "$here/Cargo.toml"
fi
for tool in redis-server redis-cli sfdisk mkfs.ext4 losetup jq qemu-img python3 setsid; do
    command -v "$tool" >/dev/null || { echo "farm.sh: $tool not found" >&2; exit 1; }
done
bin="${CARGO_TARGET_DIR:-$here/target}/release/dbimage"
[ -x "$bin" ] || { echo "farm.sh: $bin not found; build it (or unset BUILD=0)" >&2; exit 1; }
k=${K:-16}
data_mib=${DATA_MIB:-24}
read -r -a counts <<< "${WORKERS:-1 2 4}"
case "$k$data_mib" in *[!0-9]*) echo "farm.sh: K and DATA_MIB are numbers" >&2; exit 1 ;; esac
[ "$k" -ge 1 ] && [ "${#counts[@]}" -ge 1 ] || { echo "farm.sh: K >= 1 and at least one worker count" >&2; exit 1; }

scratch=$(mktemp -d /var/tmp/dbimage-bench-farm.XXXXXX)
redis_pid=""
workers=()   # PIDs of the running workers, if any

# Loop devices whose backing file is under the scratch directory.
our_loops() { losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v d="$scratch/" 'index($2, d) == 1 { print $1 }'; }
# Mount points under the scratch directory.
our_mounts() { awk -v d="$scratch/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo; }

stop_workers() {
    local pid
    for pid in "${workers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null || true; done
    workers=()
}

cleanup() {
    local rc=$? dev m
    set +e
    trap - EXIT INT TERM
    # Workers first: on SIGTERM they stop their jobs and hand them back,
    # which needs the queue.
    stop_workers
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null
        wait "$redis_pid" 2>/dev/null
    fi
    for m in $(our_mounts | sort -r); do umount "$m" 2>/dev/null || umount -l "$m"; done
    for dev in $(our_loops); do losetup -d "$dev"; done
    rm -rf "$scratch"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "farm.sh: interrupted; cleaning up" >&2; exit 130' INT
trap 'echo "farm.sh: terminated; cleaning up" >&2; exit 143' TERM

fail() { echo "farm.sh: $*" >&2; exit 1; }
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

# --- redis-server: 127.0.0.1 only, nothing on disk, ACL user only --------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
mkdir "$scratch/redis"
cat > "$scratch/redis/redis.conf" <<CONF
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir $scratch/redis
pidfile $scratch/redis/redis.pid
logfile $scratch/redis/redis.log
save ""
appendonly no
user default off
user farm on >$password ~bench:* &* +@all -@dangerous
CONF
chmod 600 "$scratch/redis/redis.conf"
# Its own session, so a Ctrl-C on the terminal does not stop it before the
# workers have handed their jobs back.
setsid redis-server "$scratch/redis/redis.conf" </dev/null >/dev/null 2>&1 &
redis_pid=$!
export REDISCLI_AUTH="$password"
for _ in $(seq 50); do
    [ "$(redis-cli -h 127.0.0.1 -p "$port" --user farm ping 2>/dev/null)" = PONG ] && break
    kill -0 "$redis_pid" 2>/dev/null || { cat "$scratch/redis/redis.log" >&2; fail "redis-server exited"; }
    sleep 0.1
done
[ "$(redis-cli -h 127.0.0.1 -p "$port" --user farm ping 2>/dev/null)" = PONG ] \
    || { cat "$scratch/redis/redis.log" >&2; fail "redis-server does not answer on 127.0.0.1:$port"; }
[ "$(cat "$scratch/redis/redis.pid")" = "$redis_pid" ] || fail "redis-server's PID is not the one started"

export DBIMAGE_DATA_DIR="$here" DBIMAGE_WORK_DIR="$scratch/work" \
       DBIMAGE_REDIS_URL="redis://127.0.0.1:$port/0" DBIMAGE_REDIS_USER=farm DBIMAGE_REDIS_PASSWORD="$password" \
       DBIMAGE_QUEUE_MAX_ATTEMPTS=1
unset DBIMAGE_QUEUE_LEASE DBIMAGE_SETTINGS OS_CLOUD OS_AUTH_URL

# --- K source disks, made once --------------------------------------------
# As tests/import.rs's source_disk: a raw MBR disk, root at 1 MiB.
disk_mib=$(( data_mib + 64 ))
mkdir -p "$scratch/src/tree/etc"
printf 'ID=debian\nVERSION_ID="12"\n' > "$scratch/src/tree/etc/os-release"
for i in $(seq "$k"); do
    head -c "${data_mib}M" /dev/urandom > "$scratch/src/tree/payload"
    truncate -s "${disk_mib}M" "$scratch/src/disk-$i.raw"
    printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$scratch/src/disk-$i.raw"
    mkfs.ext4 -q -F -E offset=1048576 -d "$scratch/src/tree" "$scratch/src/disk-$i.raw" "$(( disk_mib - 2 ))M"
done
rm -rf "$scratch/src/tree"

# Nothing of ours may be attached or mounted, and import's work directory
# must be empty, after every run.
check_clean() {
    local left
    left=$(our_loops; our_mounts; find "$scratch/work" -mindepth 1 -maxdepth 1 2>/dev/null)
    [ -z "$left" ] || fail "left behind after $1: $left"
}

# One job alone, outside the farm (also a warm-up).
t0=$(now)
"$bin" -q import "$scratch/src/disk-1.raw" --no-publish --force -o "$scratch/alone" --name alone \
    > /dev/null 2> "$scratch/alone.err" || { cat "$scratch/alone.err" >&2; fail "a plain import failed"; }
alone=$(secs "$t0" "$(now)")
rm -rf "$scratch/alone"
check_clean "the plain import"

# run W: fresh prefix, K jobs submitted, W workers started together; appends
# "W wall_seconds seconds_to_last_image" to the results. (Not in a $(…)
# subshell: cleanup must see the workers' PIDs.)
run() {
    local w=$1 out="$scratch/out-w$1" logs="$scratch/logs-w$1" i id pid start end last bad=0
    export DBIMAGE_QUEUE_PREFIX="bench:w$w"
    mkdir -p "$logs"
    for i in $(seq "$k"); do
        id=$("$bin" -q queue submit import "$scratch/src/disk-$i.raw" --no-publish --force -o "$out" --name "job-$i" \
            2>> "$logs/submit.err") || { cat "$logs/submit.err" >&2; fail "queue submit failed"; }
        [ "$id" = "$i" ] || fail "job $i got number $id on a fresh prefix"
    done
    start=$(now)
    for i in $(seq "$w"); do
        "$bin" worker -n 1 --drain --log-dir "$logs" 2> "$logs/worker-$i.err" &
        workers+=($!)
    done
    for pid in "${workers[@]}"; do wait "$pid" || bad=1; done
    end=$(now)
    workers=()
    "$bin" jobs -f json > "$logs/jobs.json"
    local total ok once
    total=$(jq length "$logs/jobs.json")
    ok=$(jq '[.[] | select(.state == "succeeded")] | length' "$logs/jobs.json")
    once=$(jq '[.[] | select(.attempts == 1)] | length' "$logs/jobs.json")
    if [ "$bad" != 0 ] || [ "$total" != "$k" ] || [ "$ok" != "$k" ] || [ "$once" != "$k" ]; then
        echo "farm.sh: $w worker(s): $ok of $k job(s) succeeded ($total listed, $once run once); a worker failed: $bad" >&2
        "$bin" jobs >&2
        for id in $(jq -r '.[] | select(.state != "succeeded") | .id' "$logs/jobs.json"); do
            "$bin" jobs show "$id" >&2
        done
        tail -n 20 "$logs"/worker-*.err >&2
        exit 1
    fi
    for i in $(seq "$k"); do
        [ "$(qemu-img info --output=json "$out/job-$i.qcow2" 2>/dev/null | jq -r .format)" = qcow2 ] \
            || fail "$w worker(s): $out/job-$i.qcow2 is missing or not a qcow2 image"
    done
    check_clean "$w worker(s)"
    # When the last image was written (its mtime: rename keeps it), to show
    # what the workers' idle exit adds.
    last=$(stat -c %.9Y "$out"/job-*.qcow2 | sort -n | tail -1)
    echo "$w $(secs "$start" "$end") $(secs "$start" "${last/./}")" >> "$scratch/results"
    spread+=("$w: $(jq -r '.[].worker' "$logs/jobs.json" | sort | uniq -c | awk '{ printf "%s%s", (NR > 1 ? "+" : ""), $1 }')")
    rm -rf "$out"
}

spread=()   # jobs each worker ran, per run
for w in "${counts[@]}"; do run "$w"; done

echo "$k import jobs (raw ${disk_mib} MiB disk, ${data_mib} MiB random data, zlib), $(nproc) cores; one import alone: $alone s"
awk '
    NR == 1 { base = $2; printf "%-8s %8s %9s %9s %14s\n", "workers", "wall s", "jobs/min", "speed-up", "to last image" }
    { printf "%-8s %8.2f %9.1f %8.2fx %12.2f s\n", $1, $2, '"$k"' * 60 / $2, base / $2, $3 }' "$scratch/results"
( IFS=,; echo "jobs per worker:${spread[*]/#/ }" )
