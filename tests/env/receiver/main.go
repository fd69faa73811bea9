// An HTTP receiver that runs as a pod in the end-to-end tests (tests/tests/e2e_sink_ref.rs):
// what an EventConsumer's HTTP sink delivers to when its sink names a Service. It answers
// each request with what the test's own server (FORWARD_URL, on the node address) answered to
// the same request forwarded to it, so an event counts as received only once the test holds
// it: a receiver pod deleted mid-request loses nothing the test counted, and the sink retries
// what was not acknowledged. GET /healthz answers 200 (the readiness probe).
//
// Standard library only, built static (CGO_ENABLED=0) by tests/env/build and packed as an
// image like the pause image; the node imports it as $PIPEWRIGHT_RECEIVER_IMAGE.
package main

import (
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	forward := os.Getenv("FORWARD_URL")
	if forward == "" {
		log.Fatal("FORWARD_URL is not set")
	}
	listen := os.Getenv("LISTEN")
	if listen == "" {
		listen = ":8080"
	}
	client := &http.Client{Timeout: 30 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		out, err := http.NewRequestWithContext(r.Context(), r.Method, forward+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out.Header = r.Header.Clone()
		out.Header.Set("X-Receiver-Pod", os.Getenv("HOSTNAME"))
		answer, err := client.Do(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer answer.Body.Close()
		w.WriteHeader(answer.StatusCode)
		io.Copy(w, answer.Body)
	})
	log.Printf("receiving on %s, forwarding to %s", listen, forward)
	log.Fatal(http.ListenAndServe(listen, mux))
}
