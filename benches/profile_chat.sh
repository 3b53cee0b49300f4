#!/usr/bin/env bash
# Where a chat completion's CPU goes, per role: every role of Chorus in a process of its own (so
# the profile tells them apart), the mock provider in another, a nats-server of the script's own;
# `chorus bench chat --url` drives /v1/chat/completions at one concurrency while `perf record -a`
# samples both cores during the measured part of the Chorus phase. Prints the bench's report, each
# process's share of the samples with the CPU time per call it implies, and, per process, the
# share of its samples by kind of work (symbol families: SQLite, allocators, msgpack, JSON,
# the NATS client, HTTP, tokio, the kernel). Needs `perf` (Debian's linux-perf; sampling works
# where hardware counters do not) and a current nats-server on PATH.
#
#   cargo build --release -p chorus && benches/profile_chat.sh            # 200 concurrent
#   CONCURRENCY=50 SECONDS_MEASURED=16 benches/profile_chat.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHORUS=${CHORUS:-$ROOT/target/release/chorus}
CONCURRENCY=${CONCURRENCY:-200}
SECONDS_MEASURED=${SECONDS_MEASURED:-16}
WARMUP=2
DIR=$(mktemp -d /tmp/chorus-profile-XXXX)
NATS_PORT=${NATS_PORT:-14222} EDGE_PORT=${EDGE_PORT:-18080} MOCK_PORT=${MOCK_PORT:-19009}
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
cd "$DIR"

nats-server -c "$ROOT/nats/server/chorus.conf" -js -sd "$DIR/js" -a 127.0.0.1 -p "$NATS_PORT" \
  -l "$DIR/nats.log" &
PIDS+=($!); echo "$! nats-server" > processes
"$CHORUS" mock-llm --listen "127.0.0.1:$MOCK_PORT" > mock.log 2>&1 &
PIDS+=($!); echo "$! mock" >> processes
cat > chorus.toml <<EOF
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[database]
url = "sqlite://$DIR/chorus.db?mode=rwc"
[edge]
listen = "127.0.0.1:$EDGE_PORT"
auth = false
[probes]
listen = "127.0.0.1:0"
[log]
level = "warn"
[[routes]]
name = "mock"
provider = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
model = "gpt-4o-mini"
api_key_env = "PROFILE_MOCK_KEY"
EOF
export PROFILE_MOCK_KEY=unused
sleep 1
"$CHORUS" --config chorus.toml migrate > /dev/null
for role in persister evaluator llm orchestrator edge; do
  "$CHORUS" --config chorus.toml serve --roles "$role" > "$role.log" 2>&1 &
  PIDS+=($!); echo "$! $role" >> processes
done
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$EDGE_PORT/ready" > /dev/null && break; sleep 0.5; done

# The bench measures the mock alone first (warm-up + measured), then Chorus (warm-up, then
# measured): perf samples the middle of Chorus's measured part.
MOCK_PHASE=$((WARMUP + SECONDS_MEASURED))
( sleep $((MOCK_PHASE + WARMUP + 2)); perf record -F 499 -a -o "$DIR/perf.data" -- sleep $((SECONDS_MEASURED - 4)) ) \
  > perf.log 2>&1 &
PERF=$!
"$CHORUS" bench chat --url "http://127.0.0.1:$EDGE_PORT" --model mock \
  --mock-url "http://127.0.0.1:$MOCK_PORT" --mock-model gpt-4o-mini \
  --concurrency "$CONCURRENCY" --duration "${SECONDS_MEASURED}s" --warmup "${WARMUP}s" --json > bench.json
wait "$PERF"
perf script -i perf.data -F pid,ip,sym,dso 2> /dev/null > samples.txt

python3 - "$DIR" "$((SECONDS_MEASURED - 4))" <<'PY'
import collections, json, re, sys
from pathlib import Path
d, seconds = Path(sys.argv[1]), int(sys.argv[2])
names = dict(line.split() for line in (d / "processes").read_text().splitlines())
report = json.loads((d / "bench.json").read_text())
families = [
    ("SQLite (sqlx, sea-orm, its malloc)", r"sqlite|sqlx|flume|sea_orm|sea_query|_int_malloc|_int_free|malloc_consolidate|unlink_chunk"),
    ("allocator (mimalloc)", r"^_?mi_|mimalloc"),
    ("msgpack", r"rmp"),
    ("JSON", r"serde_json"),
    ("NATS client", r"async_nats"),
    ("HTTP", r"hyper|axum|reqwest|tower|h2::|http::"),
    ("tokio", r"tokio"),
    ("tracing, metrics", r"tracing|metrics"),
    ("memcpy, memcmp", r"mem(move|cpy|cmp|set)"),
    ("kernel", r"\[kernel"),
]
per = collections.defaultdict(collections.Counter)
total = 0
for line in (d / "samples.txt").read_text().splitlines():
    parts = line.split(None, 2)
    if len(parts) < 3:
        continue
    total += 1
    pid, _, sym = parts
    family = next((f for f, rx in families if re.search(rx, sym)), "other")
    per[names.get(pid, "idle" if pid == "0" else "other processes")][family] += 1
level = report["levels"][0]
mock, chorus = level.get("mock") or {}, level["chorus"]
rate = chorus["req_per_sec"]
print(f"{level['concurrency']} concurrent: mock alone {mock.get('req_per_sec', 0):.1f} req/s, "
      f"through Chorus {rate:.1f} req/s (p50 {chorus['p50_ms']:.1f} ms, {chorus['errors']} errors)")
print(f"perf: {total} samples over {seconds} s on 2 cores; the two cores over the answer rate: "
      f"{2000 / rate:.2f} ms per call in all")
for name, counts in sorted(per.items(), key=lambda kv: -sum(kv[1].values())):
    n = sum(counts.values())
    share = n / total
    per_call = "" if name == "idle" else f"  {2000 * share / rate:5.2f} ms/call"
    kinds = ", ".join(f"{f} {100 * k / n:.0f}%" for f, k in counts.most_common(6))
    print(f"{name:16} {100 * share:5.1f}%{per_call}  [{kinds}]")
PY
