package lockexec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
)

// runCommand starts the command of o under the lease and waits for it,
// stopping it if the lease is lost, the timeout expires or we are told to
// stop. res comes back filled in.
func (l *Lease) runCommand(ctx context.Context, o Options, res Result) (Result, error) {
	if err := l.ctx.Err(); err != nil {
		// Lost before it started: do not start what we would stop.
		if cause := l.lostCause(); cause != nil {
			return res, cause
		}
		return res, fmt.Errorf("%w before the command started: %v", ErrInterrupted, err)
	}
	p, err := startChild(&o)
	if err != nil {
		return res, err
	}
	started := time.Now()
	res.Started = true
	o.Logger.Debug("command started", "pid", p.Pid(), "command", o.argv())
	if o.OnStarted != nil {
		o.OnStarted(p.Pid())
	}
	sv := &supervision{o: &o, lease: l, p: p, log: o.Logger}
	defer sv.stopKillTimer()
	err = sv.wait(ctx)
	res.Ran = time.Since(started)
	res.ExitCode = p.ExitCode()
	return res, err
}

// supervision is one command being waited for under a lease.
type supervision struct {
	o     *Options
	lease *Lease
	p     *Process
	log   hclog.Logger

	stopErr   error            // why we are stopping the command, once we are
	kill      <-chan time.Time // fires when SIGKILL is due
	killTimer *time.Timer
	killAt    time.Time
}

// wait is the loop that watches the command, the lease, the timeout and the
// signals until the command has exited.
func (sv *supervision) wait(ctx context.Context) error {
	o := sv.o
	var timeout <-chan time.Time
	if o.Timeout > 0 {
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	signals, ctxDone, fenced := o.Signals, ctx.Done(), sv.lease.ctx.Done()
	for {
		select {
		case <-sv.p.Done():
			return sv.exited()
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			sv.forward(sig)
		case <-fenced:
			fenced = nil
			sv.leaseEnded(ctx)
		case <-timeout:
			timeout = nil
			sv.log.Warn("command exceeded its timeout; stopping it", "timeout", o.Timeout, "pid", sv.p.Pid())
			sv.terminate(fmt.Errorf("%w of %s", ErrTimeout, o.Timeout), o.KillGrace)
		case <-ctxDone:
			ctxDone = nil
			sv.log.Debug("run cancelled; stopping the command", "pid", sv.p.Pid())
			sv.terminate(ErrInterrupted, o.KillGrace)
		case <-sv.kill:
			sv.kill = nil
			sv.log.Warn("command did not exit in time; killing it", "grace", o.KillGrace, "pid", sv.p.Pid())
			if err := sv.p.Signal(syscall.SIGKILL); err != nil {
				sv.log.Warn("could not send SIGKILL to the command", "pid", sv.p.Pid(), "error", err)
			}
		}
	}
}

// exited reports the command's end.
func (sv *supervision) exited() error {
	p := sv.p
	if p.Err() != nil && errors.Is(p.Err(), exec.ErrWaitDelay) {
		sv.log.Debug("command left its output open behind it", "pid", p.Pid())
	}
	sv.log.Debug("command exited", "pid", p.Pid(), "exit_code", p.ExitCode())
	if sv.stopErr == nil {
		return nil
	}
	if p.KillLeftovers() {
		sv.log.Debug("killed what the command left running", "pgid", p.Pid())
	}
	return fmt.Errorf("%w (prefix %q)", sv.stopErr, sv.lease.rn.opts.Prefix)
}

// forward passes sig on to the command. INT and TERM also ask us to stop:
// the command got the signal itself and has KillGrace to act on it, so that
// the lock is given back before whoever sent it loses patience with us.
func (sv *supervision) forward(sig os.Signal) {
	sv.log.Debug("forwarding signal to the command", "signal", sig, "pid", sv.p.Pid())
	if err := sv.p.Signal(sig); err != nil {
		sv.log.Warn("could not forward signal to the command", "signal", sig, "error", err)
	}
	if isStopSignal(sig) {
		sv.stopping(ErrInterrupted, sv.o.KillGrace)
	}
}

// leaseEnded stops the command because the lease's context is done: lost,
// unconfirmed in time, or the caller's context (handled by its own case).
// The fence decides when the command must be dead, whatever the kill grace.
func (sv *supervision) leaseEnded(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	cause := sv.lease.lostCause()
	if cause == nil {
		cause = fmt.Errorf("%w: %v", ErrLockLost, context.Cause(sv.lease.ctx))
	}
	grace := min(sv.o.KillGrace, max(0, time.Until(sv.lease.rn.fence.deadBy())))
	sv.log.Warn("lock lost; stopping the command", "prefix", sv.lease.rn.opts.Prefix, "pid", sv.p.Pid(), "kill_in", grace.Round(time.Millisecond))
	sv.terminate(cause, grace)
	// Already stopping for another reason: the fence's deadline still holds.
	sv.killBy(time.Now().Add(grace))
}

// terminate sends SIGTERM, unless the command is already being stopped,
// and arms SIGKILL grace later.
func (sv *supervision) terminate(why error, grace time.Duration) {
	if !sv.stopping(why, grace) {
		return
	}
	if err := sv.p.Signal(syscall.SIGTERM); err != nil {
		sv.log.Warn("could not send SIGTERM to the command", "pid", sv.p.Pid(), "error", err)
	}
}

// stopping records the first reason to stop the command and arms the
// SIGKILL that follows if it does not go within grace. Later reasons change
// nothing: the command is already on its way out.
func (sv *supervision) stopping(why error, grace time.Duration) bool {
	if sv.stopErr != nil {
		return false
	}
	sv.stopErr = why
	sv.killBy(time.Now().Add(grace))
	return true
}

// killBy makes SIGKILL due at t at the latest.
func (sv *supervision) killBy(t time.Time) {
	if sv.killTimer != nil && !t.Before(sv.killAt) {
		return
	}
	sv.stopKillTimer()
	sv.killAt = t
	sv.killTimer = time.NewTimer(time.Until(t))
	sv.kill = sv.killTimer.C
}

func (sv *supervision) stopKillTimer() {
	if sv.killTimer != nil {
		sv.killTimer.Stop()
	}
}
