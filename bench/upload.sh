#!/usr/bin/env bash
# Upload throughput of `dbimage publish` against `curl -T` of the same file
# to the same Glance, and dbimage's peak RSS for a 4 GB qcow2.
# Starts its own local cloud (scripts/openstack) and stops it at the end.
# Not a test: run it by hand as root, then record the figures in README.md.
#   IMAGE=images/x.qcow2 bench/upload.sh   # default: 1 GiB of random data as qcow2
#   RUNS=3                                 # repetitions (median reported)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup-host"
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get install -y -qq time >/dev/null; }
cargo build --quiet --release --manifest-path "$here/Cargo.toml"
bin="$here/target/release/dbimage"
runs=${RUNS:-3}

scratch=$(mktemp -d /var/tmp/dbimage-bench-upload.XXXXXX)
cloud="$scratch/cloud"
cleanup() { "$here/scripts/openstack" stop "$cloud" || true; rm -rf "$scratch"; }
trap cleanup EXIT
"$here/scripts/openstack" start "$cloud" >/dev/null
export OS_CLIENT_CONFIG_FILE="$cloud/clouds.yaml" OS_CLOUD=dbimage-admin DBIMAGE_DATA_DIR="$here"
export no_proxy=127.0.0.1 NO_PROXY=127.0.0.1

image=${IMAGE:-}
if [ -z "$image" ]; then
    image="$scratch/random.qcow2"
    dd if=/dev/urandom of="$scratch/random.raw" bs=1M count=1024 status=none
    qemu-img convert -q -f raw -O qcow2 "$scratch/random.raw" "$image"
    rm "$scratch/random.raw"
fi
size=$(stat -c %s "$image")

# A token and Glance's URL, the way curl users get them.
read -r token glance < <(python3 - "$cloud/state.json" <<'EOF'
import json, sys, urllib.request
st = json.load(open(sys.argv[1]))
body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
    "name": "admin", "domain": {"id": "default"}, "password": st["passwords"]["admin"]}}},
    "scope": {"project": {"id": st["ids"]["admin_project"]}}}}
req = urllib.request.Request(f"http://127.0.0.1:{st['ports']['keystone']}/v3/auth/tokens",
    data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req) as r:
    print(r.headers["X-Subject-Token"], f"http://127.0.0.1:{st['ports']['glance']}")
EOF
)

secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.2f}')" "$1" "$2"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

curl_once() {
    local id start end
    id=$(curl -sf -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
        -d '{"name":"bench-curl","disk_format":"qcow2","container_format":"bare"}' \
        "$glance/v2/images" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    start=$(date +%s%N)
    curl -sf -T "$image" -X PUT -H "X-Auth-Token: $token" \
        -H 'Content-Type: application/octet-stream' "$glance/v2/images/$id/file"
    end=$(date +%s%N)
    curl -sf -X DELETE -H "X-Auth-Token: $token" "$glance/v2/images/$id"
    secs "$start" "$end"
}

# dbimage's own figure for the transfer alone ("uploaded X in S s"); a new
# name and content each run so nothing is reused.
dbimage_once() {
    local n=$1 out
    cp --reflink=auto "$image" "$scratch/copy.qcow2"
    qemu-io -f qcow2 -c "write -P $n 0 512" "$scratch/copy.qcow2" >/dev/null
    out=$("$bin" publish "$scratch/copy.qcow2" -d postgresql -v 99.1 --name "bench-dbimage-$n" 2>&1 >/dev/null)
    echo "$out" | sed -n 's/.*uploaded .* in \([0-9.]*\) s .*/\1/p'
}

echo "file: $image ($size bytes), $runs runs each"
c=(); d=()
for i in $(seq 1 "$runs"); do
    c+=("$(curl_once)")
    d+=("$(dbimage_once "$i")")
done
cm=$(printf '%s\n' "${c[@]}" | median)
dm=$(printf '%s\n' "${d[@]}" | median)
python3 - "$size" "$cm" "$dm" <<'EOF'
import sys
size, c, d = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
mib = size / 2**20
print(f"curl -T        {c:6.2f} s  {mib / c:7.1f} MiB/s")
print(f"dbimage upload {d:6.2f} s  {mib / d:7.1f} MiB/s")
print(f"dbimage / curl throughput: {c / d:.2f}")
EOF
echo "runs: curl ${c[*]}; dbimage ${d[*]}"

# Peak RSS on a 4 GB file: a qcow2 with preallocated metadata is a valid
# image whose file is 4 GB long but mostly holes on disk.
big="$scratch/big.qcow2"
qemu-img create -q -f qcow2 -o preallocation=metadata "$big" 4G
/usr/bin/time -f '%M' -o "$scratch/rss" "$bin" publish "$big" -d postgresql -v 99.2 --name bench-rss \
    > /dev/null 2> "$scratch/rss.err"
printf '4 GB qcow2 (%s bytes): %s; peak RSS %s KiB\n' "$(stat -c %s "$big")" \
    "$(sed -n 's/.*\(uploaded .* s (.*)\).*/\1/p' "$scratch/rss.err")" "$(tail -1 "$scratch/rss")"
