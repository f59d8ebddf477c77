#!/usr/bin/env bash
# Halyard vs Mosquitto vs FlashMQ on loopback with the same load generator (`halyard bench`).
#
#   bench/compare.sh [--unpinned] [SCENARIO...]
#
# Scenarios (all by default):
#   tuned (every broker with generous limits, below):
#     pairs_q1 fanin_q1_16b fanin_q1_1kb fanout_q0 latency_q1 conn_10k
#   overload (every broker at its DEFAULT configuration, QoS 0, publishers at full speed; loss is expected and
#   reported, the drain after publishing is bounded by BENCH_DRAIN_MS):
#     fanout_q0_max     1 publisher -> 1000 subscribers on one topic
#     fanin_q0_16b_max  50 publishers -> 1 subscriber, 16 B
#     fanin_q0_1kb_max  50 publishers -> 1 subscriber, 1 KB
# Each broker runs alone, freshly started for each scenario, pinned to CPU 0 (`taskset -c 0`); the generator is
# pinned to CPU 1 (so it runs one worker thread). --unpinned runs Halyard without taskset (Mosquitto is
# single-threaded anyway, FlashMQ runs one worker thread). Stopped by PID after each run, and on exit.
#
# Limits per scenario (the generator always gives each QoS 1 publisher a window of BENCH_GEN_INFLIGHT):
#   tuned     Halyard   max_inflight = BENCH_INFLIGHT (1000), max_mqueue_len = BENCH_MQUEUE (1000000),
#                       max_awaiting_rel 1000; otherwise defaults (durable store on; clean sessions store nothing)
#             Mosquitto max_inflight_messages BENCH_INFLIGHT (1000), max_queued_messages 0 (unlimited),
#                       persistence false, set_tcp_nodelay BENCH_MOSQUITTO_NODELAY (false, Mosquitto's default:
#                       20-30 % more messages per CPU-second than true on QoS 1 pairs, see docs/performance.md)
#             FlashMQ   thread_count 1, max_qos_msg_pending_per_client 65535 (its only per-client cap on
#                       unacknowledged QoS 1/2 messages; for clean sessions there is no queue behind it, so past it
#                       messages are dropped), max_qos_bytes_pending_per_client 1 GiB (it only bounds the queue of
#                       persistent sessions), no storage_dir (persistence off), tcp_nodelay BENCH_FLASHMQ_NODELAY (true)
#   overload  Halyard   defaults (max_inflight 32, max_mqueue_len 1000)
#             Mosquitto defaults (max_inflight_messages 20, max_queued_messages 1000, Nagle on), persistence false
#             FlashMQ   defaults (max_qos_msg_pending_per_client 512, client_max_write_buffer_size 1 MB, Nagle on)
#                       except thread_count 1
#   All three: a listener on 127.0.0.1 on their own port, anonymous clients allowed, logging at warning.
#
# Environment:
#   BENCH_SECS=10             seconds per scenario
#   BENCH_WRITE=coalesce      generator write pattern(s) (`halyard bench --write`): coalesce, each, or
#                             "coalesce each" (every scenario once per pattern; docs/performance.md, "Generator fairness")
#   BENCH_FANOUT_RATE=500     fanout_q0 publisher rate (msg/s; x1000 deliveries/s). Bounded so queues stay bounded.
#   BENCH_CONNRATE=2000       conn_10k connections per second
#   BENCH_INFLIGHT=1000       tuned broker outbound window: HALYARD_MQTT__MAX_INFLIGHT, mosquitto max_inflight_messages
#   BENCH_MQUEUE=1000000      tuned HALYARD_MQTT__MAX_MQUEUE_LEN
#   BENCH_GEN_INFLIGHT=64     the generator's window per QoS 1 publisher (--inflight)
#   BENCH_DRAIN_MS=2000       the generator's drain after publishing (--drain-ms)
#   BENCH_MOSQUITTO_NODELAY=false  BENCH_FLASHMQ_NODELAY=true   the peers' TCP_NODELAY in the tuned scenarios
#   BENCH_FLASHMQ=~/.cache/flashmq/bin/flashmq   FlashMQ binary (bench/build-flashmq.sh builds it); absent: skipped
#   BENCH_BROKERS="halyard mosquitto flashmq"
#   BENCH_HALYARD_PORT=18871  BENCH_MOSQUITTO_PORT=18872  BENCH_FLASHMQ_PORT=18873
#
# Results: bench/results/<date>/<time>-<scenario>[-<write>]-<broker>.json (+ .log with the progress lines and broker
# logs), and the table printed at the end, also saved as <time>-table.txt.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

PIN_HALYARD=(taskset -c 0)
WANT=()
for a in "$@"; do
    case "$a" in
        --unpinned) PIN_HALYARD=() ;;
        -h|--help) sed -n '2,50p' "$0"; exit 0 ;;
        -*) echo "unknown option $a" >&2; exit 1 ;;
        *) WANT+=("$a") ;;
    esac
done

SECS=${BENCH_SECS:-10}
WRITES=${BENCH_WRITE:-coalesce}
FANOUT_RATE=${BENCH_FANOUT_RATE:-500}
CONNRATE=${BENCH_CONNRATE:-2000}
INFLIGHT=${BENCH_INFLIGHT:-1000}
MQUEUE=${BENCH_MQUEUE:-1000000}
GEN_INFLIGHT=${BENCH_GEN_INFLIGHT:-64}
DRAIN_MS=${BENCH_DRAIN_MS:-2000}
MOSQUITTO_NODELAY=${BENCH_MOSQUITTO_NODELAY:-false}
FLASHMQ_NODELAY=${BENCH_FLASHMQ_NODELAY:-true}
BROKERS=${BENCH_BROKERS:-halyard mosquitto flashmq}
HPORT=${BENCH_HALYARD_PORT:-18871}
MPORT=${BENCH_MOSQUITTO_PORT:-18872}
FPORT=${BENCH_FLASHMQ_PORT:-18873}
FLASHMQ=${BENCH_FLASHMQ:-$HOME/.cache/flashmq/bin/flashmq}
BIN=$ROOT/target/release/halyard
[ -n "${CARGO_TARGET_DIR:-}" ] && BIN=$CARGO_TARGET_DIR/release/halyard

for w in $WRITES; do
    case "$w" in
        each|coalesce) ;;
        *) echo "BENCH_WRITE: '$w' is not each or coalesce" >&2; exit 1 ;;
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
HAVE_FLASHMQ=
if [[ " $BROKERS " == *" flashmq "* ]]; then
    if [ -x "$FLASHMQ" ] && "$FLASHMQ" --version >/dev/null 2>&1; then
        HAVE_FLASHMQ=1
    else
        echo "FlashMQ skipped: no FlashMQ binary at $FLASHMQ; build it with bench/build-flashmq.sh (or set BENCH_FLASHMQ)" >&2
    fi
fi

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
# name|profile|bench arguments (duration, port, pid, write pattern and drain are added)
ALL=(
    "pairs_q1|tuned|pairs -c 100 --qos 1 --size 16 --inflight $GEN_INFLIGHT"
    "fanin_q1_16b|tuned|fanin -P 50 --qos 1 --size 16 --inflight $GEN_INFLIGHT"
    "fanin_q1_1kb|tuned|fanin -P 50 --qos 1 --size 1024 --inflight $GEN_INFLIGHT"
    "fanout_q0|tuned|fanout -S 1000 --qos 0 --size 16 --rate $FANOUT_RATE"
    "latency_q1|tuned|pairs -c 100 --qos 1 --size 16 --rate 100 --inflight $GEN_INFLIGHT"
    "conn_10k|tuned|conn -c 10000 --connrate $CONNRATE --ifaddrs $IFADDRS"
    "fanout_q0_max|defaults|fanout -S 1000 --qos 0 --size 16"
    "fanin_q0_16b_max|defaults|fanin -P 50 --qos 0 --size 16"
    "fanin_q0_1kb_max|defaults|fanin -P 50 --qos 0 --size 1024"
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
    local log=$1 profile=$2
    local limits=()
    if [ "$profile" = tuned ]; then
        limits=(HALYARD_MQTT__MAX_MQUEUE_LEN="$MQUEUE" HALYARD_MQTT__MAX_INFLIGHT="$INFLIGHT"
            HALYARD_MQTT__MAX_AWAITING_REL=1000)
    fi
    rm -rf "$TMP/halyard-data"
    # TCP only, like the peers it is compared with: no TLS/WebSocket listeners on 8883/8083/8084.
    env HALYARD_LISTENERS__TCP__DEFAULT__BIND="127.0.0.1:$HPORT" \
        HALYARD_LISTENERS__SSL__DEFAULT__ENABLE=false HALYARD_LISTENERS__WS__DEFAULT__ENABLE=false \
        HALYARD_LISTENERS__WSS__DEFAULT__ENABLE=false \
        "${limits[@]}" \
        HALYARD_NODE__DATA_DIR="$TMP/halyard-data" \
        HALYARD_LOG__LEVEL=warn \
        "${PIN_HALYARD[@]}" "$BIN" start >"$log" 2>&1 &
    BROKER_PID=$!
    PORT=$HPORT
}

start_mosquitto() {
    local log=$1 profile=$2
    {
        echo "listener $MPORT 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        if [ "$profile" = tuned ]; then
            echo "max_queued_messages 0"
            echo "max_inflight_messages $INFLIGHT"
            echo "set_tcp_nodelay $MOSQUITTO_NODELAY"
        fi
        echo "log_dest stderr"
        echo "log_type error"
        echo "log_type warning"
        echo "connection_messages false"
    } >"$TMP/mosquitto.conf"
    taskset -c 0 "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$log" 2>&1 &
    BROKER_PID=$!
    PORT=$MPORT
}

start_flashmq() {
    local log=$1 profile=$2
    {
        echo "thread_count 1"
        echo "allow_anonymous true"
        echo "log_level warning"
        if [ "$profile" = tuned ]; then
            echo "max_qos_msg_pending_per_client 65535"
            echo "max_qos_bytes_pending_per_client 1073741824"
        fi
        echo "listen {"
        echo "  protocol mqtt"
        echo "  inet_protocol ip4"
        echo "  inet4_bind_address 127.0.0.1"
        echo "  port $FPORT"
        [ "$profile" = tuned ] && echo "  tcp_nodelay $FLASHMQ_NODELAY"
        echo "}"
    } >"$TMP/flashmq.conf"
    taskset -c 0 "$FLASHMQ" -c "$TMP/flashmq.conf" >"$log" 2>&1 &
    BROKER_PID=$!
    PORT=$FPORT
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

# run_one NAME PROFILE ARGS BROKER WRITE: the result goes to $base.json ({"skipped": true} for a skipped broker)
run_one() {
    local name=$1 profile=$2 args=$3 broker=$4 write=$5
    local base="$OUT/$STAMP-$name${write:+-$write}-$broker"
    if [ "$broker" = flashmq ] && [ -z "$HAVE_FLASHMQ" ]; then
        echo '{"skipped": true}' >"$base.json"
        return
    fi
    case "$broker" in
        halyard) start_halyard "$base.broker.log" "$profile" ;;
        mosquitto) start_mosquitto "$base.broker.log" "$profile" ;;
        flashmq) start_flashmq "$base.broker.log" "$profile" ;;
    esac
    if ! wait_port "$PORT"; then
        echo "  $broker did not open port $PORT; see $base.broker.log" >&2
        stop_broker
        echo '{}' >"$base.json"
        return
    fi
    sleep 0.3
    local extra=(--pid "$BROKER_PID" --drain-ms "$DRAIN_MS")
    [ -n "$write" ] && extra+=(--write "$write")
    echo "  $broker ($profile): halyard bench $args -d $SECS --port $PORT ${extra[*]}" >&2
    # shellcheck disable=SC2086
    if taskset -c 1 "$BIN" bench $args -d "$SECS" --port "$PORT" "${extra[@]}" >"$base.json" 2>"$base.log"; then
        local peak
        peak=$(broker_peak_mib)
        jq --argjson peak "${peak:-null}" --arg profile "$profile" \
            '. + {broker_peak_rss_mib: $peak, broker_profile: $profile}' "$base.json" >"$base.json.tmp" &&
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
    "msgs_per_broker_cpu_s|if (.broker_cpu_pct // 0) > 0 then .msgs_per_s / .broker_cpu_pct * 100 | floor else null end"
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
# Overload: delivered and sent rates, the loss, how the least-served subscriber (fan-out) or publisher (fan-in)
# fared against the mean (issue 9 target: least-served >= 50 % of the mean), the broker's peak RSS.
METRICS_OVERLOAD=(
    "delivered_per_s|.msgs_per_s"
    "recv/s_publishing|.msgs_per_s_while_publishing"
    "sent_per_s|.sent_per_s"
    "lost|.lost"
    "lost_ratio|.lost_ratio"
    "least_sub/mean|.per_subscriber.min_over_mean"
    "sub_recv_min|.per_subscriber.min"
    "sub_recv_mean|.per_subscriber.mean"
    "least_pub/mean|.per_publisher.min_over_mean"
    "latency_p50_ms|(.latency_us.p50 // null) | if . == null then null else . / 1000 end"
    "latency_p99_ms|(.latency_us.p99 // null) | if . == null then null else . / 1000 end"
    "broker_peak_rss_mib|.broker_peak_rss_mib"
    "broker_cpu_pct|.broker_cpu_pct"
    "generator_cpu_pct|.generator_cpu_pct"
    "errors|.error_count"
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
# value EXPR FILE: the metric, or "skipped" for a skipped broker, or "-" when the run failed or the broker is not run
value() {
    local expr=$1 file=$2
    if [ ! -f "$file" ]; then echo -; return; fi
    if [ "$(jq -r '.skipped // false' "$file" 2>/dev/null)" = true ]; then echo skipped; return; fi
    fmt "$(jq -r "$expr" "$file" 2>/dev/null)"
}
raw() {
    [ -f "$2" ] && jq -r "$1" "$2" 2>/dev/null
}

{
    echo "# $(date '+%F %T') commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty');" \
        "$SECS s per scenario; write: $WRITES; tuned: inflight $INFLIGHT, mqueue $MQUEUE, generator inflight $GEN_INFLIGHT," \
        "mosquitto nodelay $MOSQUITTO_NODELAY, flashmq nodelay $FLASHMQ_NODELAY; drain $DRAIN_MS ms"
    echo "# halyard $("$BIN" --version 2>/dev/null | head -1); $("$MOSQUITTO" -h 2>/dev/null | head -1);" \
        "flashmq: $([ -n "$HAVE_FLASHMQ" ] && "$FLASHMQ" --version 2>/dev/null | grep -Eio 'version [^ ]+' | head -1 || echo skipped)"
    printf "%-22s %-20s %14s %14s %14s %8s %8s\n" scenario metric halyard mosquitto flashmq "h/m" "h/f"
} >"$TABLE"
echo "results in $OUT (run $STAMP); $SECS s per scenario; halyard $([ ${#PIN_HALYARD[@]} -eq 0 ] && echo unpinned || echo 'on CPU 0'), mosquitto and flashmq on CPU 0, generator on CPU 1" >&2
for entry in "${ALL[@]}"; do
    name=${entry%%|*}
    rest=${entry#*|}
    profile=${rest%%|*}
    args=${rest#*|}
    if [ ${#WANT[@]} -gt 0 ] && [[ ! " ${WANT[*]} " =~ \ $name\  ]]; then
        continue
    fi
    if [[ $args == conn* ]]; then
        metrics=("${METRICS_CONN[@]}")
        writes=("")
    else
        if [ "$profile" = defaults ]; then metrics=("${METRICS_OVERLOAD[@]}"); else metrics=("${METRICS_MSG[@]}"); fi
        read -r -a writes <<<"$WRITES"
    fi
    for write in "${writes[@]}"; do
        label=$name
        [ -n "$write" ] && [ "$(wc -w <<<"$WRITES")" -gt 1 ] && label="$name/$write"
        echo "== $label ($profile)" >&2
        for b in halyard mosquitto flashmq; do
            if [[ " $BROKERS " == *" $b "* ]]; then
                run_one "$name" "$profile" "$args" "$b" "$write"
            fi
        done
        base="$OUT/$STAMP-$name${write:+-$write}"
        for m in "${metrics[@]}"; do
            mlabel=${m%%|*}
            expr=${m#*|}
            h=$(raw "$expr" "$base-halyard.json")
            q=$(raw "$expr" "$base-mosquitto.json")
            f=$(raw "$expr" "$base-flashmq.json")
            printf "%-22s %-20s %14s %14s %14s %8s %8s\n" "$label" "$mlabel" \
                "$(value "$expr" "$base-halyard.json")" "$(value "$expr" "$base-mosquitto.json")" \
                "$(value "$expr" "$base-flashmq.json")" "$(ratio "$h" "$q")" "$(ratio "$h" "$f")" >>"$TABLE"
        done
    done
done
cat "$TABLE"
