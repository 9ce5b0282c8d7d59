#!/usr/bin/env bash
# Schema-driven fuzzing of the backend's public API: starts a scheduler and a backend on free
# ports (the scheduler spawns session servers as rooms are created), then runs Schemathesis
# against the backend's own OpenAPI document (GET /api/openapi.json) with the checks
# `not_a_server_error` and `response_schema_conformance`, bounded in examples and time.
#
#   scripts/fuzz-api.sh                     # needs `schemathesis` on PATH (pip install schemathesis)
#   FUZZ_MAX_EXAMPLES=50 FUZZ_MAX_TIME=120  # knobs
set -euo pipefail
cd "$(dirname "$0")/.."

command -v schemathesis >/dev/null || { echo "error: schemathesis is not installed (pip install schemathesis)" >&2; exit 1; }
cargo build --locked --quiet -p berth-scheduler -p berth-session -p berth-backend
bin="${CARGO_TARGET_DIR:-$PWD/target}/debug"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data="$(mktemp -d /tmp/berth-fuzz.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

export BERTH_DATA_DIR="$data"
export BERTH_SCHEDULER_LISTEN="127.0.0.1:$(free_port)"
export BERTH_BACKEND_LISTEN="127.0.0.1:$(free_port)"
export BERTH_SCHEDULER_URL="http://$BERTH_SCHEDULER_LISTEN"
export BERTH_CLUSTER_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export BERTH_MAX_SERVERS="${BERTH_MAX_SERVERS:-2}"
# The fuzzer creates thousands of rooms in two minutes. A full fleet answers 503 `no_capacity`
# (documented), which the `not_a_server_error` check would count as a failure, so give the two
# servers room for every create and let unclaimed rooms give their slots back quickly.
export BERTH_ROOMS_PER_SERVER="${BERTH_ROOMS_PER_SERVER:-20000}" BERTH_UNCLAIMED_ROOM_SECS="${BERTH_UNCLAIMED_ROOM_SECS:-2}"
# One client from one address: per-address and per-user limits would answer 429 to most of
# the run (429 is documented, but it would hide the handlers from the fuzzer).
export BERTH_API_RATE_PER_ADDRESS=0 BERTH_API_RATE_PER_USER=0 BERTH_CREATE_RATE_PER_ADDRESS=0
export BERTH_HISTORY_RATE=0 BERTH_CREATE_RATE=0
export RUST_LOG="${RUST_LOG:-warn}"

wait_for() {
  for _ in $(seq 1 200); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "error: $1 never answered" >&2
  exit 1
}

"$bin/berth-backend" 2>"$data/backend.log" &
pids+=($!)
"$bin/berth-scheduler" --session-bin "$bin/berth-session" 2>"$data/scheduler.log" &
pids+=($!)
backend="http://$BERTH_BACKEND_LISTEN"
wait_for "$BERTH_SCHEDULER_URL/healthz"
wait_for "$backend/healthz"

token="$(curl -fsS -X POST -H 'content-type: application/json' -d '{"username":"fuzzer"}' "$backend/api/login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

status=0
schemathesis run "$backend/api/openapi.json" \
  --checks not_a_server_error,response_schema_conformance \
  --header "Authorization: Bearer $token" \
  --max-examples "${FUZZ_MAX_EXAMPLES:-50}" \
  --max-time "${FUZZ_MAX_TIME:-120}" \
  --request-timeout 10 \
  --workers 1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- backend log (tail)" >&2; tail -n 40 "$data/backend.log" >&2 || true
fi
exit "$status"
