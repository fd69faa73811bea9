// CoreDNS for the kind node image (tests/kind/node-image): the plugins kubeadm's default
// Corefile uses (errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload,
// loadbalance) plus log, built the way CoreDNS documents for a smaller server (coremain plus a
// directive list). The test environment's own build (tests/env/coredns) lacks prometheus,
// loop and reload, so kubeadm's Corefile fails there with "Unknown directive 'prometheus'".
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// The order plugins run in, as in CoreDNS's plugin.cfg (a query passes them in this order).
var directives = []string{
	"reload",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
	"loop",
	"forward",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
