package fleet

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

var agent *devconsul.Agent

func TestMain(m *testing.M) {
	os.Exit(devconsul.RunPackage(m, &agent))
}

// newFleet returns the fleet of a prefix unique to the test.
func newFleet(t *testing.T) (*Fleet, *api.Client) {
	t.Helper()
	c := devconsul.SharedClient(t, agent)
	prefix := "test/" + strings.ReplaceAll(t.Name(), "/", "-")
	t.Cleanup(func() { _, _ = c.KV().DeleteTree(prefix, nil) })
	return New(c, prefix), c
}

func session(t *testing.T, c *api.Client) string {
	t.Helper()
	id, _, err := c.Session().Create(&api.SessionEntry{TTL: "30s", Behavior: api.SessionBehaviorRelease}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Session().Destroy(id, nil) })
	return id
}

func TestHaltFirstFailureStandsUntilItsNodeRecovers(t *testing.T) {
	f, _ := newFleet(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	if err := f.SetHalt(ctx, Halt{Node: "web-2", Reason: `check "http" critical`, At: at}); err != nil {
		t.Fatal(err)
	}
	// A second node failing does not overwrite the first halt.
	if err := f.SetHalt(ctx, Halt{Node: "web-3", Reason: "later", At: at.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	h, err := f.Halt(ctx)
	if err != nil || h == nil || h.Node != "web-2" || !h.At.Equal(at) {
		t.Fatalf("Halt = %+v, %v; want web-2's", h, err)
	}
	// Only the node that set it lifts it by succeeding.
	if lifted, err := f.ClearHalt(ctx, "web-3"); err != nil || lifted {
		t.Fatalf("ClearHalt(web-3) = %v, %v; want no lift", lifted, err)
	}
	if lifted, err := f.ClearHalt(ctx, "web-2"); err != nil || !lifted {
		t.Fatalf("ClearHalt(web-2) = %v, %v; want lifted", lifted, err)
	}
	if h, err := f.Halt(ctx); err != nil || h != nil {
		t.Fatalf("Halt after clear = %+v, %v", h, err)
	}
}

func TestPauseOwnAndGlobal(t *testing.T) {
	f, c := newFleet(t)
	ctx := context.Background()
	t.Cleanup(func() { _, _ = c.KV().Delete(GlobalPauseKey, nil) })
	if err := f.SetPause(ctx, Pause{By: "alice", Reason: "incident", Global: true}); err != nil {
		t.Fatal(err)
	}
	p, err := f.Pause(ctx)
	if err != nil || p == nil || !p.Global || p.By != "alice" {
		t.Fatalf("Pause = %+v, %v; want the global one", p, err)
	}
	if ok, err := f.ClearPause(ctx, false); err != nil || ok {
		t.Fatalf("ClearPause(own) = %v, %v; the own switch was not set", ok, err)
	}
	if ok, err := f.ClearPause(ctx, true); err != nil || !ok {
		t.Fatalf("ClearPause(global) = %v, %v", ok, err)
	}
	if p, err := f.Pause(ctx); err != nil || p != nil {
		t.Fatalf("Pause after clear = %+v, %v", p, err)
	}
}

// WaitClearFor waits while a halt or a pause stands and returns promptly once
// both are gone.
func TestWaitClearFor(t *testing.T) {
	f, _ := newFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f.SetHalt(ctx, Halt{Node: "web-2", Reason: "boom"}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetPause(ctx, Pause{By: "bob", Reason: "hold on"}); err != nil {
		t.Fatal(err)
	}
	reasons := make(chan string, 10)
	done := make(chan error, 1)
	go func() { done <- f.WaitClearFor(ctx, "", func(why string) { reasons <- why }) }()

	if why := <-reasons; !strings.Contains(why, "rollout halted by web-2: boom") {
		t.Fatalf("first reason %q, want the halt", why)
	}
	if _, err := f.ClearHalt(ctx, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case why := <-reasons:
		if !strings.Contains(why, "rollout paused by bob: hold on") {
			t.Fatalf("second reason %q, want the pause", why)
		}
	case err := <-done:
		t.Fatalf("WaitClearFor returned %v while still paused", err)
	case <-time.After(30 * time.Second):
		t.Fatal("WaitClearFor did not notice the halt going")
	}
	if _, err := f.ClearPause(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitClearFor = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitClearFor did not return once clear")
	}
}

func TestRecordsAndRolloutView(t *testing.T) {
	f, c := newFleet(t)
	ctx := context.Background()
	live, dead := session(t, c), session(t, c)
	now := time.Now().UTC()
	for _, r := range []struct {
		sess string
		rec  Record
	}{
		{live, Record{Node: "web-1", Phase: PhaseIdle, Version: "v42", LastResult: "ok", OK: true, Updated: now}},
		{live, Record{Node: "web-2", Phase: PhaseIdle, Version: "v42", LastResult: "ok", OK: true, Updated: now}},
		{live, Record{Node: "web-3", Phase: "gating", Version: "v42", Updated: now}},
		{live, Record{Node: "web-4", Phase: "waiting", Version: "v42", Updated: now}},
		{dead, Record{Node: "web-5", Phase: PhaseRunning, Version: "v41", Updated: now}},
	} {
		if err := f.Publish(ctx, r.sess, r.rec); err != nil {
			t.Fatal(err)
		}
	}
	// web-5's worker dies: its record stays, marked gone.
	if _, err := c.Session().Destroy(dead, nil); err != nil {
		t.Fatal(err)
	}
	r, err := f.Rollout(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Nodes) != 5 || !r.Nodes[4].Gone || r.Nodes[0].Gone || r.Nodes[0].Version != "v42" {
		t.Fatalf("nodes = %+v", r.Nodes)
	}
	want := "5 nodes: 2 done at v42, 1 running (web-3), 1 waiting, 1 gone (web-5); halted: no; paused: no"
	if got := r.Summary(); got != want {
		t.Fatalf("Summary =\n  %s\nwant\n  %s", got, want)
	}
	// Another session cannot publish over a live node's record.
	other := session(t, c)
	if err := f.Publish(ctx, other, Record{Node: "web-1", Phase: PhaseIdle}); err == nil {
		t.Fatal("publishing over a record held by another live session succeeded")
	}
}

func TestSummaryFailedAndHalted(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	r := Rollout{
		Nodes: []Record{
			{Node: "a", Phase: PhaseIdle, OK: true, LastResult: "ok"},
			{Node: "b", Phase: PhaseFailed, LastResult: "exit 1"},
			{Node: "c", Phase: "halted"},
		},
		Halt: &Halt{Node: "b", Reason: "exit 1", At: at},
	}
	want := "3 nodes: 1 done, 1 waiting, 1 failed (b); halted: by b at 2026-11-27T10:00:00Z: exit 1; paused: no"
	if got := r.Summary(); got != want {
		t.Fatalf("Summary =\n  %s\nwant\n  %s", got, want)
	}
	if got := (Rollout{}).Summary(); got != "0 nodes: no node has published yet; halted: no; paused: no" {
		t.Fatalf("empty Summary = %q", got)
	}
}

// A record left by a worker that exited after its work is not gone; one
// left mid-action is.
func TestRestingRecordIsNotGone(t *testing.T) {
	f, c := newFleet(t)
	ctx := context.Background()
	idle, busy := session(t, c), session(t, c)
	if err := f.Publish(ctx, idle, Record{Node: "web-1", Phase: PhaseIdle, OK: true, LastResult: "ok"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Publish(ctx, busy, Record{Node: "web-2", Phase: "gating"}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{idle, busy} {
		if _, err := c.Session().Destroy(s, nil); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := f.Records(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Gone || !recs[1].Gone {
		t.Fatalf("records = %+v, want web-1 resting and web-2 gone", recs)
	}
}

// Switches reads what Halt and Pause read, in one round trip: the halt,
// and the action's own pause before the global one.
func TestSwitches(t *testing.T) {
	f, c := newFleet(t)
	ctx := context.Background()
	t.Cleanup(func() { _, _ = c.KV().Delete(GlobalPauseKey, nil) })
	check := func(what string, wantHalt bool, wantBy string, wantGlobal bool) {
		t.Helper()
		h, p, err := f.Switches(ctx)
		switch {
		case err != nil:
			t.Fatalf("%s: %v", what, err)
		case (h != nil) != wantHalt:
			t.Fatalf("%s: halt %+v, want one: %v", what, h, wantHalt)
		case wantBy == "" && p != nil, wantBy != "" && (p == nil || p.By != wantBy || p.Global != wantGlobal):
			t.Fatalf("%s: pause %+v, want by %q global %v", what, p, wantBy, wantGlobal)
		}
	}
	check("nothing set", false, "", false)
	if err := f.SetHalt(ctx, Halt{Node: "web-2", Reason: "exit 1"}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetPause(ctx, Pause{By: "alice", Global: true}); err != nil {
		t.Fatal(err)
	}
	check("halt and global pause", true, "alice", true)
	if err := f.SetPause(ctx, Pause{By: "bob"}); err != nil {
		t.Fatal(err)
	}
	check("own pause too", true, "bob", false)
}
