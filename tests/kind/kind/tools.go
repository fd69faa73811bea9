//go:build tools

// Keeps sigs.k8s.io/kind (the CLI, built with `go build sigs.k8s.io/kind`) in go.mod.
package tools

import _ "sigs.k8s.io/kind"
