package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"ct-supervise/state"
)

// leaderServer answers /v1/status/leader like an agent, counting requests
// that carry token.
func leaderServer(t *testing.T, token string) (addr string, withToken *atomic.Int64) {
	t.Helper()
	withToken = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Consul-Token") == token {
			withToken.Add(1)
		}
		_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), withToken
}

// consulEnvForTest makes the test's CONSUL_* variables come back as they
// were: the runner sets the recorded ones in the process environment.
func consulEnvForTest(t *testing.T) {
	for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_CACERT"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// The runner uses the newest settings an exec recorded, over its own
// environment, and picks up new ones on the next request.
func TestConsulRunnerUsesNewestRecordedSettings(t *testing.T) {
	consulEnvForTest(t)
	s, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1") // the worker's own: nothing there
	r, err := NewConsulRunner(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Ping(ctx); err == nil {
		t.Fatal("Ping succeeded against the worker's own (closed) address")
	}

	addr, withToken := leaderServer(t, "secret-token")
	if _, err := RecordConsulSettings(s, []string{"PATH=/bin", "CONSUL_HTTP_ADDR=" + addr, "CONSUL_HTTP_TOKEN=secret-token"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Ping(ctx); err != nil {
		t.Fatalf("Ping with the recorded settings: %v", err)
	}
	if withToken.Load() != 1 {
		t.Fatalf("%d requests carried the recorded token, want 1", withToken.Load())
	}
	if src := r.Source(); strings.Contains(src, "secret-token") || !strings.Contains(src, addr) {
		t.Fatalf("Source() = %q: want the address, never the token", src)
	}
}

// exec records only CONSUL_* variables, in a file only its owner reads, and
// only when there are any: a bare shell's exec leaves consul-template's in
// force. New settings clear a recorded start failure.
func TestRecordConsulSettings(t *testing.T) {
	s, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"HOME=/root", "CONSUL_HTTP_ADDR=10.0.0.1:8500", "CONSUL_HTTP_TOKEN=t1"}
	if changed, err := RecordConsulSettings(s, env); err != nil || !changed {
		t.Fatalf("first record: changed=%v err=%v", changed, err)
	}
	fi, err := os.Stat(s.Path(ConsulSettingsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("settings file: %v %v, want mode 0600", fi, err)
	}
	if changed, _ := RecordConsulSettings(s, env); changed {
		t.Fatal("the same settings were recorded again")
	}
	if changed, _ := RecordConsulSettings(s, []string{"HOME=/root"}); changed {
		t.Fatal("an exec without CONSUL_* replaced the recorded settings")
	}
	got, err := loadConsulSettings(s)
	if err != nil || got.Env["CONSUL_HTTP_TOKEN"] != "t1" || len(got.Env) != 2 {
		t.Fatalf("recorded %v (%v), want the two CONSUL_* variables", got.Env, err)
	}
	if err := RecordStartFailure(s, os.ErrNotExist, 78); err != nil {
		t.Fatal(err)
	}
	if _, err := RecordConsulSettings(s, []string{"CONSUL_HTTP_ADDR=10.0.0.2:8500"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil || st.WorkerFailure != nil {
		t.Fatalf("worker failure after new settings: %+v (%v), want cleared", st.WorkerFailure, err)
	}
}

// Settings that make no client are a configuration error at start.
func TestNewConsulRunnerBadCAFile(t *testing.T) {
	consulEnvForTest(t)
	s, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RecordConsulSettings(s, []string{"CONSUL_CACERT=/nonexistent/ca.pem"}); err != nil {
		t.Fatal(err)
	}
	_, err = NewConsulRunner(s)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/ca.pem") {
		t.Fatalf("NewConsulRunner: %v, want an error naming the CA file", err)
	}
}
