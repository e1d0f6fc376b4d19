# Shared by the cluster/ scripts (sourced, not run). State lives under cluster/.run/:
#   etcd/{data,etcd.log,pid,client_port,peer_port}
#   nodes/<id>/{data,node.log,pid,grpc_port,metrics_port}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/cluster/.run"
KEY_PREFIX="${KEY_PREFIX:-/depin/}"

die() { echo "error: $*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free loopback port found"
}

etcd_endpoint() { echo "http://127.0.0.1:$(cat "$RUN/etcd/client_port")"; }

# The node binary: $DEPIN_BIN, else a debug build of this checkout (built if missing).
node_bin() {
  if [ -n "${DEPIN_BIN:-}" ]; then echo "$DEPIN_BIN"; return; fi
  local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/depin-analytics"
  if [ ! -x "$bin" ]; then
    echo "building depin-analytics (debug)" >&2
    (cd "$ROOT" && cargo build --bin depin-analytics >&2) || die "cargo build failed"
  fi
  echo "$bin"
}

# Whether the node binary can join a cluster (issue 5); until it can, nodes run standalone.
supports_cluster() { "$1" serve --help 2>/dev/null | grep -q -- '--etcd-endpoints'; }

standalone_note() {
  echo "note: this depin-analytics does not accept --etcd-endpoints yet: each node runs STANDALONE" >&2
  echo "      (owns every shard, ignores etcd). They do not form a cluster until the node is wired." >&2
}

start_etcd() {
  local dir="$RUN/etcd"
  if alive "$dir/pid"; then echo "etcd already running at $(etcd_endpoint)"; return; fi
  mkdir -p "$dir"
  local client peer
  client=$(free_port); peer=$(free_port)
  echo "$client" >"$dir/client_port"; echo "$peer" >"$dir/peer_port"
  nohup etcd --name default --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "default=http://127.0.0.1:$peer" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$client") 2>/dev/null && grep -q "ready to serve client requests" "$dir/etcd.log"; then
      echo "etcd running at $(etcd_endpoint) (pid $(cat "$dir/pid"), log $dir/etcd.log)"
      return
    fi
    alive "$dir/pid" || die "etcd exited; see $dir/etcd.log"
    sleep 0.1
  done
  die "etcd did not become ready in 10 s; see $dir/etcd.log"
}

# start_node ID: starts one node with its own data directory and ports.
start_node() {
  local id="$1" dir="$RUN/nodes/$1" bin
  bin=$(node_bin)
  if alive "$dir/pid"; then echo "$id already running (pid $(cat "$dir/pid"))"; return; fi
  mkdir -p "$dir/data"
  local grpc metrics
  grpc=$(free_port); metrics=$(free_port)
  echo "$grpc" >"$dir/grpc_port"; echo "$metrics" >"$dir/metrics_port"
  local args=(serve --node-id "$id" --data-dir "$dir/data" --grpc-port "127.0.0.1:$grpc" --metrics-port "127.0.0.1:$metrics")
  if supports_cluster "$bin"; then
    args+=(--etcd-endpoints "$(etcd_endpoint)" --advertise-addr "127.0.0.1:$grpc")
  fi
  nohup "$bin" "${args[@]}" >"$dir/node.log" 2>&1 &
  echo $! >"$dir/pid"
  for _ in $(seq 300); do
    if grep -q "^listening on" "$dir/node.log"; then
      echo "$id running: grpc 127.0.0.1:$grpc, metrics 127.0.0.1:$metrics (pid $(cat "$dir/pid"), log $dir/node.log)"
      return
    fi
    alive "$dir/pid" || die "$id exited; see $dir/node.log"
    sleep 0.1
  done
  die "$id not ready in 30 s; see $dir/node.log"
}

# stop_pid FILE NAME: SIGTERM (the node hands off and flushes), SIGKILL after 30 s.
stop_pid() {
  local file="$1" name="$2" pid
  if ! alive "$file"; then rm -f "$file"; return; fi
  pid=$(cat "$file")
  kill -TERM "$pid"
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; echo "stopped $name"; return; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
  echo "killed $name (did not stop within 30 s)"
}

node_ids() { [ -d "$RUN/nodes" ] && ls "$RUN/nodes" | sort -V || true; }
