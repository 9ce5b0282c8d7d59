#!/usr/bin/env bash
# Benchmarks of Berth's session server, each run side by side with two Node.js peers under the
# same load, in the same run, on this machine: `ws` (../shared/peers/node-ws, what a Node
# developer writes first) and uWebSockets.js (../shared/peers/node-uws, C++ core with corked
# pub/sub, the one to beat). Every figure is printed for the three, with Berth's ratio to each
# (Berth ÷ peer; for CPU, latency and memory, lower is better).
#
#   scripts/bench.sh [fanout|durable|connections|placement|replicas|all]   # default: all (~45 minutes)
#
# The server under test runs on one core and the load generator (`berth bench`) on the other
# (taskset), so that on a 2-core machine neither takes the other's CPU. Knobs (environment):
#   BENCH_SERVER_CPU=1  BENCH_GEN_CPU=0   the two cores
#   BENCH_STEP_SECS=3                     seconds per rate step of a saturation sweep
#   BENCH_REFINE=3                        rates tried, on a fresh server, between a sweep's last
#                                         kept-up step and the step that saturated (the sweep
#                                         doubles its rate, so alone it is exact only to 2x); 0: none
#   BENCH_LOAD_SECS=6                     seconds of a fixed-load run (same load for every server)
#   BENCH_LOAD_ROUNDS=1                   fixed-load rounds; with more, the servers take turns
#                                         (A B C A B C ...) and each figure is the median of the
#                                         rounds (for a machine whose speed drifts within a run)
#   BENCH_CONNECTIONS=19800               idle connections to hold (each process may open 20,000 files)
#   BENCH_GENERATORS=2                    load-generator processes for the connection benchmark
#   BENCH_PLACEMENT_ROOMS=1000            rooms created by the placement benchmark
#   BENCH_WS_PEER=../shared/peers/node-ws      (BENCH_NODE_PEER, its old name, still works)
#   BENCH_UWS_PEER=../shared/peers/node-uws
#   BENCH_SERVERS="berth ws uws"          servers compared in fanout and connections
#   BENCH_SHAPES="1x1000 1x5000 100x10 1000x10"   fan-out shapes to run
#   BENCH_DURABLE_SHAPE=100x10            the shape the durable scenario runs with each store
#   BENCH_DATABASE_URL (or BERTH_TEST_DATABASE_URL)  PostgreSQL for the durable scenario (without
#                                         one its PostgreSQL column says "not run") and for the
#                                         replicas scenario (which creates and drops its databases)
#   BENCH_BERTH_BIN=target/release/berth-session   the Berth server binary under test
#   BENCH_NO_BUILD=1                      use the release binaries as they are (no cargo build)
#   BENCH_QUIET_WAIT=120                  seconds to wait for other work to leave the CPU idle
# Reports (JSON), logs and a summary go to target/bench/; the summary is also written, with the
# commit it measured and the machine's state, to docs/bench/<date>-<scenario>-<commit>.md (-2, -3,
# … when runs end in the same minute).
#
# Reading the figures: a sweep's headline is the highest step that KEPT UP (every delivery in
# within the drain time, no member dropped), never a saturated step. Server CPU microseconds per
# delivery (server process CPU time ÷ deliveries) is printed for every step of every sweep: it
# does not depend on whether the generator kept up, so it is the fair figure on a small machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scenario="${1:-all}"
case "$scenario" in
  fanout | durable | connections | placement | replicas | all) ;;
  *) echo "usage: $0 [fanout|durable|connections|placement|replicas|all]" >&2; exit 2 ;;
esac

SERVER_CPU="${BENCH_SERVER_CPU:-1}"
GEN_CPU="${BENCH_GEN_CPU:-0}"
STEP_SECS="${BENCH_STEP_SECS:-3}"
REFINE="${BENCH_REFINE:-3}"
LOAD_SECS="${BENCH_LOAD_SECS:-${BENCH_HALF_SECS:-6}}"
LOAD_ROUNDS="${BENCH_LOAD_ROUNDS:-1}"
CONNECTIONS="${BENCH_CONNECTIONS:-19800}"
GENERATORS="${BENCH_GENERATORS:-2}"
PLACEMENT_ROOMS="${BENCH_PLACEMENT_ROOMS:-1000}"
# The peers live in ../shared/peers beside the repository (two levels up from a worktree).
peers="$root/../shared/peers"
[ -d "$peers" ] || peers="$root/../../shared/peers"
WS_SRC="${BENCH_WS_PEER:-${BENCH_NODE_PEER:-$peers/node-ws}}"
UWS_SRC="${BENCH_UWS_PEER:-$peers/node-uws}"
SERVERS="${BENCH_SERVERS:-berth ws uws}"
DURABLE_SHAPE="${BENCH_DURABLE_SHAPE:-100x10}"
DATABASE_URL="${BENCH_DATABASE_URL:-${BERTH_TEST_DATABASE_URL:-}}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-120}"
SHAPES="${BENCH_SHAPES:-1x1000 1x5000 100x10 1000x10}"

out="$root/target/bench"
bin="$root/target/release"
berth_bin="${BENCH_BERTH_BIN:-$bin/berth-session}"
keys="$out/keys"
summary="$out/summary.txt"
mkdir -p "$out" "$keys"
: >"$summary"

say() { echo "$*" | tee -a "$summary"; }
step() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }
[[ "$LOAD_ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_LOAD_ROUNDS must be a positive integer, not '$LOAD_ROUNDS'"

for tool in taskset jq ss curl node npm openssl; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done

# --- processes -------------------------------------------------------------------------------

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Stops one process we started (SIGTERM, then SIGKILL after 10 s).
stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Waits until 127.0.0.1:$1 accepts TCP connections (bounded).
wait_port() {
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.025
  done
  die "nothing listens on port $1"
}

# Percent of the machine's CPU busy over one second (all cores).
machine_busy() {
  local a b
  a="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)"
  sleep 1
  b="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat)"
  echo "$a $b" | awk '{ d = $4 - $2; if (d > 0) printf "%.0f", ($3 - $1) / d * 100; else print 0 }'
}

# Figures mean little while something else uses the CPU: wait (bounded) for a quiet machine.
wait_quiet() {
  local busy
  for _ in $(seq 1 "$QUIET_WAIT"); do
    busy="$(machine_busy)"
    [ "$busy" -le 10 ] && return 0
  done
  busy="$(machine_busy)"
  if [ "$busy" -gt 10 ]; then
    say "  warning: $busy% of the CPU was busy with other work before this run; its figures are low"
  fi
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Ratio a/b with 2 decimals, or n/a.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
fmt() { awk -v x="$1" 'BEGIN { if (x == "" || x == "null") print "n/a"; else if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else printf "%.2f", x }'; }

# --- setup -----------------------------------------------------------------------------------

if [ -z "${BENCH_NO_BUILD:-}" ]; then
  step "building (release)"
  cargo build --release --locked --quiet -p berth-cli -p berth-session -p berth-scheduler -p berth-backend
fi

# The peers' folders may be read-only: each is installed into a copy under target/.
prepare_peer() {
  local src="$1" dst="$2" module="$3"
  step "preparing the peer $src in $dst"
  [ -f "$src/server.mjs" ] || die "no peer at $src (see the BENCH_*_PEER knobs)"
  mkdir -p "$dst"
  if ! cmp -s "$src/server.mjs" "$dst/server.mjs" || ! cmp -s "$src/package.json" "$dst/package.json" \
    || [ ! -d "$dst/node_modules/$module" ]; then
    cp "$src"/package*.json "$src/server.mjs" "$dst/"
    chmod u+w "$dst"/*
    (cd "$dst" && npm install --no-audit --no-fund --silent >/dev/null)
  fi
}
prepare_peer "$WS_SRC" "$root/target/node-peer" ws
prepare_peer "$UWS_SRC" "$root/target/node-peer-uws" uWebSockets.js

step "ticket keys"
if [ ! -f "$keys/ticket.key.pem" ]; then
  openssl genpkey -algorithm ed25519 -out "$keys/ticket.key.pem" 2>/dev/null
  openssl pkey -in "$keys/ticket.key.pem" -pubout -out "$keys/ticket.pub.pem"
fi

hard_nofile="$(ulimit -Hn)"
ulimit -n "$hard_nofile"

SERVER_ID="s-bench"
PORT=19201

# Display names of the servers under test.
label() {
  case "$1" in
    berth) echo "berth" ;;
    ws) echo "ws" ;;
    uws) echo "uWS.js" ;;
    berth-sqlite) echo "berth+sqlite" ;;
    berth-pg) echo "berth+postgres" ;;
    _) echo "-" ;;
    *) echo "$1" ;;
  esac
}

# Starts the server under test ($1: berth|berth-sqlite|berth-pg|ws|uws) on $PORT, pinned; sets
# $server_pid and $server_rss0 (KiB, once it listens).
# Berth runs standalone with its capacity limits lifted, and its per-connection message rate
# limit lifted too (the peers have none); its slow-reader protection (1,024 queued frames per
# connection) stays as shipped. `berth` keeps history in memory like the peers (no store:
# durability off); berth-sqlite and berth-pg write every message to the store (durability on).
start_server() {
  local kind="$1" log="$out/server-$1.log" store=() data="$out/data"
  case "$kind" in
    berth) store=(--store none) ;;
    berth-sqlite)
      data="$out/data-sqlite"
      rm -rf "$data"
      store=(--store sqlite)
      ;;
    berth-pg) store=(--store postgres --database-url "$DATABASE_URL") ;;
  esac
  case "$kind" in
    berth*)
      mkdir -p "$data"
      RUST_LOG=warn taskset -c "$SERVER_CPU" "$berth_bin" --standalone --server-id "$SERVER_ID" \
        --listen "127.0.0.1:$PORT" --ticket-public-key "$keys/ticket.pub.pem" --data-dir "$data" \
        --rooms 100000 --members-per-room 100000 --max-connections 1000000 \
        --message-rate 1000000 --message-burst 1000000 --drain-timeout-secs 2 "${store[@]}" >"$log" 2>&1 &
      ;;
    ws)
      taskset -c "$SERVER_CPU" node "$root/target/node-peer/server.mjs" --port "$PORT" --server-id "$SERVER_ID" \
        --public-key "$keys/ticket.pub.pem" >"$log" 2>&1 &
      ;;
    uws)
      taskset -c "$SERVER_CPU" node "$root/target/node-peer-uws/server.mjs" --port "$PORT" --server-id "$SERVER_ID" \
        --public-key "$keys/ticket.pub.pem" >"$log" 2>&1 &
      ;;
    *) die "unknown server $kind" ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  [ "${2:-}" = nowait ] && return 0
  wait_port "$PORT"
  sleep 0.5
  server_rss0="$(rss_kib "$server_pid")"
}

stop_server() { stop_pid "$server_pid"; }

# Runs `berth bench --direct` against the server under test, pinned; the JSON report goes to
# $out/$1.json.
gen() {
  local name="$1"
  shift
  if ! taskset -c "$GEN_CPU" "$bin/berth" bench --quiet --json \
    --direct "ws://127.0.0.1:$PORT/ws" --server-id "$SERVER_ID" --ticket-key "$keys/ticket.key.pem" \
    --server-pid "$server_pid" "$@" >"$out/$name.json" 2>"$out/$name.err"; then
    echo "warning: bench $name did not measure anything: $(tail -n 2 "$out/$name.err")" >&2
  fi
}

# A table of up to three servers: `thead MODE A B C` then `trow LABEL a b c`. MODE peers: the
# ratios are A÷B and A÷C (Berth against each peer); MODE store: B÷A and C÷A (each store against
# none).
thead() {
  table_mode="$1"
  shift
  local r1 r2
  if [ "$table_mode" = peers ]; then r1="$(label "$1")/$(label "$2")"; r2="$(label "$1")/$(label "$3")"
  else r1="$(label "$2")/$(label "$1")"; r2="$(label "$3")/$(label "$1")"; fi
  printf '  %-44s %14s %14s %14s %12s %12s\n' "" "$(label "$1")" "$(label "$2")" "$(label "$3")" "$r1" "$r2" | tee -a "$summary"
}
trow() {
  local r1 r2
  if [ "$table_mode" = peers ]; then r1="$(ratio "$2" "$3")"; r2="$(ratio "$2" "$4")"
  else r1="$(ratio "$3" "$2")"; r2="$(ratio "$4" "$2")"; fi
  printf '  %-44s %14s %14s %14s %12s %12s\n' "$1" "$(fmt "$2")" "$(fmt "$3")" "$(fmt "$4")" "$r1" "$r2" | tee -a "$summary"
}

# --- fan-out ---------------------------------------------------------------------------------

# jq: whether a sweep ended on a step that saturated (deliveries late, or members dropped); a
# sweep run --until-saturated stops at that step, so it is the last. `kept_steps`: the others.
SATURATION='def ended_saturated: (.steps[-1].drained | not) or .members_connected_at_end < .setup.members_connected;
  def kept_steps: if ended_saturated then .steps[:-1] else .steps end;'
# jq: the highest delivered rate of a step that kept up.
KEPT="$SATURATION"'(kept_steps | map(.delivered_per_sec) | max) // null'
# jq: "OK SAT", the per-sender rates of the last step that kept up and of the step that ended the
# sweep by saturating; nothing when the sweep never saturated or its first step did.
SAT_BOUNDS="$SATURATION"'if (.steps | length) >= 2 and ended_saturated then "\(.steps[-2].rate_per_member) \(.steps[-1].rate_per_member)" else empty end'

# The per-sender rates of a refining sweep: $3 rates geometrically between $1 and $2, exclusive.
refine_rates() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { for (k = 1; k <= n; k++) printf "%s%.4g", (k > 1 ? "," : ""), a * (b / a) ^ (k / (n + 1)) }'
}

# Prints every step of sweep report $2 (server $1, its label followed by $4): rate, delivered,
# kept up, CPU, cost, p99.
sweep_steps() {
  local kind="$1" f="$2" members="$3" suffix="${4:-}"
  jq -r --arg k "$(label "$kind")$suffix" --argjson m "$members" '
    def n: if . == null then "n/a" elif . >= 100 then (. | floor | tostring) else ((. * 100 | round) / 100 | tostring) end;
    .steps[] | "    \($k): \(.rate_per_member) msg/s per sender: offered \(.target_sends_per_sec * $m | n)/s, delivered \(.delivered_per_sec | n)/s, \(if .drained then "kept up" else "SATURATED (\(.delivery_ratio * 100 | floor)% in time)" end), server \(.server_cpu_percent | n)% of a core, \(.server_cpu_us_per_delivery | n) µs CPU/delivery, p50 \(.latency.p50_ms | n) / p99 \(.latency.p99_ms | n) ms\(if .generator_behind then ", generator behind" else "" end)"' \
    "$f" 2>/dev/null | tee -a "$summary" || say "    $(label "$kind"): no report"
}

# What limited a sweep (report $1, $2 members per room).
sweep_note() {
  jq -r --argjson m "$2" "$SATURATION"'
    def cores: (.core_busy_percent // []) | map(floor | tostring + "%") | join(" ");
    def usage: "server \(.server_cpu_percent // 0 | floor)% and generator \(.generator_cpu_percent // 0 | floor)% of a core, cores busy \(cores)";
    (kept_steps | last) as $ok
    | (.steps | last) as $last
    | (if $ok then "kept up to \($ok.delivered_per_sec | floor)/s (\($ok | usage))" else "no step kept up" end)
      + (if ended_saturated | not
         then "; never saturated (generator-bound)"
         else "; saturated at \($last.target_sends_per_sec * $m | floor)/s offered: \($last.delivered_per_sec | floor)/s delivered, \($last.delivery_ratio * 100 | floor)% in time (\($last | usage))" end)
      + (if ([.steps[].generator_behind] | any) then "; generator behind its send schedule in \([.steps[] | select(.generator_behind)] | length) step(s)" else "" end)
      + (if (.errors | length) > 0 then "; errors \(.errors | tostring)" else "" end)' \
    "$1" 2>/dev/null || echo "n/a"
}

# Fields of a fixed-load report's only step.
load_field() { local f="$1"; shift; jq "$@" "$f" 2>/dev/null || echo null; }

# The median of the numbers among the words of $1 ("null" when there are none).
median() {
  tr ' ' '\n' <<<"$1" | { grep -E '^-?[0-9.]+(e[-+]?[0-9]+)?$' || true; } | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# One shape: $1 name, $2 rooms, $3 members, $4 senders per room, $5 rates of the sweep ("" for
# no sweep), $6 ramp-up, $7 connect timeout, $8 fixed load in msg/s per sender ("" for half of
# the lowest kept-up rate of the servers), $9 table mode, the rest: the servers.
# Each server: a sweep until a step saturates (headline: the highest step that kept up), then
# every server at one same fixed load (CPU, cost per delivery, latency).
fanout_shape() {
  local name="$1" rooms="$2" members="$3" senders="$4" rates="$5" ramp="$6" ctimeout="$7" load="$8" mode="$9"
  shift 9
  local kinds=("$@") offset=0 kind
  declare -A kept connected fill rss_full rss0 l_del l_cpu l_us l_p50 l_p99 l_p999 l_max l_kept note
  for kind in "${kinds[@]}"; do
    [ -n "$rates" ] || break
    if [ "$kind" = berth-pg ] && [ -z "$DATABASE_URL" ]; then continue; fi
    step "fan-out $name: $kind sweep"
    wait_quiet
    start_server "$kind"
    rss0[$kind]="$server_rss0"
    offset=$((offset + 1000))
    gen "fanout-$name-$kind-sweep" --rooms "$rooms" --members "$members" --senders "$senders" \
      --rate "$rates" --duration "${STEP_SECS}s" --drain 3s --ramp-up "$ramp" --until-saturated \
      --connect-timeout "$ctimeout" --room-offset "$offset"
    local f="$out/fanout-$name-$kind-sweep.json"
    connected[$kind]="$(jq '.setup.members_connected' "$f" 2>/dev/null || echo null)"
    fill[$kind]="$(jq '.setup.connect_secs' "$f" 2>/dev/null || echo null)"
    kept[$kind]="$(jq "$KEPT" "$f" 2>/dev/null || echo null)"
    rss_full[$kind]="$(jq --argjson b "${rss0[$kind]:-0}" '(.steps[0].server_rss_mib * 1024 - $b) / .setup.members_connected' "$f" 2>/dev/null || echo null)"
    note[$kind]="$(sweep_note "$f" "$members")"
    stop_server

    # Between the last step that kept up and the one that saturated, on a fresh server (a
    # saturated step may have closed members): the headline is the highest step of either.
    local bounds fine="$out/fanout-$name-$kind-refine.json"
    rm -f "$fine"
    bounds="$(jq -r "$SAT_BOUNDS" "$f" 2>/dev/null || true)"
    [ "$REFINE" -gt 0 ] && [ -n "$bounds" ] || continue
    local fine_rates
    fine_rates="$(refine_rates ${bounds} "$REFINE")"
    step "fan-out $name: $kind refining sweep, $fine_rates msg/s per sender"
    wait_quiet
    start_server "$kind"
    offset=$((offset + 1000))
    gen "fanout-$name-$kind-refine" --rooms "$rooms" --members "$members" --senders "$senders" \
      --rate "$fine_rates" --duration "${STEP_SECS}s" --drain 3s --ramp-up "$ramp" --until-saturated \
      --connect-timeout "$ctimeout" --room-offset "$offset"
    local fine_kept
    fine_kept="$(jq "$KEPT" "$fine" 2>/dev/null || echo null)"
    kept[$kind]="$(printf '%s\n%s\n' "${kept[$kind]}" "$fine_kept" | { grep -Ev '^null$' || true; } | sort -g | tail -n 1)"
    : "${kept[$kind]:=null}"
    note[$kind]+="; refined between ${bounds/ / and } msg/s per sender: $(sweep_note "$fine" "$members")"
    stop_server
  done

  if [ -z "$load" ]; then
    local lowest
    lowest="$(for kind in "${kinds[@]}"; do echo "${kept[$kind]:-null}"; done | awk '$1 != "null" && $1 > 0' | sort -g | head -n 1)"
    load="$(awk -v s="${lowest:-0}" -v n="$senders" -v r="$rooms" -v m="$members" 'BEGIN { v = s / 2 / (n * r * m); printf "%.4f", (v > 0 ? v : 1) }')"
  fi
  local load_del
  load_del="$(awk -v l="$load" -v n="$senders" -v r="$rooms" -v m="$members" 'BEGIN { printf "%.0f", l * n * r * m }')"
  # Each round runs every server once; a figure is the median of its rounds.
  declare -A r_del r_cpu r_us r_p50 r_p99 r_p999 r_max r_kept
  local round
  for round in $(seq 1 "$LOAD_ROUNDS"); do
    for kind in "${kinds[@]}"; do
      if [ "$kind" = berth-pg ] && [ -z "$DATABASE_URL" ]; then continue; fi
      step "fan-out $name: $kind at $load msg/s per sender ($load_del deliveries/s offered), round $round of $LOAD_ROUNDS"
      wait_quiet
      start_server "$kind"
      offset=$((offset + 1000))
      local f="$out/fanout-$name-$kind-load.json"
      [ "$LOAD_ROUNDS" -gt 1 ] && f="$out/fanout-$name-$kind-load-$round.json"
      gen "$(basename "$f" .json)" --rooms "$rooms" --members "$members" --senders "$senders" \
        --rate "$load" --duration "${LOAD_SECS}s" --drain 5s --ramp-up "$ramp" \
        --connect-timeout "$ctimeout" --room-offset "$offset"
      r_del[$kind]+="$(load_field "$f" '.steps[0].delivered_per_sec // null') "
      r_cpu[$kind]+="$(load_field "$f" '.steps[0].server_cpu_percent // null') "
      r_us[$kind]+="$(load_field "$f" '.steps[0].server_cpu_us_per_delivery // null') "
      r_p50[$kind]+="$(load_field "$f" '.steps[0].latency.p50_ms // null') "
      r_p99[$kind]+="$(load_field "$f" '.steps[0].latency.p99_ms // null') "
      r_p999[$kind]+="$(load_field "$f" '.steps[0].latency.p999_ms // null') "
      r_max[$kind]+="$(load_field "$f" '.steps[0].latency.max_ms // null') "
      r_kept[$kind]+="$(load_field "$f" -r 'if (.steps[0].drained and .members_connected_at_end == .setup.members_connected) then "yes" else "NO" end') "
      [ -n "${connected[$kind]:-}" ] || connected[$kind]="$(jq '.setup.members_connected' "$f" 2>/dev/null || echo null)"
      stop_server
    done
  done
  for kind in "${!r_us[@]}"; do
    l_del[$kind]="$(median "${r_del[$kind]}")"
    l_cpu[$kind]="$(median "${r_cpu[$kind]}")"
    l_us[$kind]="$(median "${r_us[$kind]}")"
    l_p50[$kind]="$(median "${r_p50[$kind]}")"
    l_p99[$kind]="$(median "${r_p99[$kind]}")"
    l_p999[$kind]="$(median "${r_p999[$kind]}")"
    l_max[$kind]="$(median "${r_max[$kind]}")"
    # Kept up only if every round did.
    if grep -q NO <<<"${r_kept[$kind]}"; then l_kept[$kind]="NO"; else l_kept[$kind]="yes"; fi
  done

  local a="${kinds[0]}" b="${kinds[1]:-_}" c="${kinds[2]:-_}"
  local durability="off for every column (history in memory, as the peers keep it)"
  [ "$mode" = store ] && durability="off for $(label "$a") (no store), on for $(label "$b") and $(label "$c") (a message is broadcast only once the store has committed it; commits are batched across rooms)"
  say ""
  say "fan-out $name: $rooms room(s) x $members members, $senders sending per room, 100 B messages; durability $durability"
  [ -n "$rates" ] && say "  sweep: berth bench --direct ... --rooms $rooms --members $members --senders $senders --rate $rates --duration ${STEP_SECS}s --drain 3s --ramp-up $ramp --until-saturated"
  [ -n "$rates" ] && [ "$REFINE" -gt 0 ] && say "  then, on a fresh server, $REFINE rates between the last step kept up and the step that saturated (same flags); the headline is the highest step kept up in either"
  say "  same load: --rate $load per sender ($load_del deliveries/s offered) --duration ${LOAD_SECS}s --drain 5s"
  [ "$LOAD_ROUNDS" -gt 1 ] && say "  same load in $LOAD_ROUNDS rounds, the servers taking turns; each figure below is the median of the rounds"
  thead "$mode" "$a" "$b" "$c"
  trow "members connected" "${connected[$a]:-}" "${connected[$b]:-}" "${connected[$c]:-}"
  if [ -n "$rates" ]; then
    trow "time to connect them, ramp-up ${ramp} (s)" "${fill[$a]:-}" "${fill[$b]:-}" "${fill[$c]:-}"
    trow "HEADLINE: highest deliveries/s kept up" "${kept[$a]:-}" "${kept[$b]:-}" "${kept[$c]:-}"
    trow "server RSS per member, room(s) full (KiB)" "${rss_full[$a]:-}" "${rss_full[$b]:-}" "${rss_full[$c]:-}"
  fi
  say "  at the same load, $load_del deliveries/s offered (kept up: $(label "$a") ${l_kept[$a]:-n/a}, $(label "$b") ${l_kept[$b]:-n/a}, $(label "$c") ${l_kept[$c]:-n/a}):"
  trow "  deliveries/s" "${l_del[$a]:-}" "${l_del[$b]:-}" "${l_del[$c]:-}"
  trow "  server CPU (% of a core)" "${l_cpu[$a]:-}" "${l_cpu[$b]:-}" "${l_cpu[$c]:-}"
  trow "  server CPU per delivery (µs)" "${l_us[$a]:-}" "${l_us[$b]:-}" "${l_us[$c]:-}"
  trow "  latency p50 (ms)" "${l_p50[$a]:-}" "${l_p50[$b]:-}" "${l_p50[$c]:-}"
  trow "  latency p99 (ms)" "${l_p99[$a]:-}" "${l_p99[$b]:-}" "${l_p99[$c]:-}"
  trow "  latency p99.9 (ms)" "${l_p999[$a]:-}" "${l_p999[$b]:-}" "${l_p999[$c]:-}"
  trow "  latency max (ms)" "${l_max[$a]:-}" "${l_max[$b]:-}" "${l_max[$c]:-}"
  if [ "$LOAD_ROUNDS" -gt 1 ]; then
    say "  same load, every round (server CPU per delivery µs / p99 ms / kept up):"
    for kind in "${kinds[@]}"; do
      [ -n "${r_us[$kind]+x}" ] || continue
      local -a us p99 ok
      read -r -a us <<<"${r_us[$kind]}"
      read -r -a p99 <<<"${r_p99[$kind]}"
      read -r -a ok <<<"${r_kept[$kind]}"
      local line="" i
      for i in "${!us[@]}"; do line+="${line:+, }$(fmt "${us[$i]}") / $(fmt "${p99[$i]}") / ${ok[$i]}"; done
      say "    $(label "$kind"): $line"
    done
  fi
  if [ -n "$rates" ]; then
    say "  every step of every sweep:"
    for kind in "${kinds[@]}"; do
      [ -f "$out/fanout-$name-$kind-sweep.json" ] && [ -n "${kept[$kind]+x}" ] || { say "    $(label "$kind"): not run"; continue; }
      sweep_steps "$kind" "$out/fanout-$name-$kind-sweep.json" "$members"
      [ -f "$out/fanout-$name-$kind-refine.json" ] && sweep_steps "$kind" "$out/fanout-$name-$kind-refine.json" "$members" " (refining)"
    done
    for kind in "${kinds[@]}"; do
      [ -n "${note[$kind]+x}" ] && say "  $(label "$kind"): ${note[$kind]}"
    done
  fi
}

# The shape's arguments to fanout_shape before the mode: rooms, members, senders, sweep rates,
# ramp-up, connect timeout, fixed load (msg/s per sender; "" = half the lowest kept-up rate).
shape_args() {
  case "$1" in
    1x1000) echo "1 1000 100 0.5,1,2,4,8,16,32 2s 60s -" ;;
    # Filling a room of 5,000 sends 12.5 million `joined` frames: give slow servers time.
    1x5000) echo "1 5000 100 0.1,0.25,0.5,1,2,4,8 5s 300s -" ;;
    # 8 msg/s per member = 80,000 deliveries/s, the moderate load of issue 15.
    100x10) echo "100 10 10 1,2,4,8,16,32,64,128 2s 60s 8" ;;
    # Many small rooms at chat's own pace: 1 msg/s per member, 100,000 deliveries/s; no sweep.
    1000x10) echo "1000 10 10 - 5s 60s 1" ;;
    *) die "unknown fan-out shape $1" ;;
  esac
}

run_shape() {
  local shape="$1" mode="$2"
  shift 2
  local rooms members senders rates ramp ctimeout load
  read -r rooms members senders rates ramp ctimeout load <<<"$(shape_args "$shape")"
  [ "$rates" = - ] && rates=""
  [ "$load" = - ] && load=""
  fanout_shape "$shape" "$rooms" "$members" "$senders" "$rates" "$ramp" "$ctimeout" "$load" "$mode" "$@"
}

fanout() {
  local servers
  read -r -a servers <<<"$SERVERS"
  for shape in $SHAPES; do run_shape "$shape" peers "${servers[@]}"; done
}

# The same fan-out with history in memory (durability off), in SQLite, and in PostgreSQL.
durable() {
  [ -n "$DATABASE_URL" ] || say "durable: no BENCH_DATABASE_URL or BERTH_TEST_DATABASE_URL: the PostgreSQL column is not run"
  run_shape "$DURABLE_SHAPE" store berth berth-sqlite berth-pg
}

# --- connections -----------------------------------------------------------------------------

# Idle members held, and the session process's resident memory per connection. Members are
# spread over $GENERATORS generator processes (each may open 20,000 files) and loopback source
# addresses 127.0.0.2… (each address pair has ~28,000 ports); rooms of 100.
connections() {
  local per_gen=$(((CONNECTIONS + GENERATORS - 1) / GENERATORS))
  local rooms_per_gen=$(((per_gen + 99) / 100))
  local hold=$((20 + CONNECTIONS / 2000))
  declare -A held rss_base rss_loaded per_conn gen_connected
  local servers kind
  read -r -a servers <<<"$SERVERS"
  for kind in "${servers[@]}"; do
    step "connections: $kind, $CONNECTIONS idle members from $GENERATORS processes"
    wait_quiet
    start_server "$kind"
    sleep 1
    rss_base[$kind]="$(rss_kib "$server_pid")"
    local gens=()
    for g in $(seq 0 $((GENERATORS - 1))); do
      local ips="127.0.0.$((2 * g + 2)),127.0.0.$((2 * g + 3))"
      gen "connections-$kind-$g" --rooms "$rooms_per_gen" --members 100 --rate 0 \
        --duration "${hold}s" --ramp-up 10s --drain 0s --bind-ips "$ips" \
        --room-offset $((g * rooms_per_gen)) --connect-concurrency 128 &
      gens+=($!)
    done
    # Wait until the established connections stop growing, then read the server's memory.
    local count=0 last=-1 stable=0
    for _ in $(seq 1 $((hold * 2))); do
      sleep 1
      count="$(ss -Htn state established "( sport = :$PORT )" | wc -l)"
      if [ "$count" -ge "$CONNECTIONS" ]; then break; fi
      if [ "$count" = "$last" ] && [ "$count" -gt 0 ]; then stable=$((stable + 1)); else stable=0; fi
      [ "$stable" -ge 5 ] && break
      last="$count"
    done
    sleep 2
    held[$kind]="$(ss -Htn state established "( sport = :$PORT )" | wc -l)"
    rss_loaded[$kind]="$(rss_kib "$server_pid")"
    per_conn[$kind]="$(awk -v a="${rss_loaded[$kind]}" -v b="${rss_base[$kind]}" -v n="${held[$kind]}" 'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "null" }')"
    for p in "${gens[@]}"; do wait "$p" || true; done
    gen_connected[$kind]="$(cat "$out"/connections-"$kind"-*.json | jq -s 'map(.setup.members_connected) | add')"
    jq -s 'map(.errors) | add' "$out"/connections-"$kind"-*.json >"$out/connections-$kind-errors.json"
    stop_server
  done
  local a="${servers[0]}" b="${servers[1]:-_}" c="${servers[2]:-_}"
  say ""
  say "connections: $CONNECTIONS idle members (rooms of 100) from $GENERATORS generator processes, 2 source addresses each"
  say "  command: berth bench --direct ... --rooms $rooms_per_gen --members 100 --rate 0 --duration ${hold}s --ramp-up 10s --bind-ips A,B --room-offset K  (x$GENERATORS)"
  thead peers "$a" "$b" "$c"
  trow "connections held (server side)" "${held[$a]:-}" "${held[$b]:-}" "${held[$c]:-}"
  trow "members connected (generators)" "${gen_connected[$a]:-}" "${gen_connected[$b]:-}" "${gen_connected[$c]:-}"
  trow "server RSS idle (KiB)" "${rss_base[$a]:-}" "${rss_base[$b]:-}" "${rss_base[$c]:-}"
  trow "server RSS loaded (KiB)" "${rss_loaded[$a]:-}" "${rss_loaded[$b]:-}" "${rss_loaded[$c]:-}"
  trow "RSS per connection (KiB)" "${per_conn[$a]:-}" "${per_conn[$b]:-}" "${per_conn[$c]:-}"
  for kind in "${servers[@]}"; do
    say "  errors $(label "$kind"): $(jq -c . "$out/connections-$kind-errors.json" 2>/dev/null)"
  done
  say "  cap: each process may open $hard_nofile files (ulimit -Hn), so one server holds at most ~$hard_nofile connections"
}

# --- placement -------------------------------------------------------------------------------

# Room creates through the backend (login, create; no connects), with and without waiting for
# spawns; and the time from starting a session process to it accepting connections, Berth's
# and the peer's.
placement() {
  local sched_port=19270 backend_port=19280
  declare -A creates p50 p99 max servers
  for mode in spawn warm; do
    local data="$out/placement-$mode"
    rm -rf "$data"
    mkdir -p "$data"
    local secret
    secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local rps warm
    # spawn: 100 rooms per server and no spare server, so 1,000 creates wait for 10 spawns.
    # warm: one ready server with room for all of them before the first create.
    if [ "$mode" = spawn ]; then rps=100; warm=0; else rps=$((PLACEMENT_ROOMS + 100)); warm=1; fi
    step "placement: $PLACEMENT_ROOMS creates, $mode"
    wait_quiet
    # One load generator on one address: the per-address and per-user limits would throttle it.
    BERTH_CLUSTER_SECRET="$secret" BERTH_DATA_DIR="$data" RUST_LOG=warn \
      BERTH_CREATE_RATE_PER_ADDRESS=0 BERTH_API_RATE_PER_ADDRESS=0 BERTH_API_RATE_PER_USER=0 \
      taskset -c "$SERVER_CPU" "$bin/berth-backend" --listen "127.0.0.1:$backend_port" \
      --scheduler-url "http://127.0.0.1:$sched_port" >"$out/placement-$mode-backend.log" 2>&1 &
    local backend_pid=$!
    pids+=("$backend_pid")
    wait_port "$backend_port"
    BERTH_CLUSTER_SECRET="$secret" BERTH_DATA_DIR="$data" RUST_LOG=warn \
      taskset -c "$SERVER_CPU" "$bin/berth-scheduler" --listen "127.0.0.1:$sched_port" \
      --session-bin "$bin/berth-session" --rooms-per-server "$rps" --warm-servers "$warm" \
      --max-servers 16 >"$out/placement-$mode-scheduler.log" 2>&1 &
    local sched_pid=$!
    pids+=("$sched_pid")
    wait_port "$sched_port"
    if [ "$warm" -gt 0 ]; then
      # Wait for the warm server to be ready.
      for _ in $(seq 1 200); do
        n="$(curl -fsS -H "Authorization: Bearer $secret" "http://127.0.0.1:$sched_port/v1/servers" | jq '[.servers[] | select(.state == "ready")] | length')"
        [ "$n" -ge 1 ] && break
        sleep 0.05
      done
    fi
    if ! BERTH_CLUSTER_SECRET="$secret" taskset -c "$GEN_CPU" "$bin/berth" --backend "http://127.0.0.1:$backend_port" \
      bench --quiet --json --rooms "$PLACEMENT_ROOMS" --members 0 --create-concurrency 16 \
      --scheduler-url "http://127.0.0.1:$sched_port" >"$out/placement-$mode.json" 2>"$out/placement-$mode.err"; then
      echo "warning: placement $mode: $(tail -n 2 "$out/placement-$mode.err")" >&2
    fi
    local f="$out/placement-$mode.json"
    creates[$mode]="$(jq '.setup.creates_per_sec' "$f")"
    p50[$mode]="$(jq '.setup.create_latency.p50_ms // null' "$f")"
    p99[$mode]="$(jq '.setup.create_latency.p99_ms // null' "$f")"
    max[$mode]="$(jq '.setup.create_latency.max_ms // null' "$f")"
    servers[$mode]="$(jq '.servers // null' "$f")"
    jq -c '.errors' "$f" >"$out/placement-$mode-errors.json"
    stop_pid "$sched_pid"
    stop_pid "$backend_pid"
  done

  # Start to accepting: exec the server, then poll its port as fast as bash can (~1 ms).
  declare -A startup
  for kind in berth ws uws; do
    local times=()
    for _ in $(seq 1 10); do
      local t0 t1 n=0
      t0="$(date +%s%N)"
      start_server "$kind" nowait
      until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
        n=$((n + 1))
        [ "$n" -lt 20000 ] || die "$kind did not start"
      done
      t1="$(date +%s%N)"
      times+=($(((t1 - t0) / 1000)))
      stop_server
    done
    startup[$kind]="$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR] = $1} END {printf "%.1f", a[int((NR + 1) / 2)] / 1000}')"
  done

  say ""
  say "placement: $PLACEMENT_ROOMS room creates through the backend (login, then create; 16 in flight), scheduler and backend on core $SERVER_CPU"
  say "  command: berth --backend URL bench --rooms $PLACEMENT_ROOMS --members 0 --create-concurrency 16 --scheduler-url URL"
  printf '  %-34s %14s %14s\n' "" "with spawning" "warm server" | tee -a "$summary"
  row() { printf '  %-34s %14s %14s\n' "$1" "$(fmt "$2")" "$(fmt "$3")" | tee -a "$summary"; }
  row "creates/s" "${creates[spawn]}" "${creates[warm]}"
  row "create latency p50 (ms)" "${p50[spawn]}" "${p50[warm]}"
  row "create latency p99 (ms)" "${p99[spawn]}" "${p99[warm]}"
  row "create latency max (ms)" "${max[spawn]}" "${max[warm]}"
  printf '  %-34s %14s %14s\n' "session servers at the end" "${servers[spawn]}" "${servers[warm]}" | tee -a "$summary"
  say "  errors: spawn $(cat "$out/placement-spawn-errors.json"), warm $(cat "$out/placement-warm-errors.json")"
  say "  process start to accepting connections (median of 10): berth-session ${startup[berth]} ms, ws peer ${startup[ws]} ms, uWS.js peer ${startup[uws]} ms"
}

# --- replicas --------------------------------------------------------------------------------

# Room creates through the backend (as in placement, a warm server with room for all) against
# the single-process scheduler (SQLite) and against 1, 2 and 3 scheduler replicas sharing one
# PostgreSQL database (--shared). The backend and the generator get every replica's URL and move
# on when one fails. All schedulers and the backend share the server core, so this measures
# what the shared state costs, not how replicas add capacity (that needs more machines).
replicas() {
  if [ -z "$DATABASE_URL" ]; then
    say "replicas: not run (set BENCH_DATABASE_URL or BERTH_TEST_DATABASE_URL to a PostgreSQL)"
    return 0
  fi
  command -v psql >/dev/null || die "psql is needed for the replicas scenario"
  local base_port=19370 backend_port=19380
  declare -A creates p50 p99 max
  for n in single 1 2 3; do
    local data="$out/replicas-$n" db_url="" count=1 db=""
    rm -rf "$data"
    mkdir -p "$data"
    if [ "$n" != single ]; then
      count="$n"
      db="berth_bench_replicas_$n"
      psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null
      psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
      db_url="${DATABASE_URL%/*}/$db"
    fi
    local urls=() i
    for i in $(seq 0 $((count - 1))); do urls+=("http://127.0.0.1:$((base_port + i))"); done
    local list
    list="$(IFS=,; echo "${urls[*]}")"
    local secret
    secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local env=(BERTH_CLUSTER_SECRET="$secret" BERTH_DATA_DIR="$data" RUST_LOG=warn BERTH_SCHEDULER_URL="$list")
    [ -n "$db_url" ] && env+=(BERTH_DATABASE_URL="$db_url" BERTH_SCHEDULER_SHARED=true)
    step "replicas: $PLACEMENT_ROOMS creates, scheduler $n"
    wait_quiet
    env "${env[@]}" BERTH_CREATE_RATE_PER_ADDRESS=0 BERTH_API_RATE_PER_ADDRESS=0 BERTH_API_RATE_PER_USER=0 \
      taskset -c "$SERVER_CPU" "$bin/berth-backend" --listen "127.0.0.1:$backend_port" \
      >"$out/replicas-$n-backend.log" 2>&1 &
    local backend_pid=$! sched_pids=()
    pids+=("$backend_pid")
    wait_port "$backend_port"
    for i in $(seq 0 $((count - 1))); do
      env "${env[@]}" taskset -c "$SERVER_CPU" "$bin/berth-scheduler" \
        --listen "127.0.0.1:$((base_port + i))" --session-bin "$bin/berth-session" \
        --rooms-per-server $((PLACEMENT_ROOMS + 100)) --warm-servers 1 --max-servers 2 \
        >"$out/replicas-$n-scheduler-$i.log" 2>&1 &
      sched_pids+=($!)
      pids+=($!)
      wait_port "$((base_port + i))"
    done
    local ready=0
    for _ in $(seq 1 400); do
      ready="$(curl -fsS -H "Authorization: Bearer $secret" "${urls[0]}/v1/servers" | jq '[.servers[] | select(.state == "ready")] | length')"
      [ "$ready" -ge 1 ] && break
      sleep 0.05
    done
    [ "$ready" -ge 1 ] || die "replicas $n: no warm server became ready"
    if ! BERTH_CLUSTER_SECRET="$secret" taskset -c "$GEN_CPU" "$bin/berth" --backend "http://127.0.0.1:$backend_port" \
      bench --quiet --json --rooms "$PLACEMENT_ROOMS" --members 0 --create-concurrency 16 \
      --scheduler-url "$list" >"$out/replicas-$n.json" 2>"$out/replicas-$n.err"; then
      echo "warning: replicas $n: $(tail -n 2 "$out/replicas-$n.err")" >&2
    fi
    local f="$out/replicas-$n.json"
    creates[$n]="$(jq '.setup.creates_per_sec' "$f")"
    p50[$n]="$(jq '.setup.create_latency.p50_ms // null' "$f")"
    p99[$n]="$(jq '.setup.create_latency.p99_ms // null' "$f")"
    max[$n]="$(jq '.setup.create_latency.max_ms // null' "$f")"
    # Session servers of shared replicas outlive their scheduler: stop them by pid first (each
    # replica knows the pids of the ones it spawned).
    local pid url
    for url in "${urls[@]}"; do
      for pid in $(curl -fsS -H "Authorization: Bearer $secret" "$url/v1/servers" | jq -r '.servers[].pid // empty'); do
        stop_pid "$pid"
      done
    done
    for pid in "${sched_pids[@]}"; do stop_pid "$pid"; done
    stop_pid "$backend_pid"
    [ -n "$db" ] && psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  done
  say ""
  say "replicas: $PLACEMENT_ROOMS room creates through the backend (login, then create; 16 in flight), a warm server with room for all; schedulers and backend on core $SERVER_CPU, PostgreSQL unpinned"
  say "  command: berth --backend URL bench --rooms $PLACEMENT_ROOMS --members 0 --create-concurrency 16 --scheduler-url URL[,URL...]"
  printf '  %-26s %12s %12s %12s %12s\n' "" "single" "1 replica" "2 replicas" "3 replicas" | tee -a "$summary"
  local row
  for row in "creates/s:creates" "create latency p50 (ms):p50" "create latency p99 (ms):p99" "create latency max (ms):max"; do
    local label="${row%%:*}" key="${row##*:}"
    local -n col="$key"
    printf '  %-26s %12s %12s %12s %12s\n' "$label" "$(fmt "${col[single]}")" "$(fmt "${col[1]}")" "$(fmt "${col[2]}")" "$(fmt "${col[3]}")" | tee -a "$summary"
    unset -n col
  done
}

commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- . ':!docs/bench' 2>/dev/null || commit="$commit+changes"
started="$(date -u +%Y-%m-%dT%H:%MZ)"
say "berth bench $scenario: $started, commit $commit, $(nproc) cores, server on core $SERVER_CPU, generator on core $GEN_CPU, node $(node --version)"
say "  machine at the start: load average $(cut -d' ' -f1-3 /proc/loadavg), $(machine_busy)% of the CPU busy"
say "  berth server binary: $berth_bin"
case "$scenario" in
  fanout) fanout ;;
  durable) durable ;;
  connections) connections ;;
  placement) placement ;;
  replicas) replicas ;;
  all)
    fanout
    durable
    connections
    placement
    replicas
    ;;
esac
say ""
say "  machine at the end: load average $(cut -d' ' -f1-3 /proc/loadavg)"
say "reports: $out/*.json; this summary: $summary"

# The summary, with the commit it measured, kept beside the others in docs/bench/.
mkdir -p "$root/docs/bench"
base="$root/docs/bench/$(date -u +%Y-%m-%dT%H%M)-$scenario-${commit%+changes}"
record="$base.md"
# Two runs ending in the same minute each keep their summary.
n=2
while [ -e "$record" ]; do
  record="$base-$n.md"
  n=$((n + 1))
done
{
  echo "# scripts/bench.sh $scenario, $started, commit $commit"
  echo
  echo '```'
  cat "$summary"
  echo '```'
} >"$record"
echo "summary recorded in ${record#"$root"/}" >&2
