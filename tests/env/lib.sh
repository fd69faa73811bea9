# Shared by tests/env/up, tests/env/down and tests/env/build. Sourced, not run.
#
# Layout:
#   $PIPEWRIGHT_CACHE (default ~/.cache/pipewright): everything downloaded or built, by version:
#     go/mod, go/build      Go module and build caches used for the builds below
#     k8s/<version>/bin     etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#                           kubelet, kube-proxy, kubectl
#     coredns/<version>/bin coredns (the cluster DNS)
#     containerd/<version>/bin, runc/<version>/bin, pause/   the node's container runtime
#     helm/<version>/bin    helm
#     prometheus/<version>/bin, jaeger/<version>/bin   promtool + prometheus, jaeger
#     m2, kafka/<version>   Maven repository and the Kafka broker + tools jars
#   $PIPEWRIGHT_STATE (default target/testenv): the running environment (data, certificates,
#     kubeconfig, logs, pids). tests/env/down stops every process and deletes it.

set -euo pipefail

ENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$ENV_DIR/../.." && pwd)
CACHE=${PIPEWRIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipewright}
STATE=${PIPEWRIGHT_STATE:-$ROOT/target/testenv}

K8S_VERSION=$(awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "k8s.io/kubernetes" { print $2 }' "$ENV_DIR/k8s/go.mod")
HELM_VERSION=$(awk '$1 == "helm.sh/helm/v4" { print $2 }' "$ENV_DIR/helm/go.mod")
PROMETHEUS_VERSION=$(awk '$1 == "github.com/prometheus/prometheus" { print $2 }' "$ENV_DIR/prometheus/go.mod")
JAEGER_VERSION=$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' "$ENV_DIR/jaeger/go.mod")
CONTAINERD_VERSION=$(awk '$1 == "github.com/containerd/containerd/v2" { print $2 }' "$ENV_DIR/containerd/go.mod")
RUNC_VERSION=$(awk '$1 == "github.com/opencontainers/runc" { print $2 }' "$ENV_DIR/runc/go.mod")
COREDNS_VERSION=$(awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "github.com/coredns/coredns" { print $2 }' "$ENV_DIR/coredns/go.mod")
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ENV_DIR/kafka/pom.xml")
DEBEZIUM_VERSION=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$ENV_DIR/debezium/pom.xml")

K8S_BIN=$CACHE/k8s/$K8S_VERSION/bin
HELM_BIN=$CACHE/helm/$HELM_VERSION/bin
PROMETHEUS_BIN=$CACHE/prometheus/$PROMETHEUS_VERSION/bin
JAEGER_BIN=$CACHE/jaeger/$JAEGER_VERSION/bin
KAFKA_LIBS=$CACHE/kafka/$KAFKA_VERSION/libs
DEBEZIUM_LIBS=$CACHE/debezium/$DEBEZIUM_VERSION/libs
CONTAINERD_BIN=$CACHE/containerd/$CONTAINERD_VERSION/bin
RUNC_BIN=$CACHE/runc/$RUNC_VERSION/bin
COREDNS_BIN=$CACHE/coredns/$COREDNS_VERSION/bin
PAUSE_DIR=$CACHE/pause
RECEIVER_DIR=$CACHE/receiver
# The e2e tests' HTTP receiver image (tests/env/receiver), imported by the node like pause.
RECEIVER_IMAGE=pipewright.io/test-receiver:dev
# The sandbox image the node runs; the name is what containerd pins, nothing is pulled.
PAUSE_IMAGE=registry.k8s.io/pause:3.10-pipewright

# Debian's containernetworking-plugins.
CNI_BIN=${PIPEWRIGHT_CNI_BIN:-/usr/lib/cni}

# The cluster's nodes, by index: 0 is the first node, whose address is also where the
# apiserver, Kafka, PostgreSQL and CoreDNS listen; 1 is a second kubelet with its own
# containerd, so the scheduler has a choice and a drain has somewhere to move pods to.
NODE_INDICES=(0 1)
# Every node's pod range lies in it (kube-proxy's --cluster-cidr; PostgreSQL trusts it).
CLUSTER_CIDR=10.244.0.0/16
CONTROL_PLANE_IP=10.244.0.1

# Node $1's names and addresses (see tests/env/up). Each node has a bridge of its own with its
# address and pod range; the host routes between the bridges, as a cluster's network routes
# between its nodes' pod ranges.
node_vars() {
  NODE_INDEX=$1
  NODE_BRIDGE=pw$1
  NODE_IP=10.244.$1.1
  NODE_CIDR=10.244.$1.0/24
  # Its processes' pid files and log names (kubelet, containerd) and its certificates.
  if [ "$1" = 0 ]; then NODE_SUFFIX=""; else NODE_SUFFIX=-$(($1 + 1)); fi
  NODE_NAME=pipewright-node$NODE_SUFFIX
  NODE_DIR=$STATE/node$NODE_SUFFIX
  # The node's cgroups live under this parent in every hierarchy, so down can find every
  # process of every pod.
  NODE_CGROUP=pipewright-$1
}

export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

log() { printf '[env] %s\n' "$*" >&2; }
die() {
  printf '[env] error: %s\n' "$*" >&2
  exit 1
}

# Runs a command for the PostgreSQL server: initdb and postgres refuse to run as root, so as
# root they run as the `postgres` user (setpriv execs, so a recorded pid is the server's own).
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (apt-get install postgresql)"
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -x "$d/initdb" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
  echo "$d"
}

# A free TCP port on 127.0.0.1, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pid_alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }

# Polls a command until service $1 answers; fails at once, showing its log, when the service's
# process exits, and after $2 seconds otherwise.
wait_for() {
  local what=$1 timeout=$2 logfile=$STATE/logs/$1.log
  shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    local why=""
    pid_alive "$what" || why="exited"
    [ $((SECONDS - start)) -lt "$timeout" ] || why="did not become ready within ${timeout}s"
    if [ -n "$why" ]; then
      log "$what $why; last lines of $logfile:"
      tail -n 30 "$logfile" >&2 || true
      die "$what failed to start"
    fi
    sleep 0.5
  done
}

# Runs a long step with its output in a log, printing a heartbeat so a first run is not silent.
with_progress() {
  local what=$1 logfile=$2
  shift 2
  log "$what (log: $logfile)"
  mkdir -p "$(dirname "$logfile")"
  local start=$SECONDS
  "$@" >"$logfile" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if kill -0 "$pid" 2>/dev/null && [ $(((SECONDS - start) % 60)) -lt 5 ] && [ $((SECONDS - start)) -ge 60 ]; then
      log "  ... $what: $(((SECONDS - start) / 60)) min"
    fi
  done
  if ! wait "$pid"; then
    tail -n 40 "$logfile" >&2
    die "$what failed"
  fi
  log "  done in $((SECONDS - start))s"
}
