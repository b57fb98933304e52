package action

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"ct-supervise/fleet"
	"ct-supervise/health"
	"ct-supervise/lockexec"
)

// maxCheckOutput bounds the check output kept for the error, the log and
// status.
const maxCheckOutput = 4 << 10

// cleanupTimeout bounds the Consul calls made after the lease is lost or
// the action failed (maintenance, the halt record).
const cleanupTimeout = 10 * time.Second

// check runs the pre-flight check, if any. It runs before any session
// exists: a bad config is refused without touching the lock.
func (r *runner) check(ctx context.Context, res *Result) error {
	if len(r.opts.Check) == 0 {
		return nil
	}
	argv := lockexec.Options{Command: r.opts.Check, Shell: r.opts.CheckShell}.Argv()
	r.phase(PhaseChecking, strings.Join(r.opts.Check, " "))
	ctx, cancel := context.WithTimeout(ctx, r.opts.CheckTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &capped{&out}, &capped{&out}
	cmd.Env = r.opts.Lock.Env
	proc, err := lockexec.Start(cmd)
	if err != nil {
		return fmt.Errorf("%w: starting %q: %w", ErrCheckFailed, strings.Join(r.opts.Check, " "), err)
	}
	select {
	case <-proc.Done():
	case <-ctx.Done():
		_ = proc.Signal(syscall.SIGKILL)
		<-proc.Done()
	}
	proc.KillLeftovers()
	res.CheckOutput = strings.TrimSpace(out.String())
	code := proc.ExitCode()
	switch {
	case ctx.Err() != nil && code != 0:
		return fmt.Errorf("%w: %q did not finish within %s: %s", ErrCheckFailed, strings.Join(r.opts.Check, " "),
			r.opts.CheckTimeout, oneLine(res.CheckOutput))
	case code != 0:
		return fmt.Errorf("%w: %q exited with status %d: %s", ErrCheckFailed, strings.Join(r.opts.Check, " "),
			code, oneLine(res.CheckOutput))
	}
	return nil
}

// capped writes into a buffer up to maxCheckOutput bytes and drops the
// rest, so that a chatty check cannot fill memory.
type capped struct{ b *bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxCheckOutput - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// oneLine keeps output to one line for errors.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "(no output)"
	}
	return s
}

// waitForFleet waits while the rollout is paused or halted, or a blocker
// is critical elsewhere, each reported as a phase.
func (r *runner) waitForFleet(ctx context.Context) error {
	for {
		if err := r.waitForSwitches(ctx); err != nil {
			return err
		}
		if len(r.opts.UnlessCritical) > 0 {
			err := health.WaitNoneCritical(ctx, r.p.client, health.BlockerOptions{
				Services: r.opts.UnlessCritical, Node: r.opts.Node,
				OnBlocked: func(why string) { r.phase(PhaseBlocked, why) },
			})
			if err != nil {
				return fmt.Errorf("%w while waiting for blockers: %v", lockexec.ErrInterrupted, err)
			}
		}
		// A halt or a pause may have come while the blockers held us.
		if r.blockedNow(ctx) == "" {
			return nil
		}
	}
}

// waitForSwitches waits while the rollout is halted or paused. A first read
// that fails for good (Consul unreachable, an agent that does not answer, a
// token without key:read) is an error; one that Consul turned away for a
// moment (a 429 when many nodes start at once, a leader election) is
// retried with backoff, as the lock's waiters do.
func (r *runner) waitForSwitches(ctx context.Context) error {
	f := r.opts.Fleet
	if f == nil {
		return nil
	}
	backoff := minSwitchesBackoff
	for {
		err := f.WaitClearFor(ctx, r.opts.Node, func(why string) {
			phase := PhaseHalted
			if strings.HasPrefix(why, fleet.ErrPaused.Error()) {
				phase = PhasePaused
			}
			r.phase(phase, why)
		})
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("%w while waiting for the fleet: %v", lockexec.ErrInterrupted, err)
		case !lockexec.IsTurnedAway(err):
			return lockexec.ClassifyConsulError(fmt.Errorf("reading the rollout's halt and pause: %w", err))
		}
		r.log.Debug("reading the rollout's halt and pause failed for a moment; retrying", "error", err, "in", backoff)
		if err := sleep(ctx, backoff+rand.N(backoff/2)); err != nil {
			return err
		}
		backoff = min(2*backoff, maxSwitchesBackoff)
	}
}

// The backoff of waitForSwitches, as the lock's waiters'.
const (
	minSwitchesBackoff = 25 * time.Millisecond
	maxSwitchesBackoff = time.Second
)

// blockedNow reads the halt and pause once; "" when nothing stops us (or
// there is no fleet). A read error does not block: the lock still limits
// the rollout to N, and the wait before the lock has read the switches.
func (r *runner) blockedNow(ctx context.Context) string {
	f := r.opts.Fleet
	if f == nil {
		return ""
	}
	halt, pause, err := f.Switches(ctx)
	return r.blockedBy(halt, pause, err)
}

// blockedOnceHeld is blockedNow for a node that just got the lock: it
// takes the read that prefetch started as the lock came free, and reads
// only when there is none.
func (r *runner) blockedOnceHeld(ctx context.Context, prefetch *switchesPrefetch) string {
	if prefetch == nil {
		return r.blockedNow(ctx)
	}
	rd := prefetch.result()
	if rd == nil {
		return r.blockedNow(ctx)
	}
	return r.blockedBy(rd.halt, rd.pause, rd.err)
}

// blockedBy is what a read of the switches says: "" when nothing stops us
// or the read failed (see blockedNow).
func (r *runner) blockedBy(halt *fleet.Halt, pause *fleet.Pause, err error) string {
	if err != nil {
		return ""
	}
	return fleet.Rollout{Halt: halt, Pause: pause}.BlockedFor(r.opts.Node)
}

// underLease runs every step that needs the lock, then releases it. The
// release comes last, after the halt record, so that the next node already
// finds the halt when it gets the lock.
func (r *runner) underLease(ctx context.Context, lease *lockexec.Lease, res Result) (Result, error) {
	err := r.steps(ctx, lease, &res)
	ok := err == nil && res.ExitCode == 0
	if !ok {
		r.recordFailure(res, err)
	}
	if rerr := lease.Release(); rerr != nil && err == nil {
		err = rerr
	}
	if ok {
		// After the release, off the hand-off's path: a halt this node
		// set is rare, and a node that finds it in the meantime waits
		// until it goes, a round trip later.
		cctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		r.clearOwnHalt(cctx)
		cancel()
	}
	return res, err
}

// steps runs maintenance and drain, the command, the gate and the hold
// under the lease's context.
func (r *runner) steps(ctx context.Context, lease *lockexec.Lease, res *Result) error {
	fenced := lease.Context()
	var maintIDs []string
	if r.opts.Maint != "" {
		r.phase(PhaseDraining, fmt.Sprintf("%q in maintenance, draining for %s", r.opts.Maint, r.opts.Drain))
		ids, err := health.EnableMaintenance(fenced, r.p.client, r.opts.Maint, "ct-supervise: "+r.opts.Lock.SessionName)
		maintIDs = ids
		if err != nil {
			res.MaintLeft = len(ids) > 0
			return r.fenceError(lease, fmt.Errorf("maintenance on: %w", err))
		}
		if err := sleep(fenced, r.opts.Drain); err != nil {
			res.MaintLeft = true
			return r.fenceError(lease, err)
		}
	}
	r.phase(PhaseRunning, strings.Join(r.opts.Lock.Command, " "))
	// Right before the start, not when the lock came: the worker records
	// "holding" here and the pid just after, and a successor that finds
	// the first without the second cannot tell whether a command runs,
	// so it leaves the lock to expire. Keep that window to a fork.
	if r.opts.Lock.OnAcquired != nil {
		r.opts.Lock.OnAcquired()
	}
	started := time.Now()
	cres, err := lease.RunCommand(ctx, r.opts.Lock)
	waited := res.Waited
	res.Result = cres
	res.Waited = waited
	if err == nil && cres.ExitCode == 0 {
		err = r.afterSuccess(lease, time.Now(), maintIDs)
	}
	if err != nil || cres.ExitCode != 0 {
		res.MaintLeft = len(maintIDs) > 0
		return err
	}
	r.log.Debug("action done under the lock", "took", time.Since(started).Round(time.Millisecond))
	return nil
}

// afterSuccess runs the gate and the hold, then lifts maintenance, all
// while the lease holds.
func (r *runner) afterSuccess(lease *lockexec.Lease, ended time.Time, maintIDs []string) error {
	fenced := lease.Context()
	if len(r.opts.WaitHealthy) > 0 {
		r.phase(PhaseGating, "waiting for "+strings.Join(r.opts.WaitHealthy, ", ")+" to pass")
		err := health.Wait(fenced, r.p.client, health.Options{
			Services: r.opts.WaitHealthy, Node: r.opts.Node, Since: ended,
			Settle: r.opts.HealthSettle, Timeout: r.opts.HealthTimeout,
			IgnoreMaintenance: maintIDs, Logger: r.log,
			OnWaiting: func(what string) { r.phase(PhaseGating, what) },
		})
		if err != nil {
			return r.fenceError(lease, err)
		}
	}
	if r.opts.Hold > 0 {
		r.phase(PhaseHolding, fmt.Sprintf("keeping the lock for %s", r.opts.Hold))
		if err := sleep(fenced, r.opts.Hold); err != nil {
			return r.fenceError(lease, err)
		}
	}
	if len(maintIDs) > 0 {
		if err := health.DisableMaintenance(fenced, r.p.client, maintIDs); err != nil {
			return r.fenceError(lease, fmt.Errorf("maintenance off: %w", err))
		}
	}
	return nil
}

// fenceError prefers the lease's own cause (lock lost, not confirmed in
// time) to the error of the step it cut short.
func (r *runner) fenceError(lease *lockexec.Lease, err error) error {
	if cause := context.Cause(lease.Context()); cause != nil && errors.Is(cause, lockexec.ErrLockLost) {
		return cause
	}
	return err
}

// recordFailure sets the halt when the policy says so and the failure is
// the action's own: its check, its command or its health gate. A lost
// lock, an interruption or Consul being away says nothing about the new
// config. It runs while the lease still holds (or just lost it), with its
// own deadline.
func (r *runner) recordFailure(res Result, err error) {
	if r.opts.Fleet == nil || r.opts.OnFailure != OnFailureHalt || !actionsFault(res, err) {
		return
	}
	reason := fmt.Sprintf("command exited with status %d", res.ExitCode)
	if err != nil {
		reason = err.Error()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	h := fleet.Halt{Node: r.opts.Node, Reason: oneLine(reason), At: time.Now().UTC()}
	if herr := r.opts.Fleet.SetHalt(ctx, h); herr != nil {
		r.log.Error("could not record the halt; the rollout goes on", "error", herr)
		return
	}
	r.log.Warn("rollout halted on this node's failure", "reason", h.Reason)
}

// actionsFault reports whether a failure is the action's own doing.
func actionsFault(res Result, err error) bool {
	switch {
	case err == nil:
		return res.ExitCode != 0
	case errors.Is(err, ErrCheckFailed), errors.Is(err, ErrUnhealthy), errors.Is(err, lockexec.ErrTimeout),
		errors.Is(err, lockexec.ErrCommandNotFound), errors.Is(err, lockexec.ErrCommandNotExecutable):
		return true
	}
	return false
}

// clearOwnHalt lifts a halt this node set on an earlier failure.
func (r *runner) clearOwnHalt(ctx context.Context) {
	if r.opts.Fleet == nil || r.opts.Node == "" {
		return
	}
	if lifted, err := r.opts.Fleet.ClearHalt(ctx, r.opts.Node); err != nil {
		r.log.Warn("could not lift this node's halt", "error", err)
	} else if lifted {
		r.log.Info("this node succeeded; its halt of the rollout is lifted")
	}
}
