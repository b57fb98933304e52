package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// gateRounds is how many hand-offs the gate scenario measures: each costs
// about a second, so a few suffice to show the order of magnitude.
const gateRounds = 5

// gateService is the service the gate scenario waits on, with a TTL check
// the benchmark sets itself, so that it knows when the gate opens.
const gateService = "bench-gate"

// benchGate measures the health gate's hand-off: a holder whose command
// has ended waits with -wait-healthy for a TTL check the benchmark turns
// passing; the gap is from that instant to the next waiting node's command
// start (the gate's blocking query waking, the release, the next
// acquisition). -health-settle=1ms takes the settle rule out of the figure.
func (b *bench) benchGate(res *Results) error {
	node, err := b.client.Agent().NodeName()
	if err != nil {
		return err
	}
	check := &api.AgentServiceCheck{CheckID: gateService + "-ttl", TTL: "10m", Status: api.HealthCritical}
	if err := b.client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: gateService, Name: gateService, Check: check}); err != nil {
		return err
	}
	defer func() { _ = b.client.Agent().ServiceDeregister(gateService) }()
	b.logf("gate hand-off: %d rounds", gateRounds)
	var gaps []float64
	for r := range gateRounds {
		gap, err := b.gateRound(node, r)
		if err != nil {
			return fmt.Errorf("round %d: %w", r, err)
		}
		gaps = append(gaps, gap)
	}
	s := summarize(gaps, "ms")
	met := s.Max <= 1000
	res.add(Row{
		ID: "3b", Measure: "gate hand-off (health check passes → next node's command start), n=1, -wait-healthy",
		N: strconv.Itoa(s.N), Value: &s, Target: "≤ 1 s (stretch ≤ 100 ms)", Met: &met,
		Note: "blocking query on the node's checks, then release and acquire",
	})
	return nil
}

// gateRound is one hand-off; it returns the gap in milliseconds.
func (b *bench) gateRound(node string, r int) (float64, error) {
	if err := b.client.Agent().UpdateTTL(gateService+"-ttl", "down", api.HealthCritical); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp(b.tmp, "gate-")
	if err != nil {
		return 0, err
	}
	ledger := filepath.Join(dir, "ledger")
	prefix := fmt.Sprintf("bench/gate/r%02d", r)
	first := b.gateCmd(dir, "-node="+node, "-wait-healthy="+gateService, "-health-settle=1ms", "-health-timeout=1m",
		"-prefix="+prefix, b.stamp, ledger, "first", "0s")
	if err := b.procs.start(first); err != nil {
		return 0, err
	}
	defer func() { _ = b.procs.wait(first) }()
	if err := waitLedger(ledger, "first E", 30*time.Second); err != nil {
		return 0, err
	}
	second := b.gateCmd(dir, "-prefix="+prefix, b.stamp, ledger, "second", "0s")
	if err := b.procs.start(second); err != nil {
		return 0, err
	}
	defer func() { _ = b.procs.wait(second) }()
	time.Sleep(500 * time.Millisecond) // the second node waits, the first gates
	opened := time.Now()
	if err := b.client.Agent().UpdateTTL(gateService+"-ttl", "up", api.HealthPassing); err != nil {
		return 0, err
	}
	if err := waitLedger(ledger, "second S", 30*time.Second); err != nil {
		return 0, err
	}
	started, err := ledgerTime(ledger, "second S")
	if err != nil {
		return 0, err
	}
	return float64(started.Sub(opened).Microseconds()) / 1000, nil
}

func (b *bench) gateCmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(b.ctx, b.cts, append([]string{"run", "-shell=false", "-on-failure=continue"}, args...)...)
	cmd.Env = b.env("CT_SUPERVISE_STATE_DIR=" + dir)
	return cmd
}

// waitLedger waits until the ledger has a line starting with prefix.
func waitLedger(path, prefix string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := ledgerTime(path, prefix); err == nil {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("no %q in %s within %s", prefix, path, timeout)
}

// ledgerTime is the time on the ledger line that starts with prefix.
func ledgerTime(path, prefix string) (time.Time, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, prefix+" "); ok {
			ns, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				return time.Time{}, err
			}
			return time.Unix(0, ns), nil
		}
	}
	return time.Time{}, fmt.Errorf("no %q in %s", prefix, path)
}
