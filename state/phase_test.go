package state

import (
	"testing"
	"time"
)

// A failure that retrying cannot mend (a failed -check) is given up at
// once, and a new request runs the action again.
func TestNoRetryFailureWaitsForANewRequest(t *testing.T) {
	st := stateWith("web")
	mustEnqueue(t, st, "web")
	now := time.Now()
	tryAt(t, st, now, Outcome{ExitCode: 65, Error: "pre-flight check failed", NoRetry: true}, Backoff{})
	a := st.Actions["web"]
	if a.Last == nil || !a.Last.Failed || a.Queued() {
		t.Fatalf("after a no-retry failure: last %+v, queued %t", a.Last, a.Queued())
	}
	if _, _, ok := st.Next(now.Add(time.Hour)); ok {
		t.Fatal("a failed check is retried without a new request")
	}
	a.Pending = true
	mustEnqueue(t, st, "web")
	if name, _, ok := st.Next(now); !ok || name != "web" {
		t.Fatal("a new request does not run the action again")
	}
}

func TestPhaseOnlyWhileRunning(t *testing.T) {
	st := stateWith("web")
	t0 := time.Now()
	st.SetPhase("web", "gating", "check http", t0)
	if st.Actions["web"].Phase != "" {
		t.Fatal("a phase was recorded for an action that does not run")
	}
	mustEnqueue(t, st, "web")
	if _, _, err := st.Begin("web"); err != nil {
		t.Fatal(err)
	}
	st.SetPhase("web", "gating", "check http", t0)
	st.SetPhase("web", "gating", "check tcp", t0.Add(time.Second))
	a := st.Actions["web"]
	if a.Phase != "gating" || a.PhaseDetail != "check tcp" || !a.PhaseSince.Equal(t0) {
		t.Fatalf("phase %q %q since %s", a.Phase, a.PhaseDetail, a.PhaseSince)
	}
	st.Finish("web", Outcome{OK: true, Finished: t0}, Backoff{})
	if a.Phase != "" || a.PhaseDetail != "" || !a.PhaseSince.IsZero() {
		t.Fatal("the phase outlived the run")
	}
}
