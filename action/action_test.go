package action

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/fleet"
	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

var agent *devconsul.Agent

// helperEnv makes the test binary act as a "restart" command: it asks the
// URL in the variable to restart the service, and exits at once, as
// `systemctl restart` returns before the service is up.
const helperEnv = "CT_SUPERVISE_ACTION_TEST_RESTART"

func TestMain(m *testing.M) {
	if url := os.Getenv(helperEnv); url != "" {
		resp, err := http.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		resp.Body.Close()
		os.Exit(0)
	}
	os.Exit(devconsul.RunPackage(m, &agent))
}

func client(t *testing.T) *api.Client {
	t.Helper()
	return devconsul.SharedClient(t, agent)
}

// ledger records when each node's service was down.
type ledger struct {
	mu    sync.Mutex
	spans map[string][][2]time.Time
}

func (l *ledger) add(node string, from, to time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spans == nil {
		l.spans = map[string][][2]time.Time{}
	}
	l.spans[node] = append(l.spans[node], [2]time.Time{from, to})
}

// maxDown is the most nodes that were down at the same instant.
func (l *ledger) maxDown() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	type ev struct {
		at    time.Time
		delta int
	}
	var evs []ev
	for _, spans := range l.spans {
		for _, s := range spans {
			evs = append(evs, ev{s[0], 1}, ev{s[1], -1})
		}
	}
	// Ends before starts at the same instant: touching spans do not overlap.
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].at.Equal(evs[j].at) {
			return evs[i].delta < evs[j].delta
		}
		return evs[i].at.Before(evs[j].at)
	})
	n, most := 0, 0
	for _, e := range evs {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// service is one node's service: an HTTP server with a Consul check that a
// restart takes down for downFor, in the background.
type service struct {
	node, name string
	srv        *httptest.Server
	mu         sync.Mutex
	downUntil  time.Time
}

func newService(t *testing.T, c *api.Client, node string, downFor time.Duration, l *ledger) *service {
	t.Helper()
	s := &service{node: node, name: strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + node}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		now := time.Now()
		if r.URL.Path == "/restart" {
			s.downUntil = now.Add(downFor)
			l.add(node, now, s.downUntil)
			return
		}
		if now.Before(s.downUntil) {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	t.Cleanup(s.srv.Close)
	reg := &api.AgentServiceRegistration{ID: s.name, Name: s.name,
		Check: &api.AgentServiceCheck{CheckID: s.name + "-http", HTTP: s.srv.URL + "/health", Interval: "1s"}}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(reg.ID) })
	waitPassing(t, c, s.name)
	return s
}

func waitPassing(t *testing.T, c *api.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		checks, _, err := c.Health().Checks(name, nil)
		if err == nil && len(checks) > 0 && checks.AggregatedStatus() == api.HealthPassing {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never passed", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// restartOptions is a node's action: restart its service under the
// test's lock.
func restartOptions(t *testing.T, s *service, prefix string) Options {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Lock: lockexec.Options{Prefix: prefix, Limit: 1, Command: []string{exe},
			Env: append(os.Environ(), helperEnv+"="+s.srv.URL+"/restart")},
		Node: "devconsul",
	}
}

// A rolling restart over four nodes whose restart returns before the
// service is back: with the health gate, two services are never down at
// once; without it they are, which shows that the ledger can tell.
func TestRollingRestartKeepsOneNodeDown(t *testing.T) {
	c := client(t)
	for _, gated := range []bool{true, false} {
		t.Run(fmt.Sprintf("wait-healthy=%v", gated), func(t *testing.T) {
			var l ledger
			prefix := "test/rolling-" + fmt.Sprint(gated)
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for i := 1; i <= 4; i++ {
				s := newService(t, c, fmt.Sprintf("n%d", i), 3*time.Second, &l)
				opts := restartOptions(t, s, prefix)
				if gated {
					opts.WaitHealthy = []string{s.name}
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := New(c).Run(context.Background(), opts)
					if err == nil && res.ExitCode != 0 {
						err = fmt.Errorf("exit %d", res.ExitCode)
					}
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("a node failed: %v", err)
				}
			}
			most := l.maxDown()
			switch {
			case gated && most != 1:
				t.Fatalf("with -wait-healthy, %d services were down at once", most)
			case !gated && most < 2:
				t.Fatalf("without -wait-healthy the services never overlapped (max %d down): the test cannot tell", most)
			}
		})
	}
}

func TestCheckFailsBeforeAnySession(t *testing.T) {
	c := client(t)
	prefix := "test/check"
	ran := t.TempDir() + "/ran"
	opts := Options{
		Lock:  lockexec.Options{Prefix: prefix, Command: []string{"touch " + ran}, Shell: true, SessionName: "check-test"},
		Check: []string{"echo 'nginx: [emerg] unknown directive'; exit 1"}, CheckShell: true,
	}
	res, err := New(c).Run(context.Background(), opts)
	if !errors.Is(err, ErrCheckFailed) || !strings.Contains(err.Error(), "unknown directive") {
		t.Fatalf("Run = %v, want ErrCheckFailed with the check's output", err)
	}
	if !strings.Contains(res.CheckOutput, "[emerg]") {
		t.Fatalf("CheckOutput = %q", res.CheckOutput)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the command ran although the check failed")
	}
	sessions, _, err := c.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		if s.Name == "check-test" {
			t.Fatalf("a session %s exists although the check failed", s.ID)
		}
	}
	opts.Check = []string{"true"}
	if res, err := New(c).Run(context.Background(), opts); err != nil || res.ExitCode != 0 {
		t.Fatalf("with a passing check: %v, exit %d", err, res.ExitCode)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("the command did not run after a passing check")
	}
}

func TestMaintenanceOnDuringCommandAndLeftOnFailure(t *testing.T) {
	c := client(t)
	var l ledger
	s := newService(t, c, "n1", 0, &l)
	maintCheck := "_service_maintenance:" + s.name
	// As the command starts, the maintenance check is there and critical.
	var during *api.AgentCheck
	opts := Options{Lock: lockexec.Options{Prefix: "test/maint", Command: []string{"true"}},
		Node: "devconsul", Maint: s.name, Drain: 100 * time.Millisecond, WaitHealthy: []string{s.name},
		OnPhase: func(phase, _ string) {
			if phase == PhaseRunning {
				checks, _ := c.Agent().Checks()
				during = checks[maintCheck]
			}
		}}
	res, err := New(c).Run(context.Background(), opts)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run = %v, exit %d", err, res.ExitCode)
	}
	if during == nil || during.Status != api.HealthCritical {
		t.Fatalf("the maintenance check was not critical as the command started: %+v", during)
	}
	if checks, _ := c.Agent().Checks(); checks[maintCheck] != nil || res.MaintLeft {
		t.Fatal("maintenance is still on after a success")
	}

	opts.Lock.Command, opts.Lock.Shell = []string{"exit 3"}, true
	res, err = New(c).Run(context.Background(), opts)
	if err != nil || res.ExitCode != 3 || !res.MaintLeft {
		t.Fatalf("failing Run = %v, exit %d, maint left %v", err, res.ExitCode, res.MaintLeft)
	}
	if checks, _ := c.Agent().Checks(); checks[maintCheck] == nil {
		t.Fatal("maintenance was lifted after a failure")
	}
	_ = c.Agent().DisableServiceMaintenance(s.name)
}

func TestHoldKeepsTheLock(t *testing.T) {
	c := client(t)
	const hold = 2 * time.Second
	ends := make(chan time.Time, 1)
	first := Options{Lock: lockexec.Options{Prefix: "test/hold", Command: []string{"true"}}, Hold: hold,
		OnPhase: func(phase, _ string) {
			if phase == PhaseHolding {
				ends <- time.Now()
			}
		}}
	done := make(chan error, 1)
	go func() { _, err := New(c).Run(context.Background(), first); done <- err }()
	ended := <-ends
	second := Options{Lock: lockexec.Options{Prefix: "test/hold", Command: []string{"true"}},
		OnPhase: func(phase, _ string) {
			if phase == PhaseRunning {
				ends <- time.Now()
			}
		}}
	if _, err := New(c).Run(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if started := <-ends; started.Sub(ended) < hold {
		t.Fatalf("the next node started %s after the previous command ended, within the %s hold", started.Sub(ended), hold)
	}
}

func TestHealthTimeoutFailsAndReleases(t *testing.T) {
	c := client(t)
	var l ledger
	s := newService(t, c, "n1", time.Hour, &l) // never back up
	opts := restartOptions(t, s, "test/timeout")
	opts.WaitHealthy, opts.HealthTimeout = []string{s.name}, 3*time.Second
	_, err := New(c).Run(context.Background(), opts)
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), s.name+"-http") {
		t.Fatalf("Run = %v, want ErrUnhealthy naming the check", err)
	}
	if pair, _, _ := c.KV().Get("test/timeout/.lock", nil); pair != nil && pair.Session != "" {
		t.Fatal("the lock is still held after the health timeout")
	}
}

// A failing node halts the rollout before it releases: the next node,
// which gets the lock right after, waits until the halt is lifted.
func TestFailureHaltsTheNextNode(t *testing.T) {
	c := client(t)
	prefix := "test/halt"
	f := fleet.New(c, prefix)
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix+fleet.Suffix, nil) })
	bad := Options{Lock: lockexec.Options{Prefix: prefix, Command: []string{"exit 1"}, Shell: true},
		Node: "web-2", Fleet: f}
	if res, err := New(c).Run(context.Background(), bad); err != nil || res.ExitCode != 1 {
		t.Fatalf("bad Run = %v, exit %d", err, res.ExitCode)
	}
	ran := t.TempDir() + "/ran"
	phases := make(chan string, 10)
	next := Options{Lock: lockexec.Options{Prefix: prefix, Command: []string{"touch " + ran}, Shell: true},
		Node: "web-3", Fleet: f, OnPhase: func(p, d string) { phases <- p + ": " + d }}
	done := make(chan error, 1)
	go func() { _, err := New(c).Run(context.Background(), next); done <- err }()
	if p := <-phases; !strings.HasPrefix(p, PhaseHalted+": rollout halted by web-2") {
		t.Fatalf("first phase %q, want halted by web-2", p)
	}
	select {
	case err := <-done:
		t.Fatalf("the next node ran while halted: %v", err)
	case <-time.After(time.Second):
	}
	if _, err := f.ClearHalt(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the next node did not run after the halt was lifted")
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("the next node's command did not run")
	}
}

// The node that halted the rollout is not held by its own halt: its retry
// is what lifts the halt when it succeeds.
func TestOwnHaltDoesNotHoldTheRetry(t *testing.T) {
	c := client(t)
	prefix := "test/own-halt"
	f := fleet.New(c, prefix)
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix+fleet.Suffix, nil) })
	opts := Options{Lock: lockexec.Options{Prefix: prefix, Command: []string{"exit 1"}, Shell: true, Try: 10 * time.Second},
		Node: "web-2", Fleet: f}
	if _, err := New(c).Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if h, _ := f.Halt(context.Background()); h == nil || h.Node != "web-2" {
		t.Fatalf("halt after the failure: %+v", h)
	}
	opts.Lock.Command = []string{"true"}
	if res, err := New(c).Run(context.Background(), opts); err != nil || res.ExitCode != 0 {
		t.Fatalf("the retry: %v, exit %d", err, res.ExitCode)
	}
	if h, _ := f.Halt(context.Background()); h != nil {
		t.Fatalf("the halt stands after the failing node succeeded: %+v", h)
	}
}

// -try bounds a wait on a halt as it bounds the wait for the lock.
func TestTryBoundsTheHaltWait(t *testing.T) {
	c := client(t)
	prefix := "test/halt-try"
	f := fleet.New(c, prefix)
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix+fleet.Suffix, nil) })
	if err := f.SetHalt(context.Background(), fleet.Halt{Node: "web-9", Reason: "boom", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	opts := Options{Lock: lockexec.Options{Prefix: prefix, Command: []string{"true"}, Shell: true, Try: time.Second},
		Node: "web-1", Fleet: f}
	_, err := New(c).Run(context.Background(), opts)
	if !errors.Is(err, lockexec.ErrNotAcquired) || !strings.Contains(err.Error(), "halted by web-9: boom") {
		t.Fatalf("Run = %v, want not acquired, naming the halt", err)
	}
}

// A Consul that cannot be read at all is an error at once, not a wait
// without end on the fleet's switches.
func TestUnreachableConsulFailsAtOnce(t *testing.T) {
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.DefaultConfig()
	cfg.Address = fmt.Sprintf("127.0.0.1:%d", port)
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Lock: lockexec.Options{Prefix: "test/unreachable", Command: []string{"true"}, Shell: true},
		Node: "web-1", Fleet: fleet.New(c, "test/unreachable")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = New(c).Run(ctx, opts)
	if !errors.Is(err, lockexec.ErrConsulUnreachable) || ctx.Err() != nil {
		t.Fatalf("Run = %v, want Consul unreachable at once", err)
	}
}

// TestSwitchesTurnedAwayAreRetried: when Consul turns the first reads of the
// halt and pause away for a moment (a 429 when many nodes start at once, as
// 1,000 contenders on one agent do), the action waits them out and runs;
// it does not fail as if Consul were unreachable.
func TestSwitchesTurnedAwayAreRetried(t *testing.T) {
	target, err := url.Parse("http://" + agent.Addr())
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	var turnedAway atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, ".fleet/") && turnedAway.Add(1) <= 6 {
			http.Error(w, "Your IP is issuing too many concurrent connections, please rate limit your calls", http.StatusTooManyRequests)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cfg := api.DefaultConfig()
	cfg.Address = srv.Listener.Addr().String()
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	prefix := "test/turned-away"
	ran := t.TempDir() + "/ran"
	opts := Options{Lock: lockexec.Options{Prefix: prefix, Command: []string{"touch " + ran}, Shell: true},
		Node: "web-1", Fleet: fleet.New(c, prefix)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if res, err := New(c).Run(ctx, opts); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run = %v, exit %d; want the 429s waited out", err, res.ExitCode)
	}
	if _, err := os.Stat(ran); err != nil {
		t.Fatal("the command did not run")
	}
	if n := turnedAway.Load(); n <= 6 {
		t.Fatalf("only %d reads of the switches: the test turned none away", n)
	}
}
