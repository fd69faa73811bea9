# The test environment's nodes: each one containerd + runc + kubelet with CNI bridge
# networking; one kube-proxy for both. Sourced by tests/env/up (start_node for each node, then
# start_kube_proxy) and tests/env/down (stop_node for each node, then stop_host_rules); needs
# lib.sh and, for start_node, up's helpers (start, sign, kubeconfig, wait_for) and node_vars
# already called for the node.
#
# What a node makes, so down can remove all of it:
#   $NODE_DIR                containerd root/state, runc state, kubelet root, CNI config and IPAM,
#                            pod logs; the network namespaces are mounted under containerd's state
#   bridge $NODE_BRIDGE      the node address $NODE_IP (pods get the rest of $NODE_CIDR); the
#                            host routes between the nodes' bridges
#   cgroups /$NODE_CGROUP    kubelet's cgroupRoot in every hierarchy: every pod process is there
# and, shared by the nodes (stop_host_rules):
#   kube-proxy's rules       the KUBE-* chains of the host's iptables (iptables mode): every
#                            Service's cluster IP. They are host-wide, which is why one
#                            environment runs per host (tests/env/up refuses a second); down
#                            removes them with `kube-proxy --cleanup`, and the kubelet's own
#                            (KUBE-FIREWALL and its canaries)
#   net.ipv4.ip_forward = 1  a pod reaching a pod on the other node, or any pod through a
#                            Service (DNATed back out of a bridge); down restores the value it
#                            found

start_node() {
  local d=$NODE_DIR kubelet=kubelet$NODE_SUFFIX containerd=containerd$NODE_SUFFIX
  local kubelet_port healthz_port
  kubelet_port=$(free_port)
  healthz_port=$(free_port)
  mkdir -p "$d"/{containerd/root,containerd/state,runc,kubelet,pod-logs,cni/net.d,cni/ipam}
  # Unix socket paths are limited to 107 bytes.
  [ ${#d} -le 80 ] || die "the state directory path is too long for containerd's socket ($d); set PIPEWRIGHT_STATE to a shorter path"

  cat >"$d/cni/net.d/10-pipewright.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "pipewright-$NODE_INDEX",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/cni/ipam"
      }
    }
  ]
}
JSON

  cat >"$d/containerd/config.toml" <<TOML
version = 3
root = "$d/containerd/root"
state = "$d/containerd/state"

[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$d/containerd/opt"
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "$d/containerd/certs.d"
  [plugins.'io.containerd.cri.v1.runtime']
    # This sandbox may not lower oom_score_adj; without this every pod sandbox fails.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$RUNC_BIN/runc"
          Root = "$d/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$CNI_BIN"]
      conf_dir = "$d/cni/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
TOML

  # Nothing is ever pulled: images are imported (tests/env/images). Every registry resolves
  # to a closed local port, so a missing image fails fast with ErrImagePull and no traffic
  # leaves the machine.
  mkdir -p "$d/containerd/certs.d/_default"
  printf 'server = "http://127.0.0.1:9"\n' >"$d/containerd/certs.d/_default/hosts.toml"

  # The shim is found on containerd's PATH.
  start "$containerd" env PATH="$CONTAINERD_BIN:$PATH" \
    "$CONTAINERD_BIN/containerd" --config "$d/containerd/config.toml" --log-level warn
  wait_for "$containerd" 60 "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" version
  local image
  for image in "$PAUSE_DIR/pause.tar" "$RECEIVER_DIR/receiver.tar"; do
    "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" -n k8s.io images import \
      "$image" >"$STATE/logs/image-import$NODE_SUFFIX.log" 2>&1 || {
      cat "$STATE/logs/image-import$NODE_SUFFIX.log" >&2
      die "importing $image failed"
    }
  done

  # kubelet's cgroupRoot must exist in every hierarchy.
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] && mkdir -p "$h$NODE_CGROUP"
  done
  [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir -p "/sys/fs/cgroup/$NODE_CGROUP"

  # Its client identity (Node authorizer, NodeRestriction) and its serving certificate.
  local p=$STATE/pki
  sign "$kubelet-client" "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth"
  sign "$kubelet" "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME
extendedKeyUsage=serverAuth"
  kubeconfig "$kubelet" "$kubelet-client"
  cat >"$d/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines use cgroup v1 (hybrid); kubelet >= 1.35 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
containerRuntimeEndpoint: unix://$d/containerd.sock
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $p/$kubelet.crt
tlsPrivateKeyFile: $p/$kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $p/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
# The kube-dns Service (tests/env/node/dns.sh): CoreDNS answers for Services and pods.
clusterDNS: [$CLUSTER_DNS_IP]
resolvConf: /etc/resolv.conf
failSwapOn: false
# The filesystem here is shared and often mostly full: evict only when really out of space,
# and never collect images (the imported ones cannot be pulled again).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
podLogsDir: $d/pod-logs
serializeImagePulls: false
maxPods: 110
# Status reaches the apiserver quickly (the tests wait on it).
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
YAML

  start "$kubelet" "$K8S_BIN/kubelet" --config="$d/kubelet/config.yaml" \
    --kubeconfig="$STATE/$kubelet.kubeconfig" --root-dir="$d/kubelet" \
    --cert-dir="$d/kubelet/pki" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" --v=1
  wait_for "$kubelet" 60 curl -fs "http://127.0.0.1:$healthz_port/healthz"
  wait_for "$kubelet" 120 "$K8S_BIN/kubectl" --kubeconfig="$STATE/admin.kubeconfig" \
    wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
}

# kube-proxy in iptables mode, from the same Kubernetes pin: every Service's cluster IP (the
# `kubernetes` Service's 10.96.0.1 included) and NodePorts on the first node's address only.
# It leaves the host's conntrack settings and route_localnet alone (the flags set to 0/false).
# One kube-proxy serves both nodes: they share the host's network namespace and so its
# iptables rules (a kube-proxy per node would write the same rules twice).
start_kube_proxy() {
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || {
    echo 0 >"$STATE/ip_forward.orig"
    echo 1 >/proc/sys/net/ipv4/ip_forward
  }
  kubeconfig kube-proxy kube-proxy
  start kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$STATE/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --proxy-mode=iptables --cluster-cidr="$CLUSTER_CIDR" \
    --nodeport-addresses="$NODE_IP/32" --iptables-localhost-nodeports=false \
    --healthz-bind-address="127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT" \
    --metrics-bind-address="127.0.0.1:$KUBE_PROXY_METRICS_PORT" \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 --conntrack-udp-timeout=0 \
    --conntrack-udp-timeout-stream=0 --oom-score-adj=0 --v=1
  # Healthy once it has written the rules of the Services it has seen.
  wait_for kube-proxy 60 curl -fs "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz"
}

# Removes every container, mount, network namespace, cgroup and link node $NODE_INDEX made.
# The kubelet must already be stopped (it would restart containers).
stop_node() {
  local d=$NODE_DIR h f
  # Every pod process: kill them by cgroup, then the shims and containerd.
  for _ in 1 2 3; do
    for f in $(find /sys/fs/cgroup/*/"$NODE_CGROUP" -name cgroup.procs 2>/dev/null); do
      # shellcheck disable=SC2046
      kill -KILL $(cat "$f" 2>/dev/null) 2>/dev/null || true
    done
    sleep 0.2
  done
  local leftovers
  leftovers=$(pgrep -f -- "$d/" || true)
  # shellcheck disable=SC2086
  [ -z "$leftovers" ] || kill -KILL $leftovers 2>/dev/null || true
  # Mounts (rootfs overlays, shm, secret/projected tmpfs, network namespaces), deepest first.
  local m
  for _ in 1 2 3; do
    for m in $(awk -v d="$d/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
      umount -l "$m" 2>/dev/null || true
    done
  done
  # cgroups, deepest first (empty now).
  for h in /sys/fs/cgroup/*/"$NODE_CGROUP" /sys/fs/cgroup/"$NODE_CGROUP"; do
    [ -d "$h" ] || continue
    find "$h" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
}

# The host-wide rules every node shares; after every node is stopped.
stop_host_rules() {
  local ipt table chain
  # kube-proxy's chains (it is stopped already), and the forwarding it needed.
  "$K8S_BIN/kube-proxy" --cleanup --proxy-mode=iptables >/dev/null 2>&1 || true
  # The kubelet's own chains, in both address families: its canaries (KUBE-KUBELET-CANARY,
  # KUBE-IPTABLES-HINT) and KUBE-FIREWALL (drops packets to 127.0.0.0/8 from elsewhere),
  # jumped to from INPUT and OUTPUT. One environment per host: nothing else uses them.
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null || true
    "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null || true
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  [ -f "$STATE/ip_forward.orig" ] && cat "$STATE/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward
  return 0
}
