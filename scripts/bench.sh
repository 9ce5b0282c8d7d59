#!/usr/bin/env bash
# Benchmarks of Berth, each run side by side with the Node.js peer (../shared/peers/node-ws:
# Berth's WebSocket protocol on the `ws` library) under the same load, in the same run, on this
# machine. Every figure is printed for both, with their ratio (Berth ÷ Node; for latencies and
# memory, lower is better).
#
#   scripts/bench.sh [fanout|connections|placement|all]      # default: all (~15 minutes)
#
# The server under test runs on one core and the load generator (`berth bench`) on the other
# (taskset), so that on a 2-core machine neither takes the other's CPU. Knobs (environment):
#   BENCH_SERVER_CPU=1  BENCH_GEN_CPU=0   the two cores
#   BENCH_STEP_SECS=3                     seconds per rate step of a saturation sweep
#   BENCH_HALF_SECS=6                     seconds of the runs at half the saturation rate
#   BENCH_CONNECTIONS=19800               idle connections to hold (each process may open 20,000 files)
#   BENCH_GENERATORS=2                    load-generator processes for the connection benchmark
#   BENCH_PLACEMENT_ROOMS=1000            rooms created by the placement benchmark
#   BENCH_NODE_PEER=../shared/peers/node-ws
#   BENCH_SHAPES="1x1000 1x5000 100x10"   fan-out shapes to run
#   BENCH_QUIET_WAIT=120                  seconds to wait for other work to leave the CPU idle
# Reports (JSON), logs and a summary go to target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scenario="${1:-all}"
case "$scenario" in
  fanout | connections | placement | all) ;;
  *) echo "usage: $0 [fanout|connections|placement|all]" >&2; exit 2 ;;
esac

SERVER_CPU="${BENCH_SERVER_CPU:-1}"
GEN_CPU="${BENCH_GEN_CPU:-0}"
STEP_SECS="${BENCH_STEP_SECS:-3}"
HALF_SECS="${BENCH_HALF_SECS:-6}"
CONNECTIONS="${BENCH_CONNECTIONS:-19800}"
GENERATORS="${BENCH_GENERATORS:-2}"
PLACEMENT_ROOMS="${BENCH_PLACEMENT_ROOMS:-1000}"
PEER_SRC="${BENCH_NODE_PEER:-$root/../shared/peers/node-ws}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-120}"
SHAPES="${BENCH_SHAPES:-1x1000 1x5000 100x10}"

out="$root/target/bench"
bin="$root/target/release"
peer="$root/target/node-peer"
keys="$out/keys"
summary="$out/summary.txt"
mkdir -p "$out" "$keys"
: >"$summary"

say() { echo "$*" | tee -a "$summary"; }
step() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

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

step "building (release)"
cargo build --release --locked --quiet -p berth-cli -p berth-session -p berth-scheduler -p berth-backend

step "preparing the Node.js peer in $peer"
[ -f "$PEER_SRC/server.mjs" ] || die "the Node.js peer is not at $PEER_SRC (set BENCH_NODE_PEER)"
mkdir -p "$peer"
# The peer's folder may be read-only: install into a copy.
if ! cmp -s "$PEER_SRC/server.mjs" "$peer/server.mjs" || [ ! -d "$peer/node_modules/ws" ]; then
  cp "$PEER_SRC"/package*.json "$PEER_SRC/server.mjs" "$peer/"
  chmod u+w "$peer"/*
  (cd "$peer" && npm install --no-audit --no-fund --silent >/dev/null)
fi

step "ticket keys"
if [ ! -f "$keys/ticket.key.pem" ]; then
  openssl genpkey -algorithm ed25519 -out "$keys/ticket.key.pem" 2>/dev/null
  openssl pkey -in "$keys/ticket.key.pem" -pubout -out "$keys/ticket.pub.pem"
fi

hard_nofile="$(ulimit -Hn)"
ulimit -n "$hard_nofile"

SERVER_ID="s-bench"
PORT=19201

# Starts the server under test ($1: berth|node) on $PORT, pinned; sets $server_pid.
# Berth runs standalone with its capacity limits lifted, and its per-connection message rate
# limit lifted too (the peer has none); its slow-reader protection (1,024 queued frames per
# connection) stays as shipped.
start_server() {
  local kind="$1" log="$out/server-$1.log"
  case "$kind" in
    berth)
      RUST_LOG=warn taskset -c "$SERVER_CPU" "$bin/berth-session" --standalone --server-id "$SERVER_ID" \
        --listen "127.0.0.1:$PORT" --ticket-public-key "$keys/ticket.pub.pem" --data-dir "$out/data" \
        --rooms 100000 --members-per-room 100000 --max-connections 1000000 \
        --message-rate 1000000 --message-burst 1000000 --drain-timeout-secs 2 >"$log" 2>&1 &
      ;;
    node)
      taskset -c "$SERVER_CPU" node "$peer/server.mjs" --port "$PORT" --server-id "$SERVER_ID" \
        --public-key "$keys/ticket.pub.pem" >"$log" 2>&1 &
      ;;
  esac
  server_pid=$!
  pids+=("$server_pid")
  [ "${2:-}" = nowait ] || wait_port "$PORT"
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

# --- fan-out ---------------------------------------------------------------------------------

# Reads the first step's delivery rate and latencies of report $2 into <$1>_del[$3], <$1>_p50[$3]…
read_latency() {
  local prefix="$1" f="$2" kind="$3"
  eval "${prefix}_del[$kind]=$(jq '.steps[0].delivered_per_sec // null' "$f" 2>/dev/null || echo null)"
  eval "${prefix}_p50[$kind]=$(jq '.steps[0].latency.p50_ms // null' "$f" 2>/dev/null || echo null)"
  eval "${prefix}_p99[$kind]=$(jq '.steps[0].latency.p99_ms // null' "$f" 2>/dev/null || echo null)"
  eval "${prefix}_p999[$kind]=$(jq '.steps[0].latency.p999_ms // null' "$f" 2>/dev/null || echo null)"
  eval "${prefix}_max[$kind]=$(jq '.steps[0].latency.max_ms // null' "$f" 2>/dev/null || echo null)"
}

# One shape: $1 name, $2 rooms, $3 members, $4 senders per room, $5 rates of the sweep,
# $6 ramp-up. For each server: sweep the rates until a step saturates (deliveries not all in
# within the drain time, or members dropped); the highest delivered/s is the saturation figure.
# Then a fresh run at half that delivery rate measures latency.
fanout_shape() {
  local name="$1" rooms="$2" members="$3" senders="$4" rates="$5" ramp="$6" ctimeout="$7"
  local offset=0
  declare -A sat half_rate sat_note half_del half_p50 half_p99 half_p999 half_max \
    same_del same_p50 same_p99 same_p999 same_max connected fill_secs
  for kind in berth node; do
    step "fan-out $name: $kind sweep"
    wait_quiet
    start_server "$kind"
    offset=$((offset + 1000))
    gen "fanout-$name-$kind-sweep" --rooms "$rooms" --members "$members" --senders "$senders" \
      --rate "$rates" --duration "${STEP_SECS}s" --drain 3s --ramp-up "$ramp" --until-saturated \
      --connect-timeout "$ctimeout" --room-offset "$offset"
    local f="$out/fanout-$name-$kind-sweep.json"
    connected[$kind]="$(jq '.setup.members_connected' "$f" 2>/dev/null || echo null)"
    fill_secs[$kind]="$(jq '.setup.connect_secs' "$f" 2>/dev/null || echo null)"
    sat[$kind]="$(jq '[.steps[].delivered_per_sec] | max // 0' "$f" 2>/dev/null || echo 0)"
    # What limited it: the saturated step's CPU use on each side, and errors.
    sat_note[$kind]="$(jq -r --argjson m "$members" '
      def cores: (.core_busy_percent // []) | map(floor | tostring + "%") | join(" ");
      def usage: "server \(.server_cpu_percent // 0 | floor)% and generator \(.generator_cpu_percent // 0 | floor)% of a core, cores busy \(cores)";
      ((.steps | map(select(.drained)) | last) // null) as $ok
      | (.steps | last) as $last
      | (if $ok then "kept up to \($ok.delivered_per_sec | floor)/s (\($ok | usage))" else "no step kept up" end)
        + (if ($last.drained and .members_connected_at_end == .setup.members_connected)
           then "; never saturated (generator-bound)"
           else "; saturated at \($last.target_sends_per_sec * $m | floor)/s offered: \($last.delivered_per_sec | floor)/s delivered, \($last.delivery_ratio * 100 | floor)% in time (\($last | usage))" end)
        + (if ([.steps[].generator_behind] | any) then "; generator behind its send schedule in \([.steps[] | select(.generator_behind)] | length) step(s)" else "" end)
        + (if (.errors | length) > 0 then "; errors \(.errors | tostring)" else "" end)' \
      "$f" 2>/dev/null || echo "n/a")"
    stop_server

    # Half the saturation delivery rate: rate per sender = (sat / 2) / (senders × rooms × members).
    local rate
    rate="$(awk -v s="${sat[$kind]}" -v n="$senders" -v r="$rooms" -v m="$members" 'BEGIN { printf "%.4f", s / 2 / (n * r * m) }')"
    half_rate[$kind]="$rate"
    step "fan-out $name: $kind at half of ${sat[$kind]} deliveries/s ($rate msg/s per sender)"
    wait_quiet
    start_server "$kind"
    offset=$((offset + 1000))
    gen "fanout-$name-$kind-half" --rooms "$rooms" --members "$members" --senders "$senders" \
      --rate "$rate" --duration "${HALF_SECS}s" --drain 5s --ramp-up "$ramp" \
      --connect-timeout "$ctimeout" --room-offset "$offset"
    read_latency half "$out/fanout-$name-$kind-half.json" "$kind"
    stop_server
  done

  # Berth again at the peer's half load: latency at the same load.
  step "fan-out $name: berth at the peer's half load (${half_rate[node]} msg/s per sender)"
  wait_quiet
  start_server berth
  offset=$((offset + 1000))
  gen "fanout-$name-berth-same" --rooms "$rooms" --members "$members" --senders "$senders" \
    --rate "${half_rate[node]}" --duration "${HALF_SECS}s" --drain 5s --ramp-up "$ramp" \
    --connect-timeout "$ctimeout" --room-offset "$offset"
  read_latency same "$out/fanout-$name-berth-same.json" berth
  stop_server
  for k in del p50 p99 p999 max; do eval "same_$k[node]=\${half_$k[node]}"; done

  say ""
  say "fan-out $name: $rooms room(s) x $members members, $senders sending per room, 100 B messages"
  say "  command: berth bench --direct ... --rooms $rooms --members $members --senders $senders --rate $rates --duration ${STEP_SECS}s --drain 3s --ramp-up $ramp --until-saturated"
  printf '  %-34s %14s %14s %8s\n' "" "berth" "node" "ratio" | tee -a "$summary"
  row() { printf '  %-34s %14s %14s %8s\n' "$1" "$(fmt "$2")" "$(fmt "$3")" "$(ratio "$2" "$3")" | tee -a "$summary"; }
  row "members connected" "${connected[berth]}" "${connected[node]}"
  row "time to connect them, ramp-up ${ramp} (s)" "${fill_secs[berth]}" "${fill_secs[node]}"
  row "deliveries/s at saturation" "${sat[berth]}" "${sat[node]}"
  say "  at half of each one's saturation:"
  row "  deliveries/s" "${half_del[berth]}" "${half_del[node]}"
  row "  latency p50 (ms)" "${half_p50[berth]}" "${half_p50[node]}"
  row "  latency p99 (ms)" "${half_p99[berth]}" "${half_p99[node]}"
  row "  latency p99.9 (ms)" "${half_p999[berth]}" "${half_p999[node]}"
  row "  latency max (ms)" "${half_max[berth]}" "${half_max[node]}"
  say "  at the same load (half of the peer's saturation):"
  row "  deliveries/s" "${same_del[berth]}" "${same_del[node]}"
  row "  latency p50 (ms)" "${same_p50[berth]}" "${same_p50[node]}"
  row "  latency p99 (ms)" "${same_p99[berth]}" "${same_p99[node]}"
  row "  latency p99.9 (ms)" "${same_p999[berth]}" "${same_p999[node]}"
  row "  latency max (ms)" "${same_max[berth]}" "${same_max[node]}"
  say "  berth: ${sat_note[berth]}"
  say "  node:  ${sat_note[node]}"
}

fanout() {
  # Rates per sender double each step; a step is $STEP_SECS seconds.
  for shape in $SHAPES; do
    case "$shape" in
      1x1000) fanout_shape "1x1000" 1 1000 100 "0.5,1,2,4,8,16,32" 2s 60s ;;
      # Filling a room of 5,000 sends 12.5 million `joined` frames: give slow servers time.
      1x5000) fanout_shape "1x5000" 1 5000 100 "0.1,0.25,0.5,1,2,4,8" 5s 300s ;;
      100x10) fanout_shape "100x10" 100 10 10 "1,2,4,8,16,32,64,128" 2s 60s ;;
      *) die "unknown fan-out shape $shape" ;;
    esac
  done
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
  for kind in berth node; do
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
  say ""
  say "connections: $CONNECTIONS idle members (rooms of 100) from $GENERATORS generator processes, 2 source addresses each"
  say "  command: berth bench --direct ... --rooms $rooms_per_gen --members 100 --rate 0 --duration ${hold}s --ramp-up 10s --bind-ips A,B --room-offset K  (x$GENERATORS)"
  printf '  %-34s %14s %14s %8s\n' "" "berth" "node" "ratio" | tee -a "$summary"
  row() { printf '  %-34s %14s %14s %8s\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" | tee -a "$summary"; }
  row "connections held (server side)" "${held[berth]}" "${held[node]}"
  row "members connected (generators)" "${gen_connected[berth]}" "${gen_connected[node]}"
  row "server RSS idle (KiB)" "${rss_base[berth]}" "${rss_base[node]}"
  row "server RSS loaded (KiB)" "${rss_loaded[berth]}" "${rss_loaded[node]}"
  row "RSS per connection (KiB)" "${per_conn[berth]}" "${per_conn[node]}"
  say "  errors berth: $(jq -c . "$out/connections-berth-errors.json")"
  say "  errors node:  $(jq -c . "$out/connections-node-errors.json")"
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
  for kind in berth node; do
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
  say "  process start to accepting connections (median of 10): berth-session ${startup[berth]} ms, node peer ${startup[node]} ms, ratio $(ratio "${startup[berth]}" "${startup[node]}")"
}

say "berth bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, server on core $SERVER_CPU, generator on core $GEN_CPU, node $(node --version)"
case "$scenario" in
  fanout) fanout ;;
  connections) connections ;;
  placement) placement ;;
  all)
    fanout
    connections
    placement
    ;;
esac
say ""
say "reports: $out/*.json; this summary: $summary"
