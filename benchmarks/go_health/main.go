// A Go health server for fastelect's health benchmark: the comparison anchor.
//
// Written for this benchmark (stdlib only), shaped like a Go elector's health
// endpoint: net/http over TLS, a mutex-guarded leadership state, and
// encoding/json of the record with lastUpdated = now on every request.
//
//	go run . CERT KEY     # prints the chosen port, serves until stdin closes
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type record struct {
	LeaderID    string `json:"leaderID"`
	LeaderAddr  string `json:"leaderAddr"`
	LastUpdated string `json:"lastUpdated"`
	Term        int64  `json:"term"`
	ETag        string `json:"etag"`
}

type state struct {
	mu        sync.RWMutex
	leading   bool
	leaseEnd  time.Time
	leaderID  string
	leaderAdr string
	term      int64
	etag      string
}

func (s *state) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	live := s.leading && time.Now().Before(s.leaseEnd)
	rec := record{s.leaderID, s.leaderAdr, "", s.term, s.etag}
	s.mu.RUnlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !live {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	rec.LastUpdated = time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")
	body, err := json.Marshal(rec)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(body)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_health CERT KEY")
		os.Exit(2)
	}
	st := &state{
		leading: true, leaseEnd: time.Now().Add(time.Hour),
		leaderID: "bench-node", leaderAdr: "127.0.0.1:8443", term: 1, etag: `"bench-etag"`,
	}
	mux := http.NewServeMux()
	mux.Handle("/health/leadership/cluster", st)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	if err := srv.ServeTLS(ln, os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
