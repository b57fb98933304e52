package state

import (
	"errors"
	"testing"
	"time"

	"ct-supervise/plugin"
)

func stateWith(names ...string) *State {
	st := NewState()
	for _, n := range names {
		d := plugin.DefaultDeclaration()
		d.Name = n
		d.Command = []string{"true"}
		st.Actions[n] = &Action{Declaration: d, Pending: true}
	}
	return st
}

func mustEnqueue(t *testing.T, st *State, names ...string) []Ticket {
	t.Helper()
	tk, err := st.Enqueue(names)
	if err != nil {
		t.Fatalf("Enqueue(%v): %v", names, err)
	}
	return tk
}

// tryAt runs one try of whatever is due at now and records out for it,
// finished at now; the test fails if nothing is due.
func tryAt(t *testing.T, st *State, now time.Time, out Outcome, b Backoff) {
	t.Helper()
	name, wait, ok := st.Next(now)
	if !ok {
		t.Fatalf("nothing due at %s (wait %s)", now.Format(time.RFC3339), wait)
	}
	if _, _, err := st.Begin(name); err != nil {
		t.Fatal(err)
	}
	out.Finished = now
	st.Finish(name, out, b)
}

func TestEnqueuePendingOnlyAndOrder(t *testing.T) {
	st := stateWith("b", "a", "c")
	st.Actions["c"].Pending = false
	tk := mustEnqueue(t, st)
	if len(tk) != 2 || tk[0].Name != "a" || tk[1].Name != "b" {
		t.Fatalf("tickets = %+v, want a then b", tk)
	}
	if st.Actions["a"].Pending || st.Actions["b"].Pending {
		t.Fatal("exec must clear the pending mark")
	}
	if st.Actions["c"].Queued() {
		t.Fatal("a declaration that is not pending must not be queued by a bare exec")
	}
	if got := st.QueueLen(); got != 2 {
		t.Fatalf("QueueLen = %d, want 2", got)
	}
	// Queued later, runs later: c queued now goes behind a and b.
	mustEnqueue(t, st, "c")
	var order []string
	for {
		name, _, ok := st.Next(time.Now())
		if !ok {
			break
		}
		if _, _, err := st.Begin(name); err != nil {
			t.Fatal(err)
		}
		st.Finish(name, Outcome{OK: true, Finished: time.Now()}, Backoff{})
		order = append(order, name)
	}
	if want := []string{"a", "b", "c"}; len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Fatalf("run order = %v, want %v", order, want)
	}
	if st.QueueLen() != 0 {
		t.Fatalf("queue not drained: %d left", st.QueueLen())
	}
}

func TestEnqueueUnknownName(t *testing.T) {
	st := stateWith("a")
	_, err := st.Enqueue([]string{"a", "nope"})
	if !errors.Is(err, ErrUnknownAction) {
		t.Fatalf("err = %v, want ErrUnknownAction", err)
	}
	if st.Actions["a"].Queued() || !st.Actions["a"].Pending {
		t.Fatal("a failed exec must change nothing")
	}
}

// The coalescing contract: requests before the run starts collapse into it;
// requests during the run give exactly one more run.
func TestCoalescing(t *testing.T) {
	cases := []struct {
		name         string
		beforeStart  int
		duringRun    int
		wantRunCount int
	}{
		{"single", 1, 0, 1},
		{"burst before start", 20, 0, 1},
		{"one during run", 1, 1, 2},
		{"burst during run", 1, 20, 2},
		{"bursts before and during", 5, 19, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := stateWith("a")
			for i := 0; i < tc.beforeStart; i++ {
				mustEnqueue(t, st, "a")
			}
			runs := 0
			first := true
			for {
				name, _, ok := st.Next(time.Now())
				if !ok {
					break
				}
				if _, _, err := st.Begin(name); err != nil {
					t.Fatal(err)
				}
				st.Acquired(name) // the command is running
				runs++
				if first {
					for i := 0; i < tc.duringRun; i++ {
						mustEnqueue(t, st, "a")
					}
					first = false
				}
				if _, _, ok := st.Next(time.Now()); ok {
					t.Fatal("a running action must not be handed out twice")
				}
				st.Finish(name, Outcome{OK: true, Finished: time.Now()}, Backoff{})
				if runs > 10 {
					t.Fatal("queue never drains")
				}
			}
			if runs != tc.wantRunCount {
				t.Fatalf("ran %d times, want %d", runs, tc.wantRunCount)
			}
		})
	}
}

func TestRetryBackoffThenFailed(t *testing.T) {
	st := stateWith("a")
	st.Actions["a"].Declaration.MaxAttempts = 3
	tk := mustEnqueue(t, st, "a")
	now := time.Unix(1000, 0)
	b := Backoff{Base: time.Second, Max: 10 * time.Second}
	for attempt := 1; attempt <= 3; attempt++ {
		tryAt(t, st, now, Outcome{ExitCode: 1, Error: "exit 1"}, b)
		if attempt < 3 {
			_, wait, ok := st.Next(now)
			if ok || wait != b.Delay(attempt) {
				t.Fatalf("after failure %d: ok=%v wait=%s, want backoff %s", attempt, ok, wait, b.Delay(attempt))
			}
			now = now.Add(wait)
		}
	}
	a := st.Actions["a"]
	if a.Queued() || a.Last == nil || !a.Last.Failed || a.Last.Seq != tk[0].Seq {
		t.Fatalf("after MaxAttempts: queued=%v last=%+v, want failed and done", a.Queued(), a.Last)
	}
	// A new request starts afresh.
	mustEnqueue(t, st, "a")
	if _, _, ok := st.Next(now); !ok || a.Attempts != 0 {
		t.Fatalf("a new exec must retry a failed action at once (attempts %d)", a.Attempts)
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: time.Second, Max: 5 * time.Second}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i, w := range want {
		if got := b.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := (Backoff{}).Delay(100); got != DefaultRetryMax {
		t.Errorf("default Delay(100) = %s, want %s", got, DefaultRetryMax)
	}
}

func TestInterruptedRunIsRunAgain(t *testing.T) {
	st := stateWith("a")
	mustEnqueue(t, st, "a")
	name, _, _ := st.Next(time.Now())
	st.Begin(name)
	// The worker dies here. Its successor finds the mark:
	if got := st.Interrupted(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("Interrupted = %v", got)
	}
	st.Abandon("a")
	if a := st.Actions["a"]; a.Running || a.Holding {
		t.Fatal("Abandon must clear the running marks")
	}
	if name, _, ok := st.Next(time.Now()); !ok || name != "a" {
		t.Fatal("an interrupted action must be run again")
	}
}

func TestTransientFailuresNeverGiveUp(t *testing.T) {
	st := stateWith("a")
	st.Actions["a"].Declaration.MaxAttempts = 2
	mustEnqueue(t, st, "a")
	now := time.Unix(1000, 0)
	for i := 0; i < 10; i++ {
		// Fails the test if a transient failure left nothing queued.
		tryAt(t, st, now, Outcome{ExitCode: 69, Transient: true}, Backoff{})
		now = st.Actions["a"].NextAttempt
	}
	if a := st.Actions["a"]; !a.Queued() || a.Last.Failed {
		t.Fatal("an action failing only because Consul is unreachable must never be given up")
	}
}

func TestAcquiredOnlyMarksARunningTry(t *testing.T) {
	st := stateWith("a")
	st.Acquired("a")
	if st.Actions["a"].Holding {
		t.Fatal("an action that is not running cannot hold its lock")
	}
	mustEnqueue(t, st, "a")
	name, _, _ := st.Next(time.Now())
	st.Begin(name)
	st.Acquired(name)
	if !st.Actions["a"].Holding {
		t.Fatal("Acquired did not mark the running try")
	}
	st.Finish(name, Outcome{OK: true, Finished: time.Now()}, Backoff{})
	if st.Actions["a"].Holding {
		t.Fatal("Finish must clear Holding")
	}
}

// A request that arrives while the try still waits for its lock joins it:
// the command has not started and will read the newest render. Once the
// lock is held, or if the declaration changed, it needs a run of its own.
func TestEnqueueWhileWaitingForTheLock(t *testing.T) {
	cases := []struct {
		name       string
		acquired   bool
		redeclared bool
		wantRerun  bool
	}{
		{"waiting, same declaration", false, false, false},
		{"command running", true, false, true},
		{"waiting, declaration changed", false, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := stateWith("a")
			st.Actions["a"].DeclaredAt = time.Unix(100, 0)
			first := mustEnqueue(t, st, "a")[0]
			name, _, _ := st.Next(time.Now())
			st.Begin(name)
			if tc.acquired {
				st.Acquired(name)
			}
			if tc.redeclared {
				st.Actions["a"].DeclaredAt = time.Unix(200, 0)
			}
			again := mustEnqueue(t, st, "a")[0]
			if rerun := again.Seq != first.Seq; rerun != tc.wantRerun {
				t.Fatalf("new request got seq %d after %d: rerun=%v, want %v", again.Seq, first.Seq, rerun, tc.wantRerun)
			}
			st.Finish(name, Outcome{OK: true, Finished: time.Now()}, Backoff{})
			if st.Actions["a"].Queued() != tc.wantRerun {
				t.Fatalf("after the run: queued=%v, want %v", st.Actions["a"].Queued(), tc.wantRerun)
			}
		})
	}
}

// Consul outages back off like any failure but never count: after many of
// them, the action still has all its attempts.
func TestTransientFailuresDoNotUseUpAttempts(t *testing.T) {
	st := stateWith("a")
	st.Actions["a"].Declaration.MaxAttempts = 2
	mustEnqueue(t, st, "a")
	now := time.Unix(1000, 0)
	try := func(out Outcome) {
		t.Helper()
		tryAt(t, st, now, out, Backoff{})
		now = st.Actions["a"].NextAttempt
	}
	for i := 0; i < 6; i++ {
		finished := now
		try(Outcome{ExitCode: 69, Transient: true})
		if a := st.Actions["a"]; !a.NextAttempt.After(finished) {
			t.Fatalf("transient failure %d: next attempt %s is not after the try finished at %s; it must back off",
				i+1, a.NextAttempt.Format(time.RFC3339), finished.Format(time.RFC3339))
		}
	}
	try(Outcome{ExitCode: 1})
	if a := st.Actions["a"]; !a.Queued() || a.Last.Failed || a.Attempts != 1 {
		t.Fatalf("after 6 outages and 1 real failure: queued=%v failed=%v attempts=%d, want still queued with 1 attempt used",
			a.Queued(), a.Last.Failed, a.Attempts)
	}
	try(Outcome{ExitCode: 1})
	if a := st.Actions["a"]; a.Queued() || !a.Last.Failed {
		t.Fatal("the second real failure must give up (MaxAttempts 2)")
	}
}

// A new request for an action that is retrying gets its own MaxAttempts:
// it must not be given up after the old request's last attempt.
func TestNewRequestDuringRetriesGetsFullAttempts(t *testing.T) {
	st := stateWith("a")
	st.Actions["a"].Declaration.MaxAttempts = 2
	mustEnqueue(t, st, "a")
	now := time.Unix(1000, 0)
	tryAt(t, st, now, Outcome{ExitCode: 1}, Backoff{})
	// In backoff after one of two attempts; a new render queues it again,
	// and it must be due at once (tryAt fails the test otherwise).
	mustEnqueue(t, st, "a")
	tryAt(t, st, now, Outcome{ExitCode: 1}, Backoff{})
	if a := st.Actions["a"]; !a.Queued() || a.Last.Failed {
		t.Fatal("the new request was given up after a single try")
	}
}

// Due lists every action that may start, first queued first, leaving out
// running ones and those in backoff: one action's wait holds up no other.
func TestDueListsEveryStartableAction(t *testing.T) {
	st := stateWith("a", "b", "c", "d")
	mustEnqueue(t, st, "c")
	mustEnqueue(t, st, "a")
	mustEnqueue(t, st, "b")
	mustEnqueue(t, st, "d")
	now := time.Unix(1000, 0)
	if _, _, err := st.Begin("a"); err != nil {
		t.Fatal(err)
	}
	st.Actions["b"].NextAttempt = now.Add(5 * time.Second)
	due, wait := st.Due(now)
	if len(due) != 2 || due[0] != "c" || due[1] != "d" {
		t.Fatalf("Due = %v, want [c d] (a runs, b backs off)", due)
	}
	if wait != 5*time.Second {
		t.Fatalf("wait = %s, want 5s until b is due", wait)
	}
}

// Once Consul answers again, actions backing off after an outage are due at
// once; those backing off after a failure of their own are not.
func TestRetryOutagesOnlyAfterOutages(t *testing.T) {
	st := stateWith("down", "broken")
	mustEnqueue(t, st, "down", "broken")
	now := time.Unix(1000, 0)
	for _, n := range []string{"down", "broken"} {
		if _, _, err := st.Begin(n); err != nil {
			t.Fatal(err)
		}
	}
	st.Finish("down", Outcome{ExitCode: 69, Transient: true, Unreachable: true, Finished: now}, Backoff{})
	st.Finish("broken", Outcome{ExitCode: 1, Finished: now}, Backoff{})
	if !st.WaitingOnOutage(now) {
		t.Fatal("WaitingOnOutage = false with an action backing off after an outage")
	}
	if got := st.RetryOutages(); len(got) != 1 || got[0] != "down" {
		t.Fatalf("RetryOutages = %v, want [down]", got)
	}
	if due, _ := st.Due(now); len(due) != 1 || due[0] != "down" {
		t.Fatalf("Due = %v, want [down]: broken still backs off", due)
	}
	if st.WaitingOnOutage(now) {
		t.Fatal("WaitingOnOutage = true after RetryOutages")
	}
}
