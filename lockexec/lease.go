package lockexec

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// errReleased is the cause of a Lease's context once Release was called.
var errReleased = errors.New("lease released")

// Lease is a lock or semaphore slot held by one session, from Acquire to
// Release. Its Context is the fence: it is cancelled when the lock is lost
// (the key no longer lists our session, Consul says the session is gone) or
// when the session could not be confirmed in time (see fence), always before
// anybody else could acquire. Everything that must only happen while the
// lock is held runs under it.
type Lease struct {
	rn     *run
	ctx    context.Context
	cancel context.CancelCauseFunc

	done     chan struct{} // closed by Release: stops the watchers
	watchers sync.WaitGroup
	once     sync.Once
	err      error
}

// newLease starts watching what rn holds: the holder's monitor, the
// renewer's word that the session is gone, and the fence's clock.
func newLease(ctx context.Context, rn *run) *Lease {
	lctx, cancel := context.WithCancelCause(ctx)
	l := &Lease{rn: rn, ctx: lctx, cancel: cancel, done: make(chan struct{})}
	l.watchers.Add(2)
	go func() {
		defer l.watchers.Done()
		rn.fence.watch(l.done, l.lose)
	}()
	go func() {
		defer l.watchers.Done()
		select {
		case <-rn.lost:
			l.lose(fmt.Errorf("%w: the lock key %q no longer lists session %s", ErrLockLost, rn.opts.lockKey(), rn.session))
		case <-rn.gone:
			l.lose(rn.goneErr)
		case <-l.done:
		}
	}()
	return l
}

// lose cancels the lease's context with cause, once.
func (l *Lease) lose(cause error) {
	if l.ctx.Err() == nil {
		l.rn.log.Warn("lock lost", "prefix", l.rn.opts.Prefix, "session", l.rn.session, "reason", cause)
	}
	l.cancel(cause)
}

// Context is cancelled when the lease is lost, can no longer be confirmed
// in time, is released, or the context given to Acquire is done.
// context.Cause tells which: a lost lease's cause wraps ErrLockLost.
func (l *Lease) Context() context.Context { return l.ctx }

// Session is the ID of the session that holds the lease.
func (l *Lease) Session() string { return l.rn.session }

// Release gives the lock back and destroys the session, in the order that
// lets the next holder in soonest and without a lock-delay. Stop whatever
// runs under Context first. Release may be called more than once; later
// calls return the first one's error.
func (l *Lease) Release() error {
	l.once.Do(func() {
		close(l.done)
		l.watchers.Wait()
		l.cancel(errReleased)
		l.err = l.rn.finish()
	})
	return l.err
}

// lostCause is why the lease ended if it was lost, or nil.
func (l *Lease) lostCause() error {
	if cause := context.Cause(l.ctx); errors.Is(cause, ErrLockLost) {
		return cause
	}
	return nil
}

// RunCommand runs the command of opts (Command, Shell, the streams, Env,
// Timeout, KillGrace, Signals, OnStarted, Logger) under the lease: it is
// stopped if the lease is lost, with SIGKILL no later than the fence
// demands. See Run for what signals and errors mean. The lease stays held.
func (l *Lease) RunCommand(ctx context.Context, opts Options) (Result, error) {
	res := Result{ExitCode: -1, Session: l.rn.session}
	if err := opts.validateCommand(); err != nil {
		return res, err
	}
	return l.runCommand(ctx, opts.withDefaults(), res)
}
