#!/usr/bin/env bash
# Records the golden captures in rust-client/: a real rocketmq-rust name server and broker on
# loopback, the real rocketmq-client-rust producer and consumer (tests/peers/rust-client), and
# tcpdump around them. Run as root from the repository root:
#   PEERS=$(cargo xtask peers | sed -n "s/^peers in //p") bash tests/captures/record.sh
# PEERS holds bin/rocketmq-namesrv-rust, bin/rocketmq-broker-rust and bin/mq-client, as
# `cargo xtask peers` builds them (it prints the directory).
set -euo pipefail
PEERS=${PEERS:?set PEERS to the directory with the installed peers}
OUT=$(cd "$(dirname "$0")" && pwd)/rust-client
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/conf" "$WORK/store"
sed -e "s|@HOME@|$WORK|g" -e "s|@IP@|127.0.0.1|g" -e "s|@ADVERTISED@|127.0.0.1|g" "$(dirname "$0")/../peers/broker.toml.in" > "$WORK/conf/broker.toml"
export ROCKETMQ_HOME=$WORK
"$PEERS/bin/rocketmq-namesrv-rust" --bindAddress 127.0.0.1 --listenPort 9876 > "$WORK/namesrv.log" 2>&1 &
PIDS+=($!)
sleep 1
ROCKETMQ_SECURITY_PROFILE=development-insecure-loopback \
  "$PEERS/bin/rocketmq-broker-rust" -c "$WORK/conf/broker.toml" -n 127.0.0.1:9876 > "$WORK/broker.log" 2>&1 &
PIDS+=($!)
sleep 3

record() { # name, then the client command
  local name=$1; shift
  tcpdump -i lo -U -w "$OUT/$name.pcap" 'tcp port 9876 or tcp portrange 10909-10912' > /dev/null 2>&1 &
  local dump=$!
  sleep 1
  "$@" > "$OUT/$name.jsonl"
  sleep 1
  kill "$dump"; wait "$dump" || true
}

CLIENT=$PEERS/bin/mq-client
record send-single "$CLIENT" produce 127.0.0.1:9876 GoldenSingle 20 --tag TagA
record send-batch "$CLIENT" produce 127.0.0.1:9876 GoldenBatch 30 --batch 10 --tag TagB
# The same client with ROCKETMQ (binary) headers instead of JSON.
record send-binary env ROCKETMQ_SERIALIZE_TYPE=ROCKETMQ "$CLIENT" produce 127.0.0.1:9876 GoldenBinary 10 --tag TagD
# 32 messages of 1 KiB, then a consumer that pulls them all.
"$CLIENT" produce 127.0.0.1:9876 GoldenPull 32 --tag TagC --body-size 1024 > "$OUT/pull-produced.jsonl"
record pull-32 "$CLIENT" consume 127.0.0.1:9876 GoldenPull golden_consumer 32 60
# Produce and consume in one capture: send and receive of the same messages.
record roundtrip bash -c "'$CLIENT' produce 127.0.0.1:9876 GoldenTrip 10 --tag TagE && '$CLIENT' consume 127.0.0.1:9876 GoldenTrip trip_consumer 10 60"
echo "recorded into $OUT:"; ls -la "$OUT"
