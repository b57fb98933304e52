package lockexec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
// happened. It is Acquire, Lease.RunCommand and Lease.Release in a row.
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
	lease, err := r.acquire(ctx, opts, &res)
	if err != nil {
		return res, err
	}
	defer func() {
		if rerr := lease.Release(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if lease.rn.opts.OnAcquired != nil {
		lease.rn.opts.OnAcquired()
	}
	return lease.runCommand(ctx, lease.rn.opts, res)
}

// Acquire takes the lock or a slot of the semaphore at opts.Prefix and
// returns it as a Lease, whose Context is cancelled if it is lost or can no
// longer be confirmed in time. Only the lock's options are used (Prefix,
// Limit, the session's settings, Try, MonitorRetries, Signals while
// waiting, OnSession, BeforeTake, Logger); KillGrace bounds how long the fence leaves
// for stopping what runs under it. The caller must call Release.
//
// ctx bounds the whole lease: cancelling it also cancels Context.
func (r *Runner) Acquire(ctx context.Context, opts Options) (*Lease, error) {
	if err := opts.validateLock(); err != nil {
		return nil, err
	}
	var res Result
	return r.acquire(ctx, opts, &res)
}

// acquire creates the session and waits for the lock, filling in res.Session
// and res.Waited. On error it has already given back whatever it took.
func (r *Runner) acquire(ctx context.Context, opts Options, res *Result) (*Lease, error) {
	if r == nil || r.client == nil {
		return nil, fmt.Errorf("%w: no Consul client", ErrInvalidOptions)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w before start: %v", ErrInterrupted, err)
	}
	rn := &run{client: r.client, opts: opts.withDefaults(), begun: time.Now()}
	rn.log = rn.opts.Logger
	if err := rn.createSession(ctx); err != nil {
		return nil, err
	}
	res.Session = rn.session
	if rn.opts.OnSession != nil {
		rn.opts.OnSession(rn.session)
	}

	start := time.Now()
	err := rn.acquire(ctx)
	res.Waited = time.Since(start)
	if err == nil && ctx.Err() != nil {
		// Cancelled as the lock came in: do not start what we would stop.
		err = fmt.Errorf("%w before the command started: %v", ErrInterrupted, ctx.Err())
	}
	if err != nil {
		_ = rn.finish() // logged there; the wait's error says more
		return nil, err
	}
	rn.log.Debug("lock acquired", "prefix", rn.opts.Prefix, "n", rn.opts.Limit,
		"waited", res.Waited.Round(time.Millisecond))
	return newLease(ctx, rn), nil
}

// run is the state of one lease, from session creation to clean-up.
type run struct {
	client *api.Client
	opts   Options
	log    hclog.Logger
	begun  time.Time // -try counts from here

	session   string
	fence     *fence
	renew     *renewer
	stopRenew context.CancelFunc
	renewDone chan struct{}
	// gone is closed, goneErr set first, when Consul says the session no
	// longer exists.
	gone    chan struct{}
	goneErr error

	// held is true while we hold the lock or slot, gotIt once we have
	// held it at all. lock takes and gives it back; setUpLock sets it.
	held  bool
	gotIt bool
	lock  holder
	lost  <-chan struct{} // closed by the holder's monitor when the lock goes
}

// createSession creates the session that holds the lock and starts renewing
// it. We create it ourselves rather than letting the api do it so that we
// choose its name, TTL and lock-delay, know its ID for Result, and destroy
// it synchronously when done.
func (rn *run) createSession(ctx context.Context) error {
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
	id, err := rn.createSessionRetrying(ctx, entry)
	if err != nil {
		return err
	}
	rn.session = id
	rn.log.Debug("session created", "session", id, "name", o.SessionName, "ttl", o.SessionTTL, "behavior", behavior)
	rn.startRenewing()
	return nil
}

// createSessionRetrying creates the session, riding out a leader election
// or too many requests with backoff within -try, as the wait does. Only
// answers that say no session was made are retried: a request that timed
// out may have created one whose ID we never learnt.
func (rn *run) createSessionRetrying(ctx context.Context, entry *api.SessionEntry) (string, error) {
	o := &rn.opts
	bo := newBackoff()
	for {
		// Not bound to the caller's ctx: cancelled in flight, the request
		// could leave a session behind whose ID we never learnt. It is one
		// short request, bounded by callTimeout.
		cctx, cancel := callCtx(context.Background())
		id, _, err := rn.client.Session().Create(entry, (&api.WriteOptions{}).WithContext(cctx))
		cancel()
		switch {
		case err == nil:
			return id, nil
		case isPermissionDenied(err):
			return "", fmt.Errorf("%w: creating session %q: %v", ErrPermissionDenied, o.SessionName, err)
		case isLeaderTrouble(err) && !rn.tryExpired(bo.next):
			rn.log.Debug("creating the session failed; retrying", "error", err)
			if werr := rn.pause(ctx, bo); werr != nil {
				return "", werr
			}
		case isUnreachable(err) || isTransient(err):
			return "", fmt.Errorf("%w: creating session: %v", ErrConsulUnreachable, err)
		default:
			return "", fmt.Errorf("creating session: %w", err)
		}
	}
}

// tryExpired reports whether -try, counted from the start, would be over
// after d more.
func (rn *run) tryExpired(d time.Duration) bool {
	return rn.opts.Try > 0 && time.Since(rn.begun)+d >= rn.opts.Try
}

// pause waits out bo, returning ErrInterrupted if ctx is done or a stop
// signal arrives first.
func (rn *run) pause(ctx context.Context, bo *backoff) error {
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	waited := make(chan error, 1)
	go func() { waited <- bo.wait(wctx) }()
	signals := rn.opts.Signals
	for {
		select {
		case err := <-waited:
			if err != nil {
				return fmt.Errorf("%w before waiting for the lock: %v", ErrInterrupted, ctx.Err())
			}
			return nil
		case sig, ok := <-signals:
			switch {
			case !ok:
				signals = nil
			case isStopSignal(sig):
				return fmt.Errorf("%w before waiting for the lock: received %s", ErrInterrupted, sig)
			}
		}
	}
}

// startRenewing starts the renewer. It is stopped by cancelling its
// context: finish then destroys the session itself, in order, and checked.
func (rn *run) startRenewing() {
	rn.fence = newFence(rn.opts.LockDelay, rn.opts.KillGrace)
	rn.gone = make(chan struct{})
	rn.renew = &renewer{
		client:  rn.client,
		session: rn.session,
		ttl:     rn.opts.SessionTTL,
		fence:   rn.fence,
		log:     rn.log,
		kick:    make(chan struct{}, 1),
		onGone: func(err error) {
			rn.goneErr = err
			close(rn.gone)
		},
	}
	renewCtx, cancel := context.WithCancel(context.Background())
	rn.stopRenew = cancel
	rn.renewDone = make(chan struct{})
	go func() {
		defer close(rn.renewDone)
		rn.renew.run(renewCtx)
	}()
}

// acquireResult is what the holder's acquire returned.
type acquireResult struct {
	lost <-chan struct{}
	err  error
}

// acquire blocks until we hold the lock or a slot, -try runs out, ctx is
// cancelled, a stop signal arrives or the session is invalidated. Once
// held, the fence starts counting from the request that took it.
func (rn *run) acquire(ctx context.Context) error {
	rn.setUpLock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w before waiting for the lock: %v", ErrInterrupted, err)
	}
	rn.log.Debug("waiting for the lock", "prefix", rn.opts.Prefix, "n", rn.opts.Limit, "try", rn.opts.Try)

	// The holder's blocking queries follow waitCtx, so stopping the wait
	// takes effect at once; -try is one deadline over the whole wait.
	waitCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	acquireCtx := waitCtx
	if rn.opts.Try > 0 {
		var cancel context.CancelFunc
		acquireCtx, cancel = context.WithDeadlineCause(waitCtx, rn.begun.Add(rn.opts.Try), errTryExpired)
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
	var stopped error // why we stopped waiting, once we did
	signals, done, gone := rn.opts.Signals, ctx.Done(), rn.gone
	for {
		select {
		case a := <-results:
			if stopped == nil && ctx.Err() != nil {
				stopped = fmt.Errorf("%w while waiting for the lock: %v", ErrInterrupted, ctx.Err())
			}
			return rn.acquired(a, stopped)
		case <-done:
			stopped = fmt.Errorf("%w while waiting for the lock: %v", ErrInterrupted, ctx.Err())
		case <-gone:
			stopped = fmt.Errorf("%w: session %s was invalidated while waiting for the lock on %q",
				ErrConsulUnreachable, rn.session, rn.opts.Prefix)
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			if !isStopSignal(sig) {
				rn.log.Debug("ignoring signal while waiting for the lock", "signal", sig)
				continue
			}
			stopped = fmt.Errorf("%w while waiting for the lock: received %s", ErrInterrupted, sig)
		}
		signals, done, gone = nil, nil, nil
		stop(ErrInterrupted)
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

// acquired turns the holder's answer into ours. stopped, if not nil, says
// why we stopped waiting.
func (rn *run) acquired(a acquireResult, stopped error) error {
	o := &rn.opts
	if a.err == nil {
		rn.held, rn.gotIt = true, true
		rn.fence.confirm(rn.lock.sentAt())
		rn.renew.hold()
		rn.lost = a.lost
	}
	switch {
	case stopped != nil:
		rn.log.Debug("stopped waiting for the lock", "prefix", o.Prefix, "reason", stopped)
		return stopped
	case a.err == nil:
		return nil
	case errors.Is(a.err, errTryExpired):
		rn.log.Debug("lock not acquired in time", "prefix", o.Prefix, "try", o.Try)
		return fmt.Errorf("%w: %q still held after %s", ErrNotAcquired, o.Prefix, o.Try)
	}
	return rn.acquireError(a.err)
}

// acquireError classifies an error from the holder's acquire.
func (rn *run) acquireError(err error) error {
	o := &rn.opts
	switch {
	case isConflict(err):
		return rn.mismatch()
	case isPermissionDenied(err):
		return fmt.Errorf("%w: acquiring the lock on %q as session %s: %v", ErrPermissionDenied, o.Prefix, rn.session, err)
	case isUnreachable(err):
		return fmt.Errorf("%w: acquiring the lock on %q: %v", ErrConsulUnreachable, o.Prefix, err)
	}
	// A 500 may be Consul losing its servers: ask whether it is still
	// there.
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	leader, perr := rn.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if (perr != nil && isUnreachable(perr)) || (perr == nil && leader == "") {
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
	ctx, cancel := callCtx(context.Background())
	defer cancel()
	pair, _, err := rn.client.KV().Get(o.lockKey(), (&api.QueryOptions{}).WithContext(ctx))
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

// finish gives back everything Run took, in the order that lets the next
// holder in soonest: the lock first, which wakes the waiters at once; then
// the session, which holds nothing by then, so Consul applies no
// lock-delay; then the lock key, which is only tidying up.
func (rn *run) finish() error {
	o := &rn.opts
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var firstErr error
	if rn.held {
		rn.held = false
		if err := retryTransient(ctx, rn.lock.release); err != nil {
			rn.log.Warn("releasing the lock failed", "prefix", o.Prefix, "error", err)
			firstErr = fmt.Errorf("releasing the lock on %q: %w", o.Prefix, err)
		} else {
			rn.log.Debug("lock released", "prefix", o.Prefix)
		}
	}

	rn.stopRenew()
	<-rn.renewDone
	err := retryTransient(ctx, func() error {
		_, err := rn.client.Session().Destroy(rn.session, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	switch {
	case err == nil:
		rn.log.Debug("session destroyed", "session", rn.session)
	case firstErr == nil && rn.gotIt:
		// The lock is back already: the session holds nothing, and Consul
		// removes it when its TTL runs out. The run itself went well.
		rn.log.Warn("destroying the session failed; it holds nothing, and Consul removes it when its TTL runs out",
			"session", rn.session, "ttl", o.SessionTTL, "error", err)
	default:
		rn.log.Warn("destroying the session failed; Consul removes it when its TTL runs out",
			"session", rn.session, "ttl", o.SessionTTL, "error", err)
		if firstErr == nil {
			firstErr = fmt.Errorf("destroying session %s: %w", rn.session, err)
		}
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

// retryTransient calls f until it succeeds, fails for a reason that is not
// transient (see isTransient), or ctx is done: a release or a destroy made
// during a leader election goes through once a leader is back, instead of
// failing the run.
func retryTransient(ctx context.Context, f func() error) error {
	bo := newBackoff()
	for {
		err := f()
		if err == nil || !isTransient(err) || ctx.Err() != nil {
			return err
		}
		if bo.wait(ctx) != nil {
			return err
		}
	}
}

// isStopSignal reports whether sig asks us to stop rather than being meant
// for the command alone.
func isStopSignal(sig os.Signal) bool {
	return sig == syscall.SIGINT || sig == syscall.SIGTERM
}
