package lockexec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// cleanupTimeout bounds the release and the session destroy, so that an
// unreachable Consul cannot hold up a run that is already over. Consul
// removes the session itself once its TTL runs out.
const cleanupTimeout = 10 * time.Second

// errTryExpired is the cause of a wait that -try cut short.
var errTryExpired = errors.New("the -try timeout expired")

// Runner runs commands under Consul locks and semaphores. It keeps no state
// between runs, so one Runner can serve any number of concurrent Runs.
type Runner struct {
	client *api.Client
}

// New returns a Runner that talks to Consul through client.
func New(client *api.Client) *Runner {
	return &Runner{client: client}
}

// Run acquires the lock (Limit 1) or a slot of the semaphore (Limit > 1) at
// opts.Prefix, runs the command while holding it and gives everything back
// before returning: the lock is released and the session destroyed whatever
// happened.
//
// A command that runs to completion under the lock is a success whatever
// its exit status: err is nil and Result.ExitCode carries the status. Errors
// wrap one of the package's sentinels where one applies; Result is filled in
// as far as the run got.
//
// While waiting, only SIGINT and SIGTERM on opts.Signals matter; a stop
// takes effect at once. While the command runs, every signal is forwarded
// to its process group, and SIGINT or SIGTERM also count as a request to
// stop: Run then returns ErrInterrupted, and the command is killed if it
// is still running KillGrace later.
func (r *Runner) Run(ctx context.Context, opts Options) (res Result, err error) {
	res.ExitCode = -1
	if err := opts.validate(); err != nil {
		return res, err
	}
	if r == nil || r.client == nil {
		return res, fmt.Errorf("%w: no Consul client", ErrInvalidOptions)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("%w before start: %v", ErrInterrupted, err)
	}

	rn := &run{client: r.client, opts: opts.withDefaults()}
	rn.log = rn.opts.Logger

	if err := rn.createSession(); err != nil {
		return res, err
	}
	res.Session = rn.session
	defer func() {
		if ferr := rn.finish(); ferr != nil && err == nil {
			err = ferr
		}
	}()

	start := time.Now()
	lost, err := rn.acquire(ctx)
	res.Waited = time.Since(start)
	if err != nil {
		return res, err
	}
	rn.log.Debug("lock acquired", "prefix", rn.opts.Prefix, "n", rn.opts.Limit,
		"waited", res.Waited.Round(time.Millisecond))
	if err := ctx.Err(); err != nil {
		// Cancelled as the lock came in: do not start what we would stop.
		return res, fmt.Errorf("%w before the command started: %v", ErrInterrupted, err)
	}
	if rn.opts.OnAcquired != nil {
		rn.opts.OnAcquired()
	}

	err = rn.runChild(ctx, lost, &res)
	return res, err
}

// run is the state of one Run, from session creation to clean-up.
type run struct {
	client *api.Client
	opts   Options
	log    hclog.Logger

	session   string
	stopRenew context.CancelFunc
	renewDone chan struct{}

	// held is true while we hold the lock or slot, gotIt once we have
	// held it at all. lock takes and gives it back; setUpLock sets it.
	held  bool
	gotIt bool
	lock  holder
}

// createSession creates the session that holds the lock and starts renewing
// it. We create it ourselves rather than letting the api do it so that we
// choose its name, TTL and lock-delay, know its ID for Result, and destroy
// it synchronously when done.
func (rn *run) createSession() error {
	o := &rn.opts
	behavior := api.SessionBehaviorRelease
	if o.Limit > 1 {
		// A semaphore's contender key belongs to the session: deleting it
		// with the session keeps a crashed holder from leaving it behind.
		behavior = api.SessionBehaviorDelete
	}
	entry := &api.SessionEntry{
		Name:      o.SessionName,
		TTL:       o.SessionTTL.String(),
		LockDelay: o.LockDelay,
		Behavior:  behavior,
	}
	// Not bound to ctx: cancelled in flight, the request could leave a
	// session behind whose ID we never learnt. It is one short request, and
	// acquire looks at ctx straight after.
	id, _, err := rn.client.Session().Create(entry, nil)
	if err != nil {
		switch {
		case isUnreachable(err):
			return fmt.Errorf("%w: creating session: %v", ErrConsulUnreachable, err)
		default:
			return fmt.Errorf("creating session: %w", err)
		}
	}
	rn.session = id
	rn.log.Debug("session created", "session", id, "name", o.SessionName, "ttl", o.SessionTTL, "behavior", behavior)

	// Renewal is stopped by cancelling its context rather than through its
	// done channel: the latter would destroy the session in the background,
	// and we want that to happen in finish, in order, and checked.
	renewCtx, cancel := context.WithCancel(context.Background())
	rn.stopRenew = cancel
	rn.renewDone = make(chan struct{})
	go func() {
		defer close(rn.renewDone)
		err := rn.client.Session().RenewPeriodic(entry.TTL, id, (&api.WriteOptions{}).WithContext(renewCtx), nil)
		if err != nil && renewCtx.Err() == nil {
			// The monitor notices the lock going away; this says why.
			rn.log.Warn("session renewal stopped", "session", id, "error", err)
		}
	}()
	return nil
}

// acquireResult is what the holder's acquire returned.
type acquireResult struct {
	lost <-chan struct{}
	err  error
}

// acquire blocks until we hold the lock or a slot, -try runs out, ctx is
// cancelled or a stop signal arrives. It returns the channel closed when
// the lock is lost.
func (rn *run) acquire(ctx context.Context) (<-chan struct{}, error) {
	rn.setUpLock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w before waiting for the lock: %v", ErrInterrupted, err)
	}
	rn.log.Debug("waiting for the lock", "prefix", rn.opts.Prefix, "n", rn.opts.Limit, "try", rn.opts.Try)

	// The holder's blocking queries follow waitCtx, so stopping the wait
	// takes effect at once; -try is one deadline over the whole wait.
	waitCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	acquireCtx := waitCtx
	if rn.opts.Try > 0 {
		var cancel context.CancelFunc
		acquireCtx, cancel = context.WithTimeoutCause(waitCtx, rn.opts.Try, errTryExpired)
		defer cancel()
	}
	results := make(chan acquireResult, 1)
	go func() {
		lost, err := rn.lock.acquire(acquireCtx)
		results <- acquireResult{lost: lost, err: err}
	}()

	// Once told to stop we still wait for the holder to return, which it
	// does within a round trip: if it won the lock meanwhile, finish must
	// know, so that it gives it back cleanly instead of leaving it to the
	// session's destruction and the lock-delay that comes with it.
	var interrupted string
	signals, done := rn.opts.Signals, ctx.Done()
	for {
		select {
		case a := <-results:
			if interrupted == "" && ctx.Err() != nil {
				interrupted = ctx.Err().Error()
			}
			return rn.acquired(a, interrupted)
		case <-done:
			interrupted, done, signals = ctx.Err().Error(), nil, nil
			stop(ErrInterrupted)
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			if !isStopSignal(sig) {
				rn.log.Debug("ignoring signal while waiting for the lock", "signal", sig)
				continue
			}
			interrupted, done, signals = "received "+sig.String(), nil, nil
			stop(ErrInterrupted)
		}
	}
}

// setUpLock chooses the lock or the semaphore for our session.
func (rn *run) setUpLock() {
	if rn.opts.Limit == 1 {
		rn.lock = newLockHolder(rn)
	} else {
		rn.lock = newSemaphoreHolder(rn)
	}
}

// acquired turns the holder's answer into ours. interrupted, if not empty,
// says why we stopped waiting.
func (rn *run) acquired(a acquireResult, interrupted string) (<-chan struct{}, error) {
	o := &rn.opts
	if a.err == nil {
		rn.held, rn.gotIt = true, true
	}
	switch {
	case interrupted != "":
		rn.log.Debug("stopped waiting for the lock", "prefix", o.Prefix, "reason", interrupted)
		return nil, fmt.Errorf("%w while waiting for the lock: %s", ErrInterrupted, interrupted)
	case a.err == nil:
		return a.lost, nil
	case errors.Is(a.err, errTryExpired):
		rn.log.Debug("lock not acquired in time", "prefix", o.Prefix, "try", o.Try)
		return nil, fmt.Errorf("%w: %q still held after %s", ErrNotAcquired, o.Prefix, o.Try)
	}
	return nil, rn.acquireError(a.err)
}

// acquireError classifies an error from the holder's acquire.
func (rn *run) acquireError(err error) error {
	o := &rn.opts
	if isConflict(err) {
		return rn.mismatch()
	}
	if isUnreachable(err) {
		return fmt.Errorf("%w: acquiring the lock on %q: %v", ErrConsulUnreachable, o.Prefix, err)
	}
	// A 500 may be Consul losing its servers: ask whether it is still
	// there.
	if leader, perr := rn.client.Status().Leader(); (perr != nil && isUnreachable(perr)) || (perr == nil && leader == "") {
		return fmt.Errorf("%w: acquiring the lock on %q: %v", ErrConsulUnreachable, o.Prefix, err)
	}
	return fmt.Errorf("acquiring the lock on %q: %w", o.Prefix, err)
}

// isConflict reports whether err says that the lock key is used with other
// settings than ours.
func isConflict(err error) bool {
	return errors.Is(err, errConflict)
}

// mismatch builds the ErrLimitMismatch error, naming the limit the other
// holders use as read from the lock key.
func (rn *run) mismatch() error {
	o := &rn.opts
	theirs, inUse := "another limit", true
	pair, _, err := rn.client.KV().Get(o.lockKey(), nil)
	switch {
	case err != nil || pair == nil:
		// Gone or unreadable since we looked: keep the generic words.
	case pair.Flags == api.LockFlagValue:
		theirs, inUse = describeLimit(1), pair.Session != ""
	case pair.Flags == api.SemaphoreFlagValue:
		var v struct {
			Limit   int
			Holders map[string]bool
		}
		switch {
		case json.Unmarshal(pair.Value, &v) != nil || v.Limit <= 0:
			theirs = "a semaphore of unknown limit"
		case v.Limit == 1:
			// Not one of ours (we use a lock for one holder), but
			// possible from other tools.
			theirs, inUse = "-n=1 (a semaphore)", len(v.Holders) > 0
		default:
			theirs, inUse = describeLimit(v.Limit), len(v.Holders) > 0
		}
	default:
		theirs = fmt.Sprintf("a key that is neither a lock nor a semaphore (flags %#x)", pair.Flags)
	}
	if !inUse {
		// The key outlived its last holder (one that crashed, or one that
		// has not tidied up yet), so the old setting still applies.
		return fmt.Errorf("%w: %q is set up for %s with no holder right now, this run asks %s; delete the key %q to change the limit",
			ErrLimitMismatch, o.Prefix, theirs, describeLimit(o.Limit), o.lockKey())
	}
	return fmt.Errorf("%w: %q is in use with %s, this run asks %s",
		ErrLimitMismatch, o.Prefix, theirs, describeLimit(o.Limit))
}

// describeLimit spells a limit the way the -n flag takes it.
func describeLimit(n int) string {
	if n == 1 {
		return "-n=1 (a lock)"
	}
	return fmt.Sprintf("-n=%d", n)
}

// runChild runs the command while we hold the lock and waits for it,
// stopping it if the lock is lost, the timeout expires or we are told to
// stop.
func (rn *run) runChild(ctx context.Context, lost <-chan struct{}, res *Result) error {
	o := &rn.opts
	c, err := startChild(o)
	if err != nil {
		return fmt.Errorf("starting the command: %w", err)
	}
	started := time.Now()
	res.Started = true
	rn.log.Debug("command started", "pid", c.pid(), "command", o.argv())

	var timeout <-chan time.Time
	if o.Timeout > 0 {
		t := time.NewTimer(o.Timeout)
		defer t.Stop()
		timeout = t.C
	}

	var (
		stopErr   error            // why we are stopping the command, once we are
		kill      <-chan time.Time // fires KillGrace after we started stopping it
		killTimer *time.Timer
	)
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
	}()
	// stopping records the first reason to stop the command and arms the
	// SIGKILL that follows if it does not go in time. Later reasons change
	// nothing: the command is already on its way out.
	stopping := func(why error) bool {
		if stopErr != nil {
			return false
		}
		stopErr = why
		killTimer = time.NewTimer(o.KillGrace)
		kill = killTimer.C
		return true
	}
	terminate := func(why error) {
		if stopping(why) {
			if err := c.signal(syscall.SIGTERM); err != nil {
				rn.log.Warn("could not send SIGTERM to the command", "pid", c.pid(), "error", err)
			}
		}
	}

	signals := o.Signals
	ctxDone := ctx.Done()
	for {
		select {
		case <-c.done:
			res.Ran = time.Since(started)
			res.ExitCode = c.exitCode()
			if c.err != nil && errors.Is(c.err, exec.ErrWaitDelay) {
				rn.log.Debug("command left its output open behind it", "pid", c.pid())
			}
			rn.log.Debug("command exited", "pid", c.pid(), "exit_code", res.ExitCode, "ran", res.Ran.Round(time.Millisecond))
			if stopErr != nil {
				if c.killLeftovers() {
					rn.log.Debug("killed what the command left running", "pgid", c.pid())
				}
				return fmt.Errorf("%w (prefix %q)", stopErr, o.Prefix)
			}
			return nil

		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			rn.log.Debug("forwarding signal to the command", "signal", sig, "pid", c.pid())
			if err := c.signal(sig); err != nil {
				rn.log.Warn("could not forward signal to the command", "signal", sig, "error", err)
			}
			// INT and TERM ask us to stop: the command got the signal
			// itself and has KillGrace to act on it, so that the lock is
			// given back before whoever sent it loses patience with us.
			if isStopSignal(sig) {
				stopping(ErrInterrupted)
			}

		case <-lost:
			lost = nil
			rn.log.Warn("lock lost; stopping the command", "prefix", o.Prefix, "pid", c.pid())
			terminate(ErrLockLost)

		case <-timeout:
			timeout = nil
			rn.log.Warn("command exceeded its timeout; stopping it", "timeout", o.Timeout, "pid", c.pid())
			terminate(fmt.Errorf("%w of %s", ErrTimeout, o.Timeout))

		case <-ctxDone:
			ctxDone = nil
			rn.log.Debug("run cancelled; stopping the command", "pid", c.pid())
			terminate(ErrInterrupted)

		case <-kill:
			kill = nil
			rn.log.Warn("command did not exit in time; killing it", "grace", o.KillGrace, "pid", c.pid())
			if err := c.signal(syscall.SIGKILL); err != nil {
				rn.log.Warn("could not send SIGKILL to the command", "pid", c.pid(), "error", err)
			}
		}
	}
}

// finish gives back everything Run took, in the order that lets the next
// holder in soonest: the lock first, which wakes the waiters at once; then
// the session, which holds nothing by then, so Consul applies no
// lock-delay; then the lock key, which is only tidying up.
func (rn *run) finish() error {
	o := &rn.opts
	var firstErr error
	if rn.held {
		rn.held = false
		if err := rn.lock.release(); err != nil {
			rn.log.Warn("releasing the lock failed", "prefix", o.Prefix, "error", err)
			firstErr = fmt.Errorf("releasing the lock on %q: %w", o.Prefix, err)
		} else {
			rn.log.Debug("lock released", "prefix", o.Prefix)
		}
	}

	rn.stopRenew()
	<-rn.renewDone
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if _, err := rn.client.Session().Destroy(rn.session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		rn.log.Warn("destroying the session failed; Consul removes it when its TTL runs out",
			"session", rn.session, "ttl", o.SessionTTL, "error", err)
		if firstErr == nil {
			firstErr = fmt.Errorf("destroying session %s: %w", rn.session, err)
		}
	} else {
		rn.log.Debug("session destroyed", "session", rn.session)
	}

	// Deleting the key once nobody uses it, as `consul lock` does, lets a
	// later run pick another limit. Only a run that held the lock tries:
	// one that never got it has nothing to tidy. Failure only leaves a key
	// behind, which the next holder reuses.
	if rn.gotIt && firstErr == nil {
		if err := rn.lock.cleanup(); err != nil {
			rn.log.Debug("lock key left in place", "key", o.lockKey(), "error", err)
		}
	}
	return firstErr
}

// isStopSignal reports whether sig asks us to stop rather than being meant
// for the command alone.
func isStopSignal(sig os.Signal) bool {
	return sig == syscall.SIGINT || sig == syscall.SIGTERM
}

// isUnreachable reports whether err means Consul could not be reached or
// could not serve us at all, as opposed to refusing what we asked.
func isUnreachable(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// A reachable agent without servers or a leader cannot grant a session
	// or a lock either.
	msg := err.Error()
	return strings.Contains(msg, "No cluster leader") || strings.Contains(msg, "No known Consul servers")
}
