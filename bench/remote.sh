#!/usr/bin/env bash
# What a remote build (`make -i`) costs over a local one: builds the Redis
# image locally, then through an sshd of its own on 127.0.0.1 (so the
# "build VM" is this machine and the difference is dbimage's overhead:
# copying the data files and the binary, streaming the log, fetching and
# checking the image). Both use the warm shared cache. Prints wall times.
# Not a test: run it by hand as root, then record the figures in README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/setup-host"
cargo build --quiet --release --manifest-path "$here/Cargo.toml"
bin="$here/target/release/dbimage"

scratch=$(mktemp -d /var/tmp/dbimage-bench.XXXXXX)
sshd_pid=
cleanup() { [ -z "$sshd_pid" ] || kill "$sshd_pid" 2>/dev/null || true; rm -rf "$scratch"; }
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N "" -f "$scratch/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$scratch/client_key"
cp "$scratch/client_key.pub" "$scratch/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$scratch/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $scratch/host_key
PidFile $scratch/sshd.pid
AuthorizedKeysFile $scratch/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
CONF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$scratch/sshd_config" 2> "$scratch/sshd.log" &
sshd_pid=$!
echo "[127.0.0.1]:$port $(cat "$scratch/host_key.pub")" > "$scratch/known_hosts"
sleep 1

export DBIMAGE_DATA_DIR="$here" DBIMAGE_WORK_DIR="$scratch/work" DBIMAGE_IMAGES_DIR="$scratch/images" \
       DBIMAGE_KNOWN_HOSTS="$scratch/known_hosts" DBIMAGE_DIB_PORT="$port" DBIMAGE_DIB_USER=root \
       DBIMAGE_DIB_PRIVATE_SSH_KEY="$scratch/client_key"

run() {
    local label=$1; shift
    local start end
    start=$(date +%s%N)
    "$bin" make -d redis -I --force "$@" 2> "$scratch/$label.err" > "$scratch/$label.out"
    end=$(date +%s%N)
    printf '%-7s %6d.%d s\n' "$label" $(( (end - start) / 1000000000 )) $(( (end - start) / 100000000 % 10 ))
}

run warmup
for i in 1 2; do
    run local
    run remote -i 127.0.0.1
done
image=$(head -n1 "$scratch/remote.out" | cut -d' ' -f1)
printf 'image: %s, %s bytes\n' "$(basename "$image")" "$(stat -c %s "$image")"
