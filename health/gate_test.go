package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// agent is the package's Consul dev agent; nil when skipping outside CI.
var agent *devconsul.Agent

func TestMain(m *testing.M) {
	os.Exit(devconsul.RunPackage(m, &agent))
}

// client returns a client for the package agent, skipping (outside CI
// only) when there is no consul binary.
func client(t *testing.T) *api.Client {
	t.Helper()
	return devconsul.SharedClient(t, agent)
}

// service is an HTTP server the test turns up and down, registered with
// the agent under a unique name with an HTTP check of the given interval.
type service struct {
	name string
	up   atomic.Bool
	srv  *httptest.Server
}

func newService(t *testing.T, c *api.Client, interval time.Duration) *service {
	t.Helper()
	s := &service{name: strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))}
	s.up.Store(true)
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !s.up.Load() {
			http.Error(w, "down for restart", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}))
	t.Cleanup(s.srv.Close)
	reg := &api.AgentServiceRegistration{
		ID: s.name + "-1", Name: s.name, Port: 80,
		Check: &api.AgentServiceCheck{CheckID: s.name + "-http", HTTP: s.srv.URL, Interval: interval.String()},
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(reg.ID) })
	return s
}

// waitStatus polls until the service's check has status, or fails.
func waitStatus(t *testing.T, c *api.Client, service, status string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		checks, _, err := c.Health().Checks(service, nil)
		if err == nil && len(checks) > 0 && checks.AggregatedStatus() == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s never became %s (checks %v, err %v)", service, status, checks, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A restart that returns at once leaves a passing result from before it in
// Consul: the gate must wait for a result that is fresh, and so open only
// after the service is really back.
func TestGateIgnoresStaleResult(t *testing.T) {
	c := client(t)
	const interval = 2 * time.Second
	s := newService(t, c, interval)
	waitStatus(t, c, s.name, api.HealthPassing)

	// The "restart": down now, back 3s later, in the background.
	commandEnd := time.Now()
	s.up.Store(false)
	var mu sync.Mutex
	var backUp time.Time
	go func() {
		time.Sleep(3 * time.Second)
		mu.Lock()
		backUp = time.Now()
		s.up.Store(true)
		mu.Unlock()
	}()

	err := Wait(context.Background(), c, Options{Services: []string{s.name}, Node: "devconsul",
		Since: commandEnd, Timeout: time.Minute})
	opened := time.Now()
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if backUp.IsZero() || opened.Before(backUp) {
		t.Fatalf("the gate opened %s after the command while the service was still down (stale passing result)",
			opened.Sub(commandEnd).Round(time.Millisecond))
	}
}

func TestGateTimeoutNamesTheCheck(t *testing.T) {
	c := client(t)
	s := newService(t, c, time.Second)
	s.up.Store(false)
	waitStatus(t, c, s.name, api.HealthCritical)

	err := Wait(context.Background(), c, Options{Services: []string{s.name}, Node: "devconsul",
		Timeout: 2 * time.Second})
	if !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("Wait = %v, want ErrUnhealthy", err)
	}
	for _, want := range []string{s.name + "-http", "critical", "503"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestGateServiceNotOnNode(t *testing.T) {
	c := client(t)
	err := Wait(context.Background(), c, Options{Services: []string{"no-such-service"}, Node: "devconsul",
		Timeout: time.Second})
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), `"no-such-service" has no instance on node "devconsul"`) {
		t.Fatalf("Wait = %v, want ErrUnhealthy naming the missing instance", err)
	}
}

func TestGateTTLCheckSettles(t *testing.T) {
	c := client(t)
	name := "ttl-svc"
	reg := &api.AgentServiceRegistration{ID: name, Name: name,
		Check: &api.AgentServiceCheck{CheckID: name + "-ttl", TTL: "30s"}}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(name) })
	if err := c.Agent().UpdateTTL(name+"-ttl", "up", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, name, api.HealthPassing)

	since := time.Now()
	const settle = 1500 * time.Millisecond
	if err := Wait(context.Background(), c, Options{Services: []string{name}, Node: "devconsul",
		Since: since, Settle: settle, Timeout: time.Minute}); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if waited := time.Since(since); waited < settle {
		t.Fatalf("the gate opened after %s, before the %s settle time", waited, settle)
	}
}

func TestMaintenanceAroundTheGate(t *testing.T) {
	c := client(t)
	s := newService(t, c, time.Second)
	waitStatus(t, c, s.name, api.HealthPassing)
	ctx := context.Background()

	ids, err := EnableMaintenance(ctx, c, s.name, "ct-supervise: restarting")
	if err != nil || len(ids) != 1 || ids[0] != s.name+"-1" {
		t.Fatalf("EnableMaintenance = %v, %v", ids, err)
	}
	waitStatus(t, c, s.name, api.HealthMaint)

	// The gate ignores the maintenance the caller set itself, and only that.
	err = Wait(ctx, c, Options{Services: []string{s.name}, Node: "devconsul", Settle: time.Millisecond,
		IgnoreMaintenance: ids, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("Wait ignoring our maintenance: %v", err)
	}
	err = Wait(ctx, c, Options{Services: []string{s.name}, Node: "devconsul", Settle: time.Millisecond,
		Timeout: time.Second})
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "_service_maintenance:") {
		t.Fatalf("Wait not ignoring it = %v, want ErrUnhealthy on the maintenance check", err)
	}

	if err := DisableMaintenance(ctx, c, ids); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, s.name, api.HealthPassing)

	if _, err := EnableMaintenance(ctx, c, "no-such-service", "x"); !errors.Is(err, ErrNoInstance) {
		t.Fatalf("EnableMaintenance of a missing service = %v, want ErrNoInstance", err)
	}
}

func TestLocalNode(t *testing.T) {
	c := client(t)
	if node, err := LocalNode(context.Background(), c); err != nil || node != "devconsul" {
		t.Fatalf("LocalNode = %q, %v", node, err)
	}
}
