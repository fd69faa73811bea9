# Shared by tests/kind/node-image and tests/kind/e2e. Sourced, not run.
#
# Reuses tests/env/lib.sh for the versions and the cache ($PIPEWRIGHT_CACHE, default
# ~/.cache/pipewright: the Kubernetes, containerd, runc, pause and helm builds); adds, under
# $CACHE/kind:
#   kind/<kind version>/kind          the kind CLI (module tests/kind/kind)
#   kubeadm/<k8s version>/kubeadm     kubeadm (module tests/kind/kubeadm, same k8s.io/kubernetes pin)
#   coredns/<coredns version>/coredns CoreDNS with kubeadm's Corefile plugins (tests/kind/coredns)
# Each binary is rebuilt only when its module's files change (a .stamp beside it).

# shellcheck source-path=SCRIPTDIR
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../env" && pwd)/lib.sh"

KIND_SRC=$ROOT/tests/kind
KIND_VERSION=$(awk '$1 == "require" && $2 == "sigs.k8s.io/kind" { print $3 }' "$KIND_SRC/kind/go.mod")
KIND_COREDNS_VERSION=$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" { print $3 }' "$KIND_SRC/coredns/go.mod")
KIND_CACHE=$CACHE/kind
KIND_BIN=$KIND_CACHE/kind/$KIND_VERSION/kind
KUBEADM_BIN=$KIND_CACHE/kubeadm/$K8S_VERSION/kubeadm
KIND_COREDNS_BIN=$KIND_CACHE/coredns/$KIND_COREDNS_VERSION/coredns
# The node image built by tests/kind/node-image (podman's local storage; nothing is pushed).
KIND_NODE_IMAGE=localhost/pipewright/kind-node:$K8S_VERSION

kind_log() { printf '[kind] %s\n' "$*" >&2; }

# The sha256 of files $@ (content and name).
files_stamp() {
  local f
  for f in "$@"; do printf '%s %s\n' "${f#"$ROOT"/}" "$(sha256sum <"$f" | cut -d' ' -f1)"; done | sha256sum | cut -d' ' -f1
}

# go_build_cached OUT MODULE_DIR PACKAGE [LDFLAGS]: builds PACKAGE in module MODULE_DIR into
# OUT unless OUT/.stamp says the module's files are unchanged. nice 19, one package at a time
# (the machine's cores are shared).
go_build_cached() {
  local out=$1 dir=$2 pkg=$3 ldflags=${4:--s -w}
  local stamp
  stamp=$(files_stamp "$dir"/go.mod "$dir"/go.sum $(find "$dir" -maxdepth 1 -name '*.go' | LC_ALL=C sort) <(printf '%s' "$ldflags"))
  if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$out")" "$CACHE/logs"
  rm -f "$out.stamp"
  (cd "$dir" && with_progress "building $pkg ($dir)" "$CACHE/logs/build-kind-$(basename "$out").log" \
    nice -n 19 go build -p 1 -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  echo "$stamp" >"$out.stamp"
}

build_kind() {
  command -v go >/dev/null || die "go is required to build kind"
  go_build_cached "$KIND_BIN" "$KIND_SRC/kind" sigs.k8s.io/kind
}

build_kubeadm() {
  local v=$K8S_VERSION major minor ldflags="-s -w" pkg pinned
  pinned=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$KIND_SRC/kubeadm/go.mod")
  [ "$pinned" = "$v" ] ||
    die "tests/kind/kubeadm/go.mod pins k8s.io/kubernetes $pinned, tests/env/k8s/go.mod $v: update tests/kind/kubeadm (see its go.mod)"
  major=$(echo "${v#v}" | cut -d. -f1)
  minor=$(echo "${v#v}" | cut -d. -f2)
  # The version flags tests/env/build gives the other Kubernetes binaries (else v0.0.0).
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go_build_cached "$KUBEADM_BIN" "$KIND_SRC/kubeadm" k8s.io/kubernetes/cmd/kubeadm "$ldflags"
}

build_kind_coredns() {
  go_build_cached "$KIND_COREDNS_BIN" "$KIND_SRC/coredns" . "-s -w"
}

# The kind module's source (images/base/files: the node's entrypoint, units, containerd config).
kind_module_dir() {
  (cd "$KIND_SRC/kind" && go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
}

# What podman leaves on the host outside its storage even when every container and network of
# ours is gone: empty libpod_parent cgroups (conmon's, from its cgroupfs manager) in every
# hierarchy and /etc/cni/net.d/cni.lock. podman_host_snapshot records whether they existed;
# podman_host_cleanup removes them only when they did not (the cgroups only when empty).
podman_host_snapshot() {
  PODMAN_CGROUPS_BEFORE=$(find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -name libpod_parent 2>/dev/null | wc -l)
  PODMAN_CNI_LOCK_BEFORE=0
  [ ! -e /etc/cni/net.d/cni.lock ] || PODMAN_CNI_LOCK_BEFORE=1
}
podman_host_cleanup() {
  local d
  if [ "${PODMAN_CGROUPS_BEFORE:-1}" = 0 ]; then
    for d in /sys/fs/cgroup/*/libpod_parent; do
      [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  fi
  [ "${PODMAN_CNI_LOCK_BEFORE:-1}" = 1 ] || rm -f /etc/cni/net.d/cni.lock
  return 0
}

# What kind with podman needs on a Debian host, beyond tests/env's: podman itself, debootstrap
# (the node image's base), jq, and the dnsname CNI plugin (the nodes find each other by name).
KIND_PODMAN_PACKAGES=(podman debootstrap jq golang-github-containernetworking-plugin-dnsname)
# podman's settings for this project, in a file of its own (CONTAINERS_CONF; the host's
# /etc/containers is not touched): the cached runc (Debian's crun refuses this host's hybrid
# cgroup layout), the cgroupfs manager (no systemd here), no default ulimits (raising them needs
# CAP_SYS_RESOURCE, which the machine's root lacks), events to a file.
KIND_CONTAINERS_CONF=$KIND_CACHE/containers.conf

# podman_prepare: installs the missing packages (as root, with apt-get; else says which are
# missing) and exports CONTAINERS_CONF for every podman that follows (kind's too).
podman_prepare() {
  local p missing=()
  for p in "${KIND_PODMAN_PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null ||
      die "missing: ${missing[*]} (as root: apt-get install ${missing[*]})"
    kind_log "installing ${missing[*]}"
    mkdir -p "$CACHE/logs"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } \
      >"$CACHE/logs/kind-apt.log" 2>&1 || die "apt-get install ${missing[*]} failed: $CACHE/logs/kind-apt.log"
  fi
  [ -x "$RUNC_BIN/runc" ] || die "$RUNC_BIN/runc is missing: run tests/env/build first"
  mkdir -p "$KIND_CACHE"
  cat >"$KIND_CONTAINERS_CONF.tmp" <<CONF
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
[engine.runtimes]
runc = ["$RUNC_BIN/runc"]
CONF
  mv "$KIND_CONTAINERS_CONF.tmp" "$KIND_CONTAINERS_CONF"
  export CONTAINERS_CONF=$KIND_CONTAINERS_CONF
}
