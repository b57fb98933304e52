package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/shell"
)

// A rolling restart with -n 1 over four nodes whose restart returns at once
// and leaves the service down for a while: with -wait-healthy no two
// services are ever down at once; without it they are, which shows that
// the ledger can catch an overlap.
func TestRollingRestartWaitHealthy(t *testing.T) {
	agentName := agentNode(t)
	var nodes []*node
	var services []*testService
	for i := 1; i <= 4; i++ {
		nodes = append(nodes, newNode(t, fmt.Sprintf("web-%d", i)))
		services = append(services, newTestService(t, fmt.Sprintf("rr-web-%d", i), time.Second, false, ""))
	}
	for _, s := range services {
		s.waitPassing()
	}
	start := time.Now()
	results := runAll(nodes, func(i int) []string {
		// Every node shares the package agent: each waits on its own service.
		return []string{"run", "-n=1", "-prefix=ct-supervise/rr-gated", "-node=" + agentName,
			"-wait-healthy=" + services[i].name, "-health-timeout=60s", services[i].restartCommand()}
	})
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("node %d: exit %d: %s", i+1, r.code, r.stderr)
		}
	}
	if peak := maxDown(services); peak != 1 {
		t.Fatalf("with -wait-healthy, %d services were down at once:\n%s", peak, downTimeline(services))
	}
	t.Logf("gated rollout over 4 nodes took %s", time.Since(start).Round(time.Millisecond))

	for _, s := range services {
		waitFor(t, 30*time.Second, s.name+" up again", func() bool {
			last, _ := s.lastRestart()
			return time.Since(last) > restartDownFor
		})
		s.waitPassing()
	}
	ungated := make([]*testService, len(services))
	for i, s := range services {
		c := *s
		c.restarts = filepath.Join(t.TempDir(), "restarts")
		ungated[i] = &c
	}
	results = runAll(nodes, func(i int) []string {
		return []string{"run", "-n=1", "-prefix=ct-supervise/rr-ungated", "-node=" + agentName, ungated[i].restartCommand()}
	})
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("node %d without the gate: exit %d: %s", i+1, r.code, r.stderr)
		}
	}
	if peak := maxDown(ungated); peak < 2 {
		t.Fatalf("without -wait-healthy the restarts did not overlap (peak %d): the test cannot tell:\n%s", peak, downTimeline(ungated))
	}
}

// A check that passed before the command proves nothing about the
// restarted service: the gate waits for a result from after it.
func TestGateIgnoresStalePassingResult(t *testing.T) {
	agentName := agentNode(t)
	s := newTestService(t, "stale-web", 2*time.Second, false, "")
	s.waitPassing()
	n := newNode(t, "web-1")
	r := n.run("run", "-node="+agentName, "-wait-healthy="+s.name, "-health-timeout=60s", "-prefix=ct-supervise/stale", s.restartCommand())
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	last, ok := s.lastRestart()
	if !ok {
		t.Fatal("the restart did not run")
	}
	// The stale result said "passing" all along: had the gate believed it,
	// ct-supervise would have returned while the service was still down.
	if time.Now().Before(last.Add(restartDownFor)) {
		t.Fatalf("the gate opened at %s, before the service came back at %s", time.Now().Format("15:04:05.000"),
			last.Add(restartDownFor).Format("15:04:05.000"))
	}
}

// A service that stays unhealthy fails the action with its check's output,
// exit 79, and the lock is given back.
func TestGateTimeoutFailsWithTheCheckOutput(t *testing.T) {
	agentName := agentNode(t)
	s := newTestService(t, "broken-web", time.Second, true, "database connection refused")
	n := newNode(t, "web-1")
	r := n.run("run", "-node="+agentName, "-wait-healthy="+s.name, "-health-timeout=3s", "-on-failure=continue",
		"-name=gate-timeout", "true")
	if r.code != 79 {
		t.Fatalf("exit %d, want 79 (not healthy): %s", r.code, r.stderr)
	}
	for _, want := range []string{`"http"`, "database connection refused", "not healthy"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the error lacks %q: %s", want, r.stderr)
		}
	}
	if left := lockSessions(t, "gate-timeout"); len(left) > 0 {
		t.Fatalf("sessions left after the timeout: %v", left)
	}
	// The lock is free: the next run gets it at once.
	if r := n.run("run", "-name=gate-timeout", "-try=5s", "-on-failure=continue", "true"); r.code != 0 {
		t.Fatalf("the next run did not get the lock: exit %d: %s", r.code, r.stderr)
	}
}

// -check runs before the lock: a failing check takes no lock and runs
// nothing; a passing one lets the command run.
func TestCheckBeforeTheLock(t *testing.T) {
	n := newNode(t, "web-1")
	marker := filepath.Join(t.TempDir(), "ran")
	var r result
	seen := sessionsDuring(t, "checked", func() {
		r = n.run("run", "-name=checked", "-check=sleep 1; echo 'nginx: [emerg] unexpected }' >&2; false", "touch "+marker)
	})
	if r.code != 65 {
		t.Fatalf("exit %d, want 65 (check failed): %s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "unexpected }") {
		t.Errorf("the error lacks the check's output: %s", r.stderr)
	}
	if fileExists(marker) {
		t.Fatal("the command ran after its check failed")
	}
	if seen {
		t.Fatal("a session was made although the check failed")
	}
	// The failure halted the rollout; lift it as an operator would.
	n.mustRun("resume", "checked")

	seen = sessionsDuring(t, "checked", func() {
		r = n.run("run", "-name=checked", "-check=true", "sleep 1; touch "+marker)
	})
	if r.code != 0 || !fileExists(marker) {
		t.Fatalf("with a passing check: exit %d, ran %t: %s", r.code, fileExists(marker), r.stderr)
	}
	if !seen {
		t.Fatal("no session seen during a run under the lock: the check above proves nothing")
	}
}

// -maint puts the service into maintenance around the command; it is
// lifted on success and stays on failure.
func TestMaintenanceAroundTheCommand(t *testing.T) {
	client := consulClient(t)
	agentName := agentNode(t)
	s := newTestService(t, "maint-web", time.Second, false, "")
	n := newNode(t, "web-1")
	seen := filepath.Join(t.TempDir(), "seen")
	maintCheck := "_service_maintenance:" + s.id
	inMaint := func() bool {
		checks, err := client.Agent().Checks()
		if err != nil {
			t.Fatal(err)
		}
		c, ok := checks[maintCheck]
		return ok && c.Status == api.HealthCritical
	}
	// The command records what Consul says while it runs.
	cmd := "consul maint > " + shell.Quote(seen)
	r := n.run("run", "-node="+agentName, "-maint="+s.name, "-drain=500ms", "-name=maint", cmd)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if got := readFile(t, seen); !strings.Contains(got, s.id) {
		t.Fatalf("while the command ran, consul maint showed:\n%s\nwant %s in maintenance", got, s.id)
	}
	if inMaint() {
		t.Fatal("maintenance still on after success")
	}

	r = n.run("run", "-node="+agentName, "-maint="+s.name, "-on-failure=continue", "-name=maint", cmd+"; exit 3")
	if r.code != 3 {
		t.Fatalf("exit %d, want the command's 3: %s", r.code, r.stderr)
	}
	if !inMaint() {
		t.Fatal("maintenance lifted after a failure: traffic would come back to a broken service")
	}
	if !strings.Contains(r.stderr, "stays in maintenance") || !strings.Contains(r.stderr, "consul maint -disable") {
		t.Errorf("the error does not say the service stays in maintenance: %s", r.stderr)
	}
	if err := client.Agent().DisableServiceMaintenance(s.id); err != nil {
		t.Fatal(err)
	}
}

// -hold keeps the lock after success: the next node starts no sooner.
func TestHoldKeepsTheLock(t *testing.T) {
	act := ledgerAction(t, "0.2")
	nodes := []*node{newNode(t, "web-1"), newNode(t, "web-2")}
	results := runAll(nodes, func(int) []string {
		return []string{"run", "-name=held-hold", "-hold=3s", act.command}
	})
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("node %d: exit %d: %s", i+1, r.code, r.stderr)
		}
	}
	runs, err := parseLedger(lines(act.ledger))
	if err != nil || len(runs) != 2 {
		t.Fatalf("ledger: %v (%v)", runs, err)
	}
	if gap := time.Duration(runs[1].start - runs[0].end); gap < 3*time.Second {
		t.Fatalf("the second node started %s after the first ended, want at least the 3s hold:\n%s", gap, timeline(runs))
	}
}
