#!/usr/bin/env bash
# Times the same image built for amd64 (native) and ppc64le (through
# qemu-user) on this host, both with a warm cache: each is built once to
# fill the cache, then built again and timed. Prints the per-phase table of
# both timed builds side by side with the ppc64le/amd64 ratio.
# Not a test: run it by hand as root, then record the figures in README.md.
#
#   DB=postgresql VERSION=15 RELEASE=bookworm COMPRESSION=zstd bench/arch.sh
#
# Builds in a private cache seeded with a copy of the shared one
# (DBIMAGE_CACHE_DIR, default /var/cache/dbimage), so the warm-up builds are
# cheap when the shared cache is warm, and other builds running meanwhile
# cannot hold apt's lock on the package cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup-host"
cargo build --quiet --release --manifest-path "$here/Cargo.toml"
bin="${CARGO_TARGET_DIR:-$here/target}/release/dbimage"

db=${DB:-postgresql} version=${VERSION:-15} release=${RELEASE:-bookworm}
compression=${COMPRESSION:-zstd}
scratch=$(mktemp -d /var/tmp/dbimage-bench-arch.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
shared=${DBIMAGE_CACHE_DIR:-/var/cache/dbimage}
mkdir -p "$scratch/cache"
[ -d "$shared" ] && cp -a "$shared/." "$scratch/cache/"
export DBIMAGE_DATA_DIR="$here" DBIMAGE_WORK_DIR="$scratch/work" DBIMAGE_CACHE_DIR="$scratch/cache"

# build ARCH LABEL: one build; its wall time goes to $scratch/ARCH.LABEL.wall
# and its phase table to $scratch/ARCH.LABEL.table.
build() {
    local arch=$1 label=$2 start end
    start=$(date +%s%N)
    if ! "$bin" make -d "$db" -v "$version" -r "$release" -a "$arch" -I --force \
            --compression "$compression" -o "$scratch/images-$arch" \
            2> "$scratch/$arch.$label.err" > "$scratch/$arch.$label.out"; then
        echo "arch.sh: $arch $label build failed:" >&2
        tail -n 20 "$scratch/$arch.$label.err" >&2
        exit 1
    fi
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 )) > "$scratch/$arch.$label.wall"
    sed -n '/^phase/,/^$/p' "$scratch/$arch.$label.err" | sed '1d;/^[[:space:]]*$/d' > "$scratch/$arch.$label.table"
    printf '%-8s %-6s %6.1f s\n' "$arch" "$label" "$(awk '{print $1/1000}' "$scratch/$arch.$label.wall")" >&2
}

for arch in amd64 ppc64le; do build "$arch" warmup; done
for arch in amd64 ppc64le; do build "$arch" timed; done

echo "$db $version, Debian $release, $compression, warm cache, $(nproc) cores"
awk -v a="$scratch/amd64.timed.table" -v p="$scratch/ppc64le.timed.table" \
    -v wa="$(cat "$scratch/amd64.timed.wall")" -v wp="$(cat "$scratch/ppc64le.timed.wall")" '
    function row(name, x, y) {
        printf "%-16s %9.1f %9.1f %8s\n", name, x, y, (x > 0 ? sprintf("%.1fx", y / x) : "-")
    }
    BEGIN {
        # Phase names may contain a space ("base tree"); seconds are last.
        while ((getline line < a) > 0) { n = split(line, f, " "); s = f[n]; sub(/[ \t]+[0-9.]+$/, "", line); amd[line] = s; order[++k] = line }
        while ((getline line < p) > 0) { n = split(line, f, " "); s = f[n]; sub(/[ \t]+[0-9.]+$/, "", line); ppc[line] = s; if (!(line in amd)) order[++k] = line }
        printf "%-16s %9s %9s %8s\n", "phase", "amd64", "ppc64le", "ratio"
        for (i = 1; i <= k; i++) row(order[i], amd[order[i]], ppc[order[i]])
        row("total (wall)", wa / 1000, wp / 1000)
    }'
for arch in amd64 ppc64le; do
    image=$(head -n1 "$scratch/$arch.timed.out" | cut -d' ' -f1)
    printf '%-8s %s, %s bytes\n' "$arch" "$(basename "$image")" "$(stat -c %s "$image")"
done
