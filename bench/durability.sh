#!/usr/bin/env bash
# Throughput of QoS 1 into persistent *offline* sessions, with durability on and off, beside Mosquitto (in
# memory: its persistence is off), in one run. Each broker runs alone on CPU 0; the generator on CPU 1.
#   bench/durability.sh            (BENCH_SECS=10 by default)
# Prints acknowledged messages/s for each configuration and, for Halyard, fsyncs/s and commits/s (from the
# "store statistics" line the broker logs at shutdown). Needs: a release build, mosquitto, mosquitto-clients, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/halyard
SECS=${BENCH_SECS:-10}
PORT=${BENCH_PORT:-18890}
SESSIONS=10
[ -x "$BIN" ] || { echo "build first: cargo build --release -p halyard" >&2; exit 2; }
for t in mosquitto_sub jq taskset; do command -v "$t" >/dev/null || { echo "$t missing" >&2; exit 2; }; done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# Persistent sessions (clean session 0) subscribed to dur/#, then offline: what follows queues for them.
make_sessions() {
    for i in $(seq 1 $SESSIONS); do
        mosquitto_sub -h 127.0.0.1 -p "$PORT" -c -i "dur-sub-$i" -q 1 -t 'dur/#' -E
    done
}

run_load() {
    taskset -c 1 "$BIN" bench pub -c 10 --qos 1 --inflight 64 -t 'dur/%i' -d "$SECS" --port "$PORT" --quiet >"$TMP/$1.json" 2>"$TMP/$1.log" || true
    jq -r '(.acked / .duration_s) | floor' "$TMP/$1.json"
}

halyard_case() { # name, env...
    local name=$1; shift
    rm -rf "$TMP/data"
    env "$@" HALYARD_NODE__DATA_DIR="$TMP/data" HALYARD_LISTENERS__TCP__DEFAULT__BIND="127.0.0.1:$PORT" \
        HALYARD_LISTENERS__SSL__DEFAULT__ENABLE=false HALYARD_LISTENERS__WS__DEFAULT__ENABLE=false \
        HALYARD_LISTENERS__WSS__DEFAULT__ENABLE=false \
        HALYARD_MQTT__MAX_MQUEUE_LEN=100000000 taskset -c 0 "$BIN" start >"$TMP/$name.broker.log" 2>&1 &
    local pid=$!
    wait_port; make_sessions
    local rate; rate=$(run_load "$name")
    kill -TERM $pid; wait $pid || true
    local line; line=$(grep "store statistics" "$TMP/$name.broker.log" | sed 's/\x1b\[[0-9;]*m//g' || true)
    local fsyncs; fsyncs=$(sed -n 's/.*fsyncs=\([0-9]*\).*/\1/p' <<<"$line")
    local commits; commits=$(sed -n 's/.*commits=\([0-9]*\).*/\1/p' <<<"$line")
    printf '%-28s %12s msg/s   fsyncs/s %8s   commits/s %8s\n' "$name" "$rate" \
        "$(( ${fsyncs:-0} / SECS ))" "$(( ${commits:-0} / SECS ))"
    echo "$rate" >"$TMP/$name.rate"
}

halyard_case "halyard durable fsync=batch"
halyard_case "halyard durable fsync=off" HALYARD_DURABLE_SESSIONS__FSYNC=off
halyard_case "halyard in memory" HALYARD_DURABLE_SESSIONS__ENABLE=false

cat >"$TMP/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 64
CONF
taskset -c 0 "$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
mpid=$!
wait_port; make_sessions
mrate=$(run_load mosquitto)
kill -TERM $mpid; wait $mpid || true
printf '%-28s %12s msg/s\n' "mosquitto (in memory)" "$mrate"
b=$(cat "$TMP/halyard durable fsync=batch.rate"); m=$(cat "$TMP/halyard in memory.rate")
echo "durable(batch)/mosquitto = $(awk -v a="$b" -v c="$mrate" 'BEGIN{printf "%.2f", a/c}')   durable(batch)/halyard-in-memory = $(awk -v a="$b" -v c="$m" 'BEGIN{printf "%.2f", a/c}')"
