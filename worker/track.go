package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	actionpkg "ct-supervise/action"
	"ct-supervise/exitcode"
	"ct-supervise/fleet"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
)

// begunRun is an action the scheduler marked running, with the declaration
// and queue sequence number its run covers.
type begunRun struct {
	name string
	decl plugin.Declaration
	seq  uint64
}

// track is one action's run under way: its lock wait, its command and the
// recording of its outcome.
type track struct {
	name   string
	log    hclog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	holding  bool // the lock is held: the command runs or is about to
	stopping bool // stop was called
	grace    *time.Timer
}

// start runs b on a track of its own.
func (w *worker) start(b begunRun) {
	ctx, cancel := context.WithCancel(context.Background())
	t := &track{name: b.name, log: w.log.Named(b.name), ctx: ctx, cancel: cancel}
	w.tracks[b.name] = t
	go func() {
		err := w.run(t, b)
		t.release()
		w.ended <- trackEnd{name: b.name, err: err}
	}()
}

// stop ends the track: a wait for the lock is given up at once; a command
// that runs gets grace to finish by itself, then the run is cancelled (the
// command is terminated and the lock released).
func (t *track) stop(grace time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return
	}
	t.stopping = true
	if !t.holding || grace <= 0 {
		t.cancel()
		return
	}
	t.log.Info("waiting for the running command to finish before stopping it", "grace", grace)
	t.grace = time.AfterFunc(grace, func() {
		t.log.Warn("the command did not finish within the stop grace; stopping it", "grace", grace)
		t.cancel()
	})
}

// acquired marks the lock held. A track told to stop before that gives up
// rather than start a command it would have to stop.
func (t *track) acquired() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.holding = true
	if t.stopping {
		t.cancel()
	}
}

// release frees the track's timer and context.
func (t *track) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.grace != nil {
		t.grace.Stop()
	}
	t.cancel()
}

// note records a small fact about the running try in the state file. Only
// status and a successor worker read these, so a failure is logged and the
// run goes on.
func (w *worker) note(t *track, what string, fn func(*state.State)) {
	err := w.opts.Store.Update(func(st *state.State) error {
		fn(st)
		return nil
	})
	if err != nil {
		t.log.Warn("could not record "+what, "error", err)
	}
}

// run runs one action and records its outcome. An error means the outcome
// could not be recorded: the action stays marked running on disk, so the
// next worker runs it again (a repeat is better than a lost reload).
func (w *worker) run(t *track, b begunRun) error {
	opts := b.decl.ActionOptions()
	opts.Logger = t.log
	lopts := &opts.Lock
	lopts.Stdout, lopts.Stderr = w.opts.Output, w.opts.Output
	lopts.Logger = t.log
	lopts.OnSession = func(id string) {
		w.note(t, "the session", func(st *state.State) { st.RecordSession(b.name, id) })
	}
	lopts.OnAcquired = func() {
		t.acquired()
		w.note(t, "that the lock is held", func(st *state.State) { st.Acquired(b.name) })
	}
	lopts.OnStarted = func(pid int) {
		start, _ := processStartTime(pid) // zero: never stopped by a successor
		w.note(t, "the command's pid", func(st *state.State) { st.RecordChild(b.name, pid, start) })
	}
	records := newFeed(w.opts.Runner, b.decl.Prefix, w.lastRecord(b), t.log)
	opts.OnPhase = func(phase, detail string) {
		switch phase {
		case actionpkg.PhaseHalted, actionpkg.PhasePaused, actionpkg.PhaseBlocked:
			t.log.Warn("not starting yet", "phase", phase, "why", detail)
		case actionpkg.PhaseChecking, actionpkg.PhaseGating, actionpkg.PhaseDraining, actionpkg.PhaseHolding:
			t.log.Info(phase, "detail", detail)
		}
		now := time.Now()
		w.note(t, "the phase", func(st *state.State) { st.SetPhase(b.name, phase, detail, now) })
		records.phase(phase)
	}
	t.log.Info("starting", "prefix", b.decl.Prefix, "n", b.decl.Limit, "seq", b.seq)

	started := time.Now()
	res, err := w.opts.Runner.Run(t.ctx, opts)
	out := outcome(res, err, started, time.Now())
	if res.MaintLeft {
		out.MaintLeft = b.decl.Maint
	}

	// Stopped (a service manager may also signal the command itself, so
	// it can end before we notice): unless the run succeeded, it stays
	// queued for the next worker instead of counting as a failed try.
	if t.ctx.Err() != nil && !out.OK {
		t.log.Info("worker stopping; the action stays queued and runs again on the next start")
		err := w.opts.Store.Update(func(st *state.State) error {
			st.Abandon(b.name)
			return nil
		})
		records.finish(phaseQueued, "", false)
		return err
	}

	var a state.Action
	uerr := w.opts.Store.Update(func(st *state.State) error {
		st.Finish(b.name, out, w.opts.Backoff)
		if p := st.Actions[b.name]; p != nil {
			a = *p
		}
		return nil
	})
	if uerr != nil {
		records.finish(phaseQueued, out.Error, out.OK)
		return fmt.Errorf("recording the outcome of %q: %w", b.name, uerr)
	}
	records.finish(finalPhase(out, a), resultText(out), out.OK)
	logOutcome(t.log, out, a, b.decl, res.Result)
	return nil
}

// Phases a node's record shows between runs, besides the pipeline's.
const (
	phaseIdle   = fleet.PhaseIdle   // the last run finished; no retry is due
	phaseFailed = fleet.PhaseFailed // given up until a new request
	phaseQueued = fleet.PhaseQueued // a retry or the next worker runs it
)

func finalPhase(out state.Outcome, a state.Action) string {
	switch {
	case out.OK:
		return phaseIdle
	case a.Last != nil && a.Last.Failed:
		return phaseFailed
	}
	return phaseQueued
}

func resultText(out state.Outcome) string {
	if out.OK {
		return "ok"
	}
	return out.Error
}

// lastRecord is the record a run starts from: the declaration's version
// and the last try's result.
func (w *worker) lastRecord(b begunRun) fleet.Record {
	r := fleet.Record{Version: b.decl.Version}
	if st, err := w.opts.Store.Load(); err == nil {
		if a := st.Actions[b.name]; a != nil && a.Last != nil {
			r.OK, r.LastResult = a.Last.OK, resultText(*a.Last)
		}
	}
	return r
}

// outcome turns what the pipeline returned into the try's record.
func outcome(res actionpkg.Result, err error, started, finished time.Time) state.Outcome {
	unreachable := errors.Is(err, lockexec.ErrConsulUnreachable)
	out := state.Outcome{
		OK:       err == nil && res.ExitCode == 0,
		ExitCode: exitcode.Of(res.Result, err),
		// Neither a Consul outage, nor a lock lost (the fence stopped the
		// command when the session could not be confirmed, as during a
		// leader election), nor a -n that the fleet is still changing
		// over to is the action's fault: retry, never give up.
		Transient: unreachable || errors.Is(err, lockexec.ErrLockLost) ||
			errors.Is(err, lockexec.ErrLimitMismatch),
		Unreachable: unreachable,
		// A bad config does not become good by retrying.
		NoRetry:  errors.Is(err, actionpkg.ErrCheckFailed),
		Started:  started,
		Finished: finished,
	}
	if errors.Is(err, ErrConsulConfig) {
		out.ExitCode = exitcode.Config
	}
	switch {
	case err != nil:
		out.Error = err.Error()
	case res.ExitCode != 0:
		out.Error = fmt.Sprintf("command exited with status %d", res.ExitCode)
	}
	return out
}

// logOutcome logs a finished try; a is the action after Finish.
func logOutcome(log hclog.Logger, out state.Outcome, a state.Action, decl plugin.Declaration, res lockexec.Result) {
	switch {
	case out.OK:
		log.Info("action finished", "waited", res.Waited.Round(time.Millisecond), "ran", res.Ran.Round(time.Millisecond))
	case a.Last != nil && a.Last.Failed:
		log.Error("action failed; giving up until the next exec", "error", out.Error, "exit_code", out.ExitCode, "attempts", decl.MaxAttempts)
	case out.Unreachable && !a.NextAttempt.IsZero():
		log.Warn("Consul unreachable; will retry as soon as it answers", "error", out.Error, "exit_code", out.ExitCode)
	case !a.NextAttempt.IsZero():
		log.Warn("action failed; will retry", "error", out.Error, "exit_code", out.ExitCode,
			"attempt", a.Attempts, "retry_in", time.Until(a.NextAttempt).Round(time.Second))
	default:
		log.Warn("action failed; a newer request runs it again now", "error", out.Error, "exit_code", out.ExitCode)
	}
}
