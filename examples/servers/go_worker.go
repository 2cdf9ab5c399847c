// A Go net/http worker for einhyrningsins (and einhorn), stdlib only:
// examples/configs/go.toml, docs/workers.md. Build: go build go_worker.go.
//
// It takes its listener from EINHORN_FD_0 (net.FileListener, as Stripe's
// go-einhorn does), acks with worker:ack on EINHORN_SOCK_PATH (ack =
// "manual"), answers `pid=<pid> version=<APP_VERSION>` (`/sleep?ms=N` after N
// ms) and stops on SIGUSR2 or SIGTERM.
//
// -drain=stock is what most Go servers do: http.Server.Shutdown at once, which
// closes idle keep-alive connections immediately, so a keep-alive client whose
// next request is already on its way gets a read error. -drain=graceful (the
// default) first stops accepting and answers every request with
// `Connection: close` for -grace (1 s), so each keep-alive client is told to
// reconnect, then shuts down.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	drain := flag.String("drain", "graceful", "stock (Shutdown at once) or graceful")
	grace := flag.Duration("grace", time.Second, "graceful drain: keep answering with Connection: close this long")
	flag.Parse()

	fd, err := strconv.Atoi(os.Getenv("EINHORN_FD_0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_worker: EINHORN_FD_0 is not set: run me under einhyrningsins or einhorn")
		os.Exit(2)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_worker: fd", fd, "is not a listener:", err)
		os.Exit(2)
	}
	version := os.Getenv("APP_VERSION")
	if version == "" {
		version = "1"
	}
	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			// The server closes the connection after this response; the
			// client reconnects, to a sibling.
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/sleep" {
			ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
			if ms > 10000 {
				ms = 10000
			}
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "pid=%d version=%s\n", os.Getpid(), version)
	})
	srv := &http.Server{Handler: mux, IdleTimeout: 60 * time.Second}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ack()

	<-stop
	if *drain == "graceful" {
		// Every response from now on says Connection: close; no new
		// connection is taken (the shared socket stays open for the others).
		// Not SetKeepAlivesEnabled(false): it closes idle connections at once.
		draining.Store(true)
		ln.Close()
		time.Sleep(*grace)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	<-served
}

// ack tells the master this worker is ready (ack = "manual"), as einhorn's
// client libraries do.
func ack() {
	path := os.Getenv("EINHORN_SOCK_PATH")
	if path == "" {
		return
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_worker: cannot ack:", err)
		return
	}
	defer c.Close()
	fmt.Fprintf(c, "{\"command\":\"worker:ack\",\"pid\":%d}\n", os.Getpid())
}
