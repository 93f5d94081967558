#!/usr/bin/env bash
# Records the golden captures in rust5-client/: a real rocketmq-rust name server, broker and
# gRPC proxy (rocketmq-proxy-rust, cluster mode) on loopback, Apache's Rust 5.x client
# (tests/peers/rust5-client, mq5-client) producing and consuming through the proxy, and tcpdump
# on the proxy's gRPC port around it. Run as root from the repository root:
#   PEERS=$(cargo xtask peers | sed -n "s/^peers in //p") bash tests/captures/record-grpc.sh
set -euo pipefail
PEERS=${PEERS:?set PEERS to the directory with the installed peers}
OUT=$(cd "$(dirname "$0")" && pwd)/rust5-client
mkdir -p "$OUT"
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
export ROCKETMQ_HOME=$WORK ROCKETMQ_SECURITY_PROFILE=development-insecure-loopback
"$PEERS/bin/rocketmq-namesrv-rust" --bindAddress 127.0.0.1 --listenPort 9876 > "$WORK/namesrv.log" 2>&1 &
PIDS+=($!)
sleep 1
"$PEERS/bin/rocketmq-broker-rust" -c "$WORK/conf/broker.toml" -n 127.0.0.1:9876 > "$WORK/broker.log" 2>&1 &
PIDS+=($!)
sleep 3
# The proxy does not create topics: one remoting send does.
"$PEERS/bin/mq-client" produce 127.0.0.1:9876 GoldenGrpc 1 > /dev/null
(cd "$WORK" && exec "$PEERS/bin/rocketmq-proxy-rust" --mode cluster --namesrvAddr 127.0.0.1:9876 \
  --grpcListenAddr 127.0.0.1:8081 > "$WORK/proxy.log" 2>&1) &
PIDS+=($!)
sleep 3

record() { # name, then the client command
  local name=$1; shift
  tcpdump -i lo -U -w "$OUT/$name.pcap" 'tcp port 8081' > /dev/null 2>&1 &
  local dump=$!
  sleep 1
  "$@" > "$OUT/$name.jsonl" 2> "$WORK/$name.err"
  sleep 1
  kill "$dump"; wait "$dump" || true
}

CLIENT=$PEERS/bin/mq5-client
record send-10 "$CLIENT" produce --endpoint 127.0.0.1:8081 --topic GoldenGrpc --count 10 --tag TagG
echo "recorded into $OUT:"; ls -la "$OUT"
