# The cluster's DNS and the Services for the environment's own Kafka and PostgreSQL.
# Sourced by tests/env/up after start_node (needs its helpers: start, kubeconfig, wait_for).
#
#   CoreDNS                  built from its Go module (tests/env/coredns), run like the control
#                            plane on the host: it answers on $NODE_IP:53, reads Services and
#                            EndpointSlices with its own identity (system:coredns, the rules of
#                            CoreDNS's own deployment manifest) and forwards other names to the
#                            host's resolver
#   kube-system/kube-dns     the Service every pod's resolv.conf names ($CLUSTER_DNS_IP, the
#                            kubelet's clusterDNS), a selector-less Service whose EndpointSlice
#                            is CoreDNS on the node address: kube-proxy routes it as any other
#   kafka, postgres          Services in `default` (and in any namespace a test applies
#                            $SERVICES_MANIFEST to) for the broker and the database on the node
#                            address, so `kafka:9092` and `postgres:5432` mean what they mean
#                            in a cluster that runs them (examples/ says so)

start_cluster_dns() {
  local d=$STATE/coredns kc=$STATE/coredns.kubeconfig
  mkdir -p "$d"
  kubeconfig coredns coredns
  "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" apply -f - >/dev/null <<YAML
# What CoreDNS's kubernetes plugin reads, as in CoreDNS's own deployment manifest.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:coredns}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:coredns}
YAML
  cat >"$d/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COREDNS_HEALTH_PORT
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kc pipewright-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . /etc/resolv.conf
    cache 5
    loadbalance
}
COREFILE
  start coredns "$COREDNS_BIN/coredns" -conf "$d/Corefile"
  # Ready once the kubernetes plugin has listed Services and EndpointSlices.
  wait_for coredns 60 curl -fs "http://127.0.0.1:$COREDNS_READY_PORT/ready"

  # The kube-dns Service at the address the kubelet gives every pod.
  "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $CLUSTER_DNS_IP
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-coredns
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: pipewright-testenv}
addressType: IPv4
endpoints:
  - addresses: [$NODE_IP]
    conditions: {ready: true}
ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
YAML
}

# kafka:9092 and postgres:5432 as Services, for `kubectl apply -n <namespace> -f` (a
# selector-less Service and its EndpointSlice each: kube-proxy routes the cluster IP to the
# node address). Kafka's clients bootstrap through the Service, then reach the broker at the
# address it advertises, the node address.
write_services_manifest() {
  cat >"$SERVICES_MANIFEST" <<YAML
apiVersion: v1
kind: Service
metadata:
  name: kafka
  labels: {app.kubernetes.io/part-of: pipewright-testenv}
spec:
  ports: [{name: kafka, port: 9092, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kafka-testenv
  labels: {kubernetes.io/service-name: kafka, endpointslice.kubernetes.io/managed-by: pipewright-testenv}
addressType: IPv4
endpoints:
  - addresses: [$NODE_IP]
    conditions: {ready: true}
ports: [{name: kafka, port: $KAFKA_PORT, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata:
  name: postgres
  labels: {app.kubernetes.io/part-of: pipewright-testenv}
spec:
  ports: [{name: postgres, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: postgres-testenv
  labels: {kubernetes.io/service-name: postgres, endpointslice.kubernetes.io/managed-by: pipewright-testenv}
addressType: IPv4
endpoints:
  - addresses: [$NODE_IP]
    conditions: {ready: true}
ports: [{name: postgres, port: $PG_PORT, protocol: TCP}]
YAML
  "$KUBECTL" --kubeconfig="$STATE/admin.kubeconfig" apply -n default -f "$SERVICES_MANIFEST" >/dev/null
}
