package health

import (
	"testing"
	"time"
)

// The settle rule on its own, with made-up answers and times.
func TestSettleRule(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	snap := func(status, interval string) map[string]snapshot {
		var inst instance
		inst.Service.ID = "web-1"
		inst.Checks = []check{
			{Node: "n1", CheckID: "serfHealth", Name: "Serf Health Status", Status: "passing"},
			{Node: "n1", CheckID: "web-http", Name: "web", Status: status, Type: "http", Interval: interval, Output: "HTTP 503"},
		}
		return map[string]snapshot{"web": {service: "web", instances: []instance{inst}}}
	}
	type step struct {
		at       float64
		status   string
		wantOpen bool
		wantNext float64 // seconds after t0; 0: none
	}
	tests := []struct {
		name   string
		settle time.Duration
		steps  []step
	}{
		{"passing from the start settles an interval and a half after the command", 0, []step{
			{0.1, "passing", false, 3},
			{2.9, "passing", false, 3},
			{3.0, "passing", true, 0},
		}},
		{"a failure restarts the clock when it passes again", 0, []step{
			{0.1, "passing", false, 3},
			{1.0, "critical", false, 0},
			{3.0, "passing", false, 6},
			{5.9, "passing", false, 6},
			{6.0, "passing", true, 0},
		}},
		{"warning is not passing", 0, []step{
			{0.1, "warning", false, 0},
			{9.0, "warning", false, 0},
		}},
		{"settle overrides the interval", 500 * time.Millisecond, []step{
			{0.1, "passing", false, 0.5},
			{0.5, "passing", true, 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGate(Options{Services: []string{"web"}, Node: "n1", Since: t0, Settle: tt.settle})
			for _, s := range tt.steps {
				open, next := g.evaluate(snap(s.status, "2s"), at(s.at))
				if open != s.wantOpen {
					t.Fatalf("at +%.1fs (%s): open = %v, want %v (waiting on %s)", s.at, s.status, open, s.wantOpen, g.waitingOn)
				}
				var wantNext time.Time
				if s.wantNext != 0 {
					wantNext = at(s.wantNext)
				}
				if !next.Equal(wantNext) {
					t.Fatalf("at +%.1fs: next = %v, want %v", s.at, next, wantNext)
				}
			}
		})
	}
}

func TestSettleDefaults(t *testing.T) {
	g := newGate(Options{Services: []string{"web"}, Node: "n1"})
	for _, tt := range []struct {
		c    check
		want time.Duration
	}{
		{check{Type: "http", Interval: "3s"}, 4500 * time.Millisecond},
		{check{Type: "http", Interval: "1s"}, 2 * time.Second},
		{check{Type: "ttl"}, DefaultTTLSettle},
		{check{CheckID: "serfHealth"}, 0},
		{check{Type: "tcp", Interval: "bogus"}, 0},
	} {
		if got := g.settle(tt.c); got != tt.want {
			t.Errorf("settle(%+v) = %s, want %s", tt.c, got, tt.want)
		}
	}
}
