#!/usr/bin/env bash
# Times patching an existing qcow2 image two ways and prints the median of
# each: the naive route (what the original shell tool did: qemu-img convert
# to raw, losetup + mount the root partition, patch files, umount, convert
# back to a zlib-compressed qcow2; every step timed) and `dbimage upload
# --no-publish` (re-opens the image, patches it, writes a new qcow2). The
# patch is the same: SSH host keys removed, /etc/machine-id emptied, the
# database user's authorized_keys and the guest agent's configuration
# written. Prints the naive route's per-step medians, both totals, the
# output sizes and the naive/dbimage ratios.
# Not a test: run it by hand as root, then record the figures in README.md.
#
#   bench/patch.sh                         # newest images/postgresql-15-*.qcow2
#   IMAGE=path/to/image.qcow2 bench/patch.sh
#   RUNS=2                                 # repetitions of each route (median reported)
#   BUILD=0                                # skip scripts/setup-host and cargo build
#
# Without IMAGE and without an image in images/, it first builds one with
# `dbimage make -d postgresql -v 15 -r bookworm -I` (about 2 minutes, not
# timed). When the dbimage binary has no `upload` subcommand yet, it says so
# and times the naive route only. Everything happens under a scratch
# directory in /var/tmp, removed at exit; on exit, Ctrl-C or SIGTERM the
# naive route's mount and loop device are undone (only the loop device it
# attached itself: the one backed by its own raw file).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "patch.sh: run as root" >&2; exit 1; }
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "${BUILD:-1}" != 0 ]; then
    "$here/scripts/setup-host"
    cargo build --quiet --release --manifest-path "$here/Cargo.toml"
fi
for tool in qemu-img sfdisk losetup jq ssh-keygen mountpoint; do
    command -v "$tool" >/dev/null || { echo "patch.sh: $tool not found" >&2; exit 1; }
done
bin="${CARGO_TARGET_DIR:-$here/target}/release/dbimage"
runs=${RUNS:-2}

scratch=$(mktemp -d /var/tmp/dbimage-bench-patch.XXXXXX)
raw="$scratch/work/disk.raw"
mnt="$scratch/mnt"
loopdev=""   # the loop device the naive route attached, if any
child=""     # the long-running command in flight, if any

cleanup() {
    local rc=$? dev
    set +e
    trap - EXIT INT TERM
    if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null   # dbimage tears down its own mounts on SIGTERM
        wait "$child" 2>/dev/null
    fi
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
    # The device we recorded, plus any backed by our raw file (in case a
    # signal came between losetup attaching and the assignment).
    for dev in $loopdev $( [ -e "$raw" ] && losetup -n -O NAME -j "$raw" ); do
        losetup -d "$dev" 2>/dev/null
    done
    rm -rf "$scratch"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "patch.sh: interrupted; cleaning up" >&2; exit 130' INT
trap 'echo "patch.sh: terminated; cleaning up" >&2; exit 143' TERM

# run CMD...: runs it in the background and waits, so that a signal to this
# script is handled at once (bash defers traps until a foreground child ends)
# and cleanup can stop the child.
run() {
    "$@" &
    child=$!
    wait "$child"
    child=""
}
now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }
secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }
# list FILE: its millisecond figures as seconds on one line
list() { awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 / 1000 }' "$1"; }
# median of the numbers on stdin (mean of the middle two for an even count)
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

export DBIMAGE_DATA_DIR="$here" DBIMAGE_WORK_DIR="$scratch/dbimage-work"

# The image to patch.
image=${IMAGE:-}
if [ -z "$image" ]; then
    image=$(ls -t "$here"/images/postgresql-15-*.qcow2 2>/dev/null | head -n1 || true)
fi
if [ -z "$image" ]; then
    [ -x "$bin" ] || { echo "patch.sh: no image and no $bin to build one" >&2; exit 1; }
    echo "patch.sh: no images/postgresql-15-*.qcow2; building one first (about 2 minutes, not timed)" >&2
    run "$bin" make -d postgresql -v 15 -r bookworm -I -o "$scratch/images" \
        > "$scratch/make.out" 2> "$scratch/make.err" \
        || { tail -n 20 "$scratch/make.err" >&2; exit 1; }
    image=$(ls -t "$scratch"/images/postgresql-15-*.qcow2 | head -n1)
fi
[ -f "$image" ] || { echo "patch.sh: $image: no such file" >&2; exit 1; }
[ "$(qemu-img info --output=json "$image" | jq -r .format)" = qcow2 ] \
    || { echo "patch.sh: $image is not a qcow2 image" >&2; exit 1; }

# What both routes write into the image.
ssh-keygen -q -t ed25519 -N '' -C bench@dbimage -f "$scratch/key"
transport_url="rabbit://u:p@10.0.0.1:5672/" control_exchange=trove region=RegionOne
cat > "$scratch/settings.yaml" <<EOF
guest_agent:
  transport_url: "$transport_url"
  control_exchange: $control_exchange
  region: $region
EOF
# What elements/trove-guest-agent/templates/trove-guestagent.conf.j2 renders.
cat > "$scratch/trove-guestagent.conf" <<EOF
# Trove guest agent configuration for this cloud, written by dbimage.
# Trove's task manager adds per-instance values (guest_info.conf) at boot.
[DEFAULT]
transport_url = $transport_url
control_exchange = $control_exchange
log_dir = /var/log/trove
log_file = trove-guestagent.log
os_region_name = $region

[oslo_messaging_rabbit]
rabbit_ha_queues = false
EOF

have_upload=0
if [ -x "$bin" ] && "$bin" upload --help >/dev/null 2>&1; then
    have_upload=1
else
    echo "patch.sh: $bin has no 'upload' subcommand (yet): timing the naive route only" >&2
fi

# nolink PATH...: the naive route writes through a mounted guest tree; a
# symlink there could point anywhere on the host, so refuse instead.
nolink() {
    local p
    for p in "$@"; do
        if [ -L "$p" ]; then echo "patch.sh: $p is a symlink in the image; refusing" >&2; exit 1; fi
    done
}

# Patching through the mounted root filesystem.
patch_tree() {
    local r=$1
    nolink "$r/etc" "$r/etc/ssh" "$r/etc/machine-id" "$r/home" "$r/home/debian" "$r/home/debian/.ssh" \
        "$r/home/debian/.ssh/authorized_keys" "$r/etc/trove" "$r/etc/trove/conf.d" \
        "$r/etc/trove/conf.d/trove-guestagent.conf"
    rm -f "$r"/etc/ssh/ssh_host_*
    truncate -s 0 "$r/etc/machine-id"
    install -d -m 0700 -o 1000 -g 1000 "$r/home/debian/.ssh"
    install -m 0600 -o 1000 -g 1000 "$scratch/key.pub" "$r/home/debian/.ssh/authorized_keys"
    install -d -m 0755 "$r/etc/trove/conf.d"
    install -m 0644 "$scratch/trove-guestagent.conf" "$r/etc/trove/conf.d/trove-guestagent.conf"
}

steps=(to_raw attach patch detach to_qcow2 total)
declare -A label=(
    [to_raw]="qemu-img convert to raw"
    [attach]="sfdisk, losetup, mount"
    [patch]="patch files"
    [detach]="umount, losetup -d"
    [to_qcow2]="qemu-img convert -c (zlib)"
    [total]="total"
)

# naive_once N: one run of the naive route; step times (ms) appended to
# $scratch/naive.STEP, output size to $scratch/naive.size.
naive_once() {
    local n=$1 t0 t1 t2 t3 t4 t5 part ss start size out="$scratch/naive-out.qcow2"
    mkdir -p "$scratch/work" "$mnt"
    rm -f "$raw" "$out"
    t0=$(now)
    run qemu-img convert -O raw "$image" "$raw"
    t1=$(now)
    sfdisk -J "$raw" > "$scratch/sfdisk.json"
    [ "$(jq -r .partitiontable.label "$scratch/sfdisk.json")" = gpt ] \
        || { echo "patch.sh: $image has no GPT partition table" >&2; exit 1; }
    ss=$(jq -r '.partitiontable.sectorsize // 512' "$scratch/sfdisk.json")
    part=$(jq -c '[.partitiontable.partitions[] | select(.node | test("[^0-9]2$"))][0] // empty' "$scratch/sfdisk.json")
    [ -n "$part" ] || { echo "patch.sh: $image has no partition 2" >&2; exit 1; }
    start=$(jq -r .start <<<"$part") size=$(jq -r .size <<<"$part")
    loopdev=$(losetup --find --show --offset $((start * ss)) --sizelimit $((size * ss)) "$raw")
    mount -t ext4 "$loopdev" "$mnt"
    t2=$(now)
    patch_tree "$mnt"
    t3=$(now)
    umount "$mnt"
    losetup -d "$loopdev"
    loopdev=""
    t4=$(now)
    run qemu-img convert -c -O qcow2 -o compression_type=zlib "$raw" "$out"
    t5=$(now)
    rm -f "$raw"
    ms "$t0" "$t1" >> "$scratch/naive.to_raw"
    ms "$t1" "$t2" >> "$scratch/naive.attach"
    ms "$t2" "$t3" >> "$scratch/naive.patch"
    ms "$t3" "$t4" >> "$scratch/naive.detach"
    ms "$t4" "$t5" >> "$scratch/naive.to_qcow2"
    ms "$t0" "$t5" >> "$scratch/naive.total"
    stat -c %s "$out" > "$scratch/naive.size"
    printf 'naive   run %d: %s s\n' "$n" "$(secs "$(ms "$t0" "$t5")")" >&2
}

# dbimage_once N: one run of `dbimage upload --no-publish`, into a fresh
# output directory; time (ms) appended to $scratch/dbimage.total.
dbimage_once() {
    local n=$1 t0 t1 outdir="$scratch/dbimage-out" out
    rm -rf "$outdir"
    mkdir -p "$outdir"
    t0=$(now)
    if ! run env DBIMAGE_SETTINGS="$scratch/settings.yaml" "$bin" upload -d postgresql -v 15 -f "$image" \
            --no-publish -k "$scratch/key.pub" -o "$outdir" \
            > "$scratch/dbimage.out" 2> "$scratch/dbimage.err"; then
        echo "patch.sh: dbimage upload failed:" >&2
        tail -n 20 "$scratch/dbimage.err" >&2
        exit 1
    fi
    t1=$(now)
    out=$(find "$outdir" -name '*.qcow2' -type f | head -n1)
    [ -n "$out" ] || { echo "patch.sh: dbimage upload wrote no .qcow2 in $outdir" >&2; exit 1; }
    ms "$t0" "$t1" >> "$scratch/dbimage.total"
    stat -c %s "$out" > "$scratch/dbimage.size"
    printf 'dbimage run %d: %s s\n' "$n" "$(secs "$(ms "$t0" "$t1")")" >&2
}

for i in $(seq 1 "$runs"); do
    naive_once "$i"
    if [ "$have_upload" = 1 ]; then dbimage_once "$i"; fi
done

printf 'image: %s (%s bytes), %s run(s) each, median, %s cores\n' \
    "$(basename "$image")" "$(stat -c %s "$image")" "$runs" "$(nproc)"
printf '%-30s %8s\n' "naive route" "seconds"
for s in "${steps[@]}"; do
    printf '  %-28s %8s\n' "${label[$s]}" "$(secs "$(median < "$scratch/naive.$s")")"
done
naive_ms=$(median < "$scratch/naive.total")
naive_size=$(cat "$scratch/naive.size")
if [ "$have_upload" = 1 ]; then
    dbimage_ms=$(median < "$scratch/dbimage.total")
    dbimage_size=$(cat "$scratch/dbimage.size")
    printf '%-30s %8s\n' "dbimage upload --no-publish" "$(secs "$dbimage_ms")"
    # dbimage's own phase table, when it prints one (last run).
    sed -n '/^phase/,/^$/p' "$scratch/dbimage.err" | sed '/^[[:space:]]*$/d; s/^/  /'
    awk -v a="$naive_ms" -v b="$dbimage_ms" 'BEGIN { printf "naive / dbimage time: %.2f\n", (b > 0 ? a / b : 0) }'
    awk -v a="$naive_size" -v b="$dbimage_size" \
        'BEGIN { printf "output: naive %d bytes, dbimage %d bytes (naive / dbimage %.3f)\n", a, b, a / b }'
    echo "runs (s): naive $(list "$scratch/naive.total"); dbimage $(list "$scratch/dbimage.total")"
else
    printf 'output: naive %d bytes (dbimage upload not available)\n' "$naive_size"
    echo "runs (s): naive $(list "$scratch/naive.total")"
fi
