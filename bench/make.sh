#!/usr/bin/env bash
# Times a cold build (empty cache: debootstrap and every .deb downloaded)
# and a warm rebuild (cached base tree and packages) of the PostgreSQL 15
# image, and prints wall times, image size and the per-phase table.
# Not a test: run it by hand as root, then record the figures in README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup-host"
cargo build --quiet --release --manifest-path "$here/Cargo.toml"
bin="$here/target/release/dbimage"

scratch=$(mktemp -d /var/tmp/dbimage-bench.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export DBIMAGE_DATA_DIR="$here" DBIMAGE_CACHE_DIR="$scratch/cache" \
       DBIMAGE_WORK_DIR="$scratch/work" DBIMAGE_IMAGES_DIR="$scratch/images"
compression=${COMPRESSION:-zlib}

run() {
    local label=$1
    local start end
    start=$(date +%s%N)
    "$bin" make -d postgresql -v 15 -r bookworm -I --force --compression "$compression" \
        2> "$scratch/$label.err" > "$scratch/$label.out"
    end=$(date +%s%N)
    printf '%s build: %d.%d s\n' "$label" $(( (end - start) / 1000000000 )) $(( (end - start) / 100000000 % 10 ))
    sed -n '/^phase/,/^$/p' "$scratch/$label.err"
}

run cold
run warm
image=$(head -n1 "$scratch/warm.out" | cut -d' ' -f1)
printf 'image: %s, %s bytes (%s compression)\n' "$(basename "$image")" "$(stat -c %s "$image")" "$compression"
