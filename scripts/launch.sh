#!/usr/bin/env bash
# Runs a whole Berth cluster on this machine: the backend, the scheduler and the stock bot, with
# session servers spawned by the scheduler on demand. Ctrl-C (or SIGTERM) stops everything it started.
#
#   scripts/launch.sh            # then open http://127.0.0.1:8080
#   BERTH_DATABASE_URL=postgres://… BERTH_SCHEDULER_REPLICAS=3 scripts/launch.sh
#                                # three scheduler replicas sharing that database, on consecutive
#                                # ports from BERTH_SCHEDULER_LISTEN's (7070, 7071, 7072)
#
# Every BERTH_* variable of the README is passed through (e.g. BERTH_ROOMS_PER_SERVER=2).
# The cluster secret is written to $BERTH_DATA_DIR/cluster.secret (mode 0600) for operators'
# calls to the scheduler API. BERTH_BIN_DIR runs the binaries found there instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."

export BERTH_BACKEND_LISTEN="${BERTH_BACKEND_LISTEN:-127.0.0.1:8080}"
export BERTH_SCHEDULER_LISTEN="${BERTH_SCHEDULER_LISTEN:-127.0.0.1:7070}"
# Scheduler replicas: N processes sharing the registry and room directory in PostgreSQL, on
# consecutive ports; everyone is told all of them (BERTH_SCHEDULER_URL, comma-separated).
replicas="${BERTH_SCHEDULER_REPLICAS:-1}"
if ! [[ "$replicas" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: BERTH_SCHEDULER_REPLICAS must be a positive number, not '$replicas'" >&2
  exit 2
fi
if [ "$replicas" -gt 1 ] && [ -z "${BERTH_DATABASE_URL:-}" ]; then
  echo "error: BERTH_SCHEDULER_REPLICAS=$replicas needs PostgreSQL: set BERTH_DATABASE_URL" >&2
  exit 2
fi
scheduler_host="${BERTH_SCHEDULER_LISTEN%:*}"
scheduler_port="${BERTH_SCHEDULER_LISTEN##*:}"
scheduler_listens=()
scheduler_urls=()
for i in $(seq 0 $((replicas - 1))); do
  scheduler_listens+=("$scheduler_host:$((scheduler_port + i))")
  scheduler_urls+=("http://${scheduler_host/0.0.0.0/127.0.0.1}:$((scheduler_port + i))")
done
default_urls="$(IFS=,; echo "${scheduler_urls[*]}")"
export BERTH_SCHEDULER_URL="${BERTH_SCHEDULER_URL:-$default_urls}"
if [ "$replicas" -gt 1 ]; then
  export BERTH_SCHEDULER_SHARED=true
fi
export BERTH_DATA_DIR="${BERTH_DATA_DIR:-$PWD/.berth}"
export RUST_LOG="${RUST_LOG:-info}"
# The stock bot: its own listener and webhook key. Session servers deliver to it through
# BERTH_BOT_WEBHOOK_URL, on top of whatever the operator sets in BERTH_WEBHOOK_URL.
export BERTH_BOT_LISTEN="${BERTH_BOT_LISTEN:-127.0.0.1:7081}"
export BERTH_BACKEND_URL="${BERTH_BACKEND_URL:-http://${BERTH_BACKEND_LISTEN/0.0.0.0/127.0.0.1}}"
export BERTH_BOT_WEBHOOK_URL="http://${BERTH_BOT_LISTEN/0.0.0.0/127.0.0.1}/webhook"
if [ -z "${BERTH_BOT_WEBHOOK_SECRET:-}" ]; then
  BERTH_BOT_WEBHOOK_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  export BERTH_BOT_WEBHOOK_SECRET
fi

if [ -n "${BERTH_BIN_DIR:-}" ]; then
  bin="$BERTH_BIN_DIR"
else
  echo "==> building (release)…"
  cargo build --release --locked --quiet -p berth-scheduler -p berth-session -p berth-backend -p berth-cli -p berth-bot
  bin="$PWD/target/release"
fi
mkdir -p "$BERTH_DATA_DIR"
# The cluster secret: BERTH_CLUSTER_SECRET, else the one of the last run, else a new random one.
# It is kept in the data dir, readable by this user only, for operators' calls to the scheduler.
secret_file="$BERTH_DATA_DIR/cluster.secret"
if [ -z "${BERTH_CLUSTER_SECRET:-}" ] && [ -s "$secret_file" ]; then
  BERTH_CLUSTER_SECRET="$(tr -d ' \n' <"$secret_file")"
fi
if [ -z "${BERTH_CLUSTER_SECRET:-}" ]; then
  BERTH_CLUSTER_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
export BERTH_CLUSTER_SECRET
(umask 077 && rm -f "$secret_file" && printf '%s\n' "$BERTH_CLUSTER_SECRET" >"$secret_file")

pids=()
scheduler_pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping…"
  # Replicas (every scheduler on PostgreSQL) leave the session servers they spawned running
  # (they move to another replica), even those of a replica that died: stop every berth-session
  # of our process group.
  pgid="$(ps -o pgid= -p $$ | tr -d ' ')"
  for child in $(ps -o pid=,args= -g "$pgid" | awk -v b="$bin/berth-session" '$2 == b {print $1}'); do
    pids+=("$child")
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # Bounded: the scheduler drains its session servers within its shutdown timeout.
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "==> stopped"
}
trap stop INT TERM EXIT

# Waits until host:port accepts TCP connections (bounded).
wait_for_port() {
  local addr="${1/0.0.0.0/127.0.0.1}" name="$2"
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "error: $name did not start listening on $addr" >&2
  exit 1
}

# The backend first: on its first start it creates the ticket key pair that session servers need.
"$bin/berth-backend" &
pids+=($!)
wait_for_port "$BERTH_BACKEND_LISTEN" backend
for listen in "${scheduler_listens[@]}"; do
  BERTH_SCHEDULER_LISTEN="$listen" "$bin/berth-scheduler" --session-bin "$bin/berth-session" &
  pids+=($!)
  scheduler_pids+=($!)
  wait_for_port "$listen" scheduler
done
"$bin/berth-bot" &
pids+=($!)
wait_for_port "$BERTH_BOT_LISTEN" "stock bot"

cat <<MSG

  Berth is running.
    web client  http://${BERTH_BACKEND_LISTEN/0.0.0.0/127.0.0.1}/
    API         http://${BERTH_BACKEND_LISTEN/0.0.0.0/127.0.0.1}/api/rooms
    stock bot   say /stock=AAPL.US or /help in any room
    operator    http://${BERTH_BACKEND_LISTEN/0.0.0.0/127.0.0.1}/operator  (paste the cluster secret)
    secret      ${secret_file}  (mode 0600)
    schedulers  ${BERTH_SCHEDULER_URL}
    fleet       curl -sH "Authorization: Bearer \$(cat ${secret_file})" ${BERTH_SCHEDULER_URL%%,*}/v1/servers
    CLI         $bin/berth chat --backend http://${BERTH_BACKEND_LISTEN/0.0.0.0/127.0.0.1}
  Ctrl-C stops everything.

MSG
# Exit (and stop the rest) as soon as the backend or the bot ends, or the last scheduler replica.
others=("${pids[@]:0:1}" "${pids[@]: -1}")
while true; do
  live=()
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && live+=("$pid"); done
  wait -n "${live[@]}" || true
  for pid in "${others[@]}"; do kill -0 "$pid" 2>/dev/null || exit 0; done
  alive=0
  for pid in "${scheduler_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || exit 0
  echo "==> a scheduler replica ended; the others carry on" >&2
done
