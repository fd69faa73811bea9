// The e2e tests' HTTP receiver (main.go): standard library only.
module pipewright.io/testenv/receiver

go 1.26.0
