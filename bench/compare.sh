#!/usr/bin/env bash
# Halyard vs Mosquitto on loopback with the same load generator (`halyard bench`).
#
#   bench/compare.sh [--unpinned] [SCENARIO...]
#
# Scenarios (all by default): pairs_q1 fanin_q1_16b fanin_q1_1kb fanout_q0 latency_q1 conn_10k.
# Each broker runs alone, freshly started for each scenario, pinned to CPU 0 (`taskset -c 0`); the generator is
# pinned to CPU 1 (so it runs one worker thread). --unpinned runs Halyard without taskset (Mosquitto is
# single-threaded anyway). Stopped by PID after each run.
#
# Environment:
#   BENCH_SECS=10             seconds per scenario
#   BENCH_FANOUT_RATE=500     fanout publisher rate (msg/s; x1000 deliveries/s). Bounded so queues stay bounded.
#   BENCH_CONNRATE=2000       conn_10k connections per second
#   BENCH_INFLIGHT=64         broker outbound window: HALYARD_MQTT__MAX_INFLIGHT and mosquitto max_inflight_messages
#   BENCH_HALYARD_PORT=18871  BENCH_MOSQUITTO_PORT=18872
#
# Results: bench/results/<date>/<time>-<scenario>-<broker>.json (+ .log with the progress lines and broker logs),
# and the table printed at the end, also saved as <time>-table.txt.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

PIN_HALYARD=(taskset -c 0)
WANT=()
for a in "$@"; do
    case "$a" in
        --unpinned) PIN_HALYARD=() ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) echo "unknown option $a" >&2; exit 1 ;;
        *) WANT+=("$a") ;;
    esac
done

MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
    echo "mosquitto is not installed: apt-get install mosquitto" >&2
    exit 2
fi
for tool in taskset jq; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is missing: apt-get install $([ "$tool" = taskset ] && echo util-linux || echo jq)" >&2
        exit 2
    fi
done

SECS=${BENCH_SECS:-10}
FANOUT_RATE=${BENCH_FANOUT_RATE:-500}
CONNRATE=${BENCH_CONNRATE:-2000}
INFLIGHT=${BENCH_INFLIGHT:-64}
HPORT=${BENCH_HALYARD_PORT:-18871}
MPORT=${BENCH_MOSQUITTO_PORT:-18872}
BIN=$ROOT/target/release/halyard

if [ ! -x "$BIN" ]; then
    echo "building $BIN" >&2
    cargo build --release -p halyard >&2 || exit 1
fi

OUT=$ROOT/bench/results/$(date +%F)
STAMP=$(date +%H%M%S)
mkdir -p "$OUT"
TMP=$(mktemp -d)
BROKER_PID=

cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill "$BROKER_PID" 2>/dev/null
        wait "$BROKER_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

IFADDRS=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
# name|bench arguments (duration, port and pid are added)
ALL=(
    "pairs_q1|pairs -c 100 --qos 1 --size 16 --inflight 64"
    "fanin_q1_16b|fanin -P 50 --qos 1 --size 16 --inflight 64"
    "fanin_q1_1kb|fanin -P 50 --qos 1 --size 1024 --inflight 64"
    "fanout_q0|fanout -S 1000 --qos 0 --size 16 --rate $FANOUT_RATE"
    "latency_q1|pairs -c 100 --qos 1 --size 16 --rate 100 --inflight 64"
    "conn_10k|conn -c 10000 --connrate $CONNRATE --ifaddrs $IFADDRS"
)

wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_halyard() {
    local log=$1
    rm -rf "$TMP/halyard-data"
    env HALYARD_LISTENERS__TCP__DEFAULT__BIND="127.0.0.1:$HPORT" \
        HALYARD_MQTT__MAX_MQUEUE_LEN=1000000 \
        HALYARD_MQTT__MAX_INFLIGHT="$INFLIGHT" \
        HALYARD_MQTT__MAX_AWAITING_REL=1000 \
        HALYARD_NODE__DATA_DIR="$TMP/halyard-data" \
        HALYARD_LOG__LEVEL=warn \
        "${PIN_HALYARD[@]}" "$BIN" start >"$log" 2>&1 &
    BROKER_PID=$!
    PORT=$HPORT
}

start_mosquitto() {
    local log=$1
    cat >"$TMP/mosquitto.conf" <<EOF
listener $MPORT 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages $INFLIGHT
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
connection_messages false
EOF
    taskset -c 0 "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$log" 2>&1 &
    BROKER_PID=$!
    PORT=$MPORT
}

stop_broker() {
    [ -z "$BROKER_PID" ] && return
    kill "$BROKER_PID" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "  broker $BROKER_PID did not stop in 10 s; SIGKILL" >&2
        kill -9 "$BROKER_PID" 2>/dev/null
    fi
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=
}

# peak RSS (VmHWM) of the running broker, in MiB
broker_peak_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$BROKER_PID/status" 2>/dev/null || echo null
}

run_one() {
    local name=$1 args=$2 broker=$3
    local base="$OUT/$STAMP-$name-$broker"
    case "$broker" in
        halyard) start_halyard "$base.broker.log" ;;
        mosquitto) start_mosquitto "$base.broker.log" ;;
    esac
    if ! wait_port "$PORT"; then
        echo "  $broker did not open port $PORT; see $base.broker.log" >&2
        stop_broker
        return
    fi
    sleep 0.3
    local extra=(--pid "$BROKER_PID")
    echo "  $broker: halyard bench $args -d $SECS --port $PORT ${extra[*]}" >&2
    # shellcheck disable=SC2086
    if taskset -c 1 "$BIN" bench $args -d "$SECS" --port "$PORT" "${extra[@]}" >"$base.json" 2>"$base.log"; then
        local peak
        peak=$(broker_peak_mib)
        jq --argjson peak "${peak:-null}" '. + {broker_peak_rss_mib: $peak}' "$base.json" >"$base.json.tmp" &&
            mv "$base.json.tmp" "$base.json"
    else
        echo "  the generator failed against $broker (exit $?): $(tail -1 "$base.log")" >&2
        echo '{}' >"$base.json"
    fi
    stop_broker
    sleep 1
}

METRICS_MSG=(
    "msgs_per_s|.msgs_per_s"
    "recv/s_publishing|.msgs_per_s_while_publishing"
    "sent_per_s|.sent_per_s"
    "lost|.lost"
    "drain_complete|.drain_complete"
    "duplicates|.duplicates"
    "out_of_order|.out_of_order"
    "latency_p50_ms|(.latency_us.p50 // null) | if . == null then null else . / 1000 end"
    "latency_p99_ms|(.latency_us.p99 // null) | if . == null then null else . / 1000 end"
    "latency_max_ms|(.latency_us.max // null) | if . == null then null else . / 1000 end"
    "broker_peak_rss_mib|.broker_peak_rss_mib"
    "broker_cpu_pct|.broker_cpu_pct"
    "generator_cpu_pct|.generator_cpu_pct"
)
METRICS_CONN=(
    "established|.connections.established"
    "failed|.connections.failed"
    "connect_p50_ms|.connect_ms.p50"
    "connect_p99_ms|.connect_ms.p99"
    "connect_max_ms|.connect_ms.max"
    "rss_before_kib|.broker_rss_kib.before"
    "rss_after_kib|.broker_rss_kib.after"
    "rss_per_conn_kib|.broker_rss_kib.per_conn"
    "broker_cpu_pct|.broker_cpu_pct"
    "generator_cpu_pct|.generator_cpu_pct"
)

TABLE="$OUT/$STAMP-table.txt"
num='^-?[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?$'
fmt() { # integers as is, other numbers with 2 decimals, null as -, anything else (true/false) as is
    if [ -z "$1" ] || [ "$1" = null ]; then echo -; elif [[ $1 =~ $num ]]; then
        awk -v v="$1" 'BEGIN { if (v == int(v)) printf "%d\n", v; else printf "%.2f\n", v }'
    else echo "$1"; fi
}
ratio() {
    if [[ $1 =~ $num && $2 =~ $num ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f\n", a / b }'
    else echo -; fi
}

echo "results in $OUT (run $STAMP); $SECS s per scenario; halyard $([ ${#PIN_HALYARD[@]} -eq 0 ] && echo unpinned || echo 'on CPU 0'), mosquitto on CPU 0, generator on CPU 1" >&2
printf "%-14s %-20s %14s %14s %8s\n" scenario metric halyard mosquitto "h/m" >"$TABLE"
for entry in "${ALL[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    if [ ${#WANT[@]} -gt 0 ] && [[ ! " ${WANT[*]} " =~ \ $name\  ]]; then
        continue
    fi
    echo "== $name" >&2
    run_one "$name" "$args" halyard
    run_one "$name" "$args" mosquitto
    if [[ $args == conn* ]]; then metrics=("${METRICS_CONN[@]}"); else metrics=("${METRICS_MSG[@]}"); fi
    for m in "${metrics[@]}"; do
        label=${m%%|*}
        expr=${m#*|}
        h=$(jq -r "$expr" "$OUT/$STAMP-$name-halyard.json" 2>/dev/null)
        q=$(jq -r "$expr" "$OUT/$STAMP-$name-mosquitto.json" 2>/dev/null)
        printf "%-14s %-20s %14s %14s %8s\n" "$name" "$label" "$(fmt "$h")" "$(fmt "$q")" "$(ratio "$h" "$q")" >>"$TABLE"
    done
done
cat "$TABLE"
