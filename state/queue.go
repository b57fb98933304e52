package state

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"ct-supervise/plugin"
)

// Retry backoff defaults for failed tries (non-zero exit, lock not acquired
// within -try, lock lost): the wait doubles from DefaultRetryBase up to
// DefaultRetryMax.
const (
	DefaultRetryBase = 2 * time.Second
	DefaultRetryMax  = 2 * time.Minute
)

// ErrUnknownAction is returned when `exec NAME` names an action no template
// has declared.
var ErrUnknownAction = errors.New("unknown action")

// Ticket identifies one queued request: the action and the queue sequence
// number its run must reach. `exec -wait` waits until Done >= Seq.
type Ticket struct {
	Name string
	Seq  uint64
}

// Backoff is the retry policy for failed tries. Zero fields mean the
// defaults above.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
}

// Delay returns the wait before try number attempt+1, attempt >= 1 being the
// number of failures so far.
func (b Backoff) Delay(attempt int) time.Duration {
	base, max := b.Base, b.Max
	if base <= 0 {
		base = DefaultRetryBase
	}
	if max <= 0 {
		max = DefaultRetryMax
	}
	d := base
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// NewState returns an empty state of the current version.
func NewState() *State {
	return &State{
		Version: StateVersion,
		Actions: map[string]*Action{},
		Errors:  map[string]DeclError{},
	}
}

// Queued reports whether the action waits for (another) run.
func (a *Action) Queued() bool { return a.Seq > a.Done }

// Enqueue queues the named actions, or every pending one when names is
// empty, and clears their Pending mark. It coalesces: an action already
// queued and not yet started, or still waiting for its lock with the same
// declaration, keeps its place and runs once; an action queued while its
// command runs gets a new place and runs once more afterwards, with the
// declaration current at that time.
func (st *State) Enqueue(names []string) ([]Ticket, error) {
	if len(names) == 0 {
		for name, a := range st.Actions {
			if a.Pending {
				names = append(names, name)
			}
		}
		sort.Strings(names)
	}
	for _, name := range names {
		if _, ok := st.Actions[name]; !ok {
			return nil, fmt.Errorf("%w %q: no template has registered it in this state directory", ErrUnknownAction, name)
		}
	}
	tickets := make([]Ticket, 0, len(names))
	for _, name := range names {
		a := st.Actions[name]
		a.Pending = false
		switch {
		case a.Queued() && (!a.Running || a.Seq > a.RunSeq || a.waitingUnchanged()):
			// Not started yet (or already due to run again): it will run
			// with the newest declaration and read the newest rendered
			// files anyway. A try waiting out a backoff is retried now,
			// since the new render may have fixed what failed, and the
			// new request gets its full MaxAttempts.
			a.NextAttempt = time.Time{}
			a.Attempts = 0
		default:
			st.Seq++
			a.Seq = st.Seq
			if !a.Running {
				a.Attempts, a.Failures = 0, 0
				a.NextAttempt = time.Time{}
			}
		}
		tickets = append(tickets, Ticket{Name: name, Seq: a.Seq})
	}
	return tickets, nil
}

// waitingUnchanged reports whether the running try is still waiting for its
// lock with the declaration that is current now. Its command has not started,
// so it will see what the latest render wrote: a new request can join it
// rather than cost the fleet one more rolling restart. Once the lock is held
// (the command may be running) or the declaration has changed, a new request
// needs a run of its own.
func (a *Action) waitingUnchanged() bool {
	return a.Running && !a.Holding && a.DeclaredAt.Equal(a.RunDeclaredAt)
}

// QueueLen is the number of actions waiting for a run, running ones
// included.
func (st *State) QueueLen() int {
	n := 0
	for _, a := range st.Actions {
		if a.Queued() {
			n++
		}
	}
	return n
}

// Next picks the action to run now: among queued actions that are not
// running and whose backoff has passed, the one queued first. When none is
// due but some wait out a backoff, wait says how long until the earliest.
func (st *State) Next(now time.Time) (name string, wait time.Duration, found bool) {
	due, wait := st.Due(now)
	if len(due) == 0 {
		return "", wait, false
	}
	return due[0], 0, true
}

// Due lists the actions that may start now, first queued first: queued,
// not running, backoff passed. Each action keeps its own place; actions do
// not wait for each other. When some wait out a backoff, wait says how long
// until the earliest of them is due.
func (st *State) Due(now time.Time) (names []string, wait time.Duration) {
	for n, a := range st.Actions {
		if !a.Queued() || a.Running {
			continue
		}
		if a.NextAttempt.After(now) {
			if w := a.NextAttempt.Sub(now); wait == 0 || w < wait {
				wait = w
			}
			continue
		}
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		a, b := st.Actions[names[i]], st.Actions[names[j]]
		if a.Seq != b.Seq {
			return a.Seq < b.Seq
		}
		return names[i] < names[j]
	})
	return names, wait
}

// WaitingOnOutage reports whether an action waits out a backoff after a try
// that could not reach Consul: the worker then watches for Consul to come
// back rather than sleep out the backoff.
func (st *State) WaitingOnOutage(now time.Time) bool {
	for _, a := range st.Actions {
		if a.Queued() && !a.Running && a.NextAttempt.After(now) && a.Last != nil && a.Last.Unreachable {
			return true
		}
	}
	return false
}

// RetryOutages makes every action that waits out a backoff after a try that
// could not reach Consul due now. The worker calls it once Consul answers
// again, so that a reload starts within seconds of the outage's end.
func (st *State) RetryOutages() (names []string) {
	for n, a := range st.Actions {
		if a.Queued() && !a.Running && !a.NextAttempt.IsZero() && a.Last != nil && a.Last.Unreachable {
			a.NextAttempt = time.Time{}
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Begin marks the action running and returns the declaration to run and
// the queue sequence number the run covers.
func (st *State) Begin(name string) (plugin.Declaration, uint64, error) {
	a, ok := st.Actions[name]
	if !ok {
		return plugin.Declaration{}, 0, fmt.Errorf("%w %q", ErrUnknownAction, name)
	}
	a.Running = true
	a.RunSeq = a.Seq
	a.RunDeclaredAt = a.DeclaredAt
	return a.Declaration, a.RunSeq, nil
}

// Abandon clears the running mark without recording a try, leaving the
// action queued: used when the worker stops mid-run (the next worker runs
// it again) and at start-up for runs a dead worker left behind.
func (st *State) Abandon(name string) {
	if a, ok := st.Actions[name]; ok {
		a.endRun()
	}
}

// endRun clears everything that describes a run under way.
func (a *Action) endRun() {
	a.Running, a.Holding = false, false
	a.Session, a.PID, a.PIDStart = "", 0, 0
	a.Phase, a.PhaseDetail, a.PhaseSince = "", "", time.Time{}
}

// SetPhase records the step the running try of the action is in.
func (st *State) SetPhase(name, phase, detail string, now time.Time) {
	if a, ok := st.Actions[name]; ok && a.Running {
		if a.Phase != phase {
			a.PhaseSince = now
		}
		a.Phase, a.PhaseDetail = phase, detail
	}
}

// Acquired records that the running try of the action holds its lock.
func (st *State) Acquired(name string) {
	if a, ok := st.Actions[name]; ok && a.Running {
		a.Holding = true
	}
}

// RecordSession records the Consul session of the running try, so that the
// next worker can give back its lock at once if this one dies.
func (st *State) RecordSession(name, session string) {
	if a, ok := st.Actions[name]; ok && a.Running {
		a.Session = session
	}
}

// RecordChild records the running try's command: its pid (also its process
// group) and the process's start time, which tells it from a later process
// that reuses the pid.
func (st *State) RecordChild(name string, pid int, start uint64) {
	if a, ok := st.Actions[name]; ok && a.Running {
		a.PID, a.PIDStart = pid, start
	}
}

// Interrupted returns, sorted, the actions marked running. Called by a
// worker that has just taken the worker lock, these are runs its
// predecessor did not finish.
func (st *State) Interrupted() []string {
	var names []string
	for n, a := range st.Actions {
		if a.Running {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// Finish records the outcome of a run started with Begin. A success covers
// the run's sequence number. A failure is retried after a backoff, until
// MaxAttempts failures have counted: then it is marked failed and the
// sequence number counts as done so the queue moves on; the failure stays
// visible in Last. Transient failures (Consul unreachable, a -n the fleet
// is changing) back off too but never count. A newer request that arrived during the failed run
// starts afresh with no backoff.
func (st *State) Finish(name string, out Outcome, b Backoff) {
	a, ok := st.Actions[name]
	if !ok {
		return
	}
	a.endRun()
	out.Seq = a.RunSeq
	switch {
	case out.OK:
		a.Done = max(a.Done, a.RunSeq)
		a.Attempts, a.Failures = 0, 0
		a.NextAttempt = time.Time{}
	case a.Seq > a.RunSeq:
		a.Attempts, a.Failures = 0, 0
		a.NextAttempt = time.Time{}
	case out.NoRetry:
		out.Failed = true
		a.Done = max(a.Done, a.RunSeq)
		a.Attempts, a.Failures = 0, 0
		a.NextAttempt = time.Time{}
	default:
		a.Failures++
		if !out.Transient {
			a.Attempts++
		}
		limit := a.Declaration.MaxAttempts
		if limit < 1 {
			limit = plugin.DefaultMaxAttempts
		}
		if a.Attempts >= limit {
			out.Failed = true
			a.Done = max(a.Done, a.RunSeq)
			a.Attempts, a.Failures = 0, 0
			a.NextAttempt = time.Time{}
		} else {
			a.NextAttempt = out.Finished.Add(b.Delay(a.Failures))
		}
	}
	a.Last = &out
}
