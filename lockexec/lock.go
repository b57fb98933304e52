package lockexec

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/internal/blocking"
	"ct-supervise/internal/ctxsleep"
)

// holder is how Run takes and gives back a lock or a semaphore slot. Both
// implementations keep the KV layout of consul's api, so that `consul
// lock` and other api users on the same prefix exclude us and we them,
// but wait in their own way: see lockHolder and semaphoreHolder for why.
type holder interface {
	// acquire blocks until we hold the lock or a slot, or ctx is done, in
	// which case the error wraps context.Cause(ctx). The returned channel
	// is closed if we stop holding it before release is called.
	acquire(ctx context.Context) (lost <-chan struct{}, err error)

	// release gives back what acquire took and stops watching it.
	release() error

	// cleanup deletes the lock key if nobody uses it any more, and for a
	// plain lock what dead waiters left in its queue. Errors only mean
	// that keys are left in place.
	cleanup() error

	// sentAt is when acquire sent its last request: once it returned
	// holding the lock, the moment from which the fence counts.
	sentAt() time.Time
}

// sendClock records when a holder last sent a request while acquiring.
type sendClock struct{ sent time.Time }

// mark records that a request is about to be sent.
func (c *sendClock) mark() { c.sent = time.Now() }

func (c *sendClock) sentAt() time.Time { return c.sent }

const (
	// blockingWait bounds one blocking query. Consul would wait up to ten
	// minutes; a shorter wait lets a connection that silently died be
	// noticed sooner, at the price of one cheap request a minute.
	blockingWait = time.Minute

	// writeTimeout bounds a single write. Writes are not tied to the
	// caller's context: one cancelled in flight may still have been
	// applied, and we would then hold the lock without knowing it until
	// the session's destruction freed it, with a lock-delay.
	writeTimeout = callTimeout

	// callTimeout bounds every request that is not a blocking query: a
	// frozen agent (SIGSTOP, a stalled VM) accepts the connection and
	// then answers nothing, and without a deadline we would wait with it.
	callTimeout = 10 * time.Second

	// The backoff used when Consul refuses us for a moment (a lock-delay,
	// a lost race, too many connections): quick at first, since most of
	// the time the obstacle is gone within milliseconds.
	minBackoff = 25 * time.Millisecond
	maxBackoff = time.Second
)

// errConflict marks a lock key used with other settings than ours: a
// semaphore where we want a lock, or the other way round, or another
// limit. Run turns it into ErrLimitMismatch, reading the key again to say
// what the other side uses.
var errConflict = errors.New("the lock key is used with other settings")

// lockHolder holds a plain lock (limit 1) at <prefix>/.lock, as
// api.Lock does: the key carries api.LockFlagValue and is acquired with
// our session.
//
// We wait ourselves rather than through api.Lock because it sleeps a fixed
// five seconds whenever an acquire fails on a key that no session holds,
// taking that for Consul's lock-delay. Mostly the holder had simply
// released already, and a fast reload command then cost everybody behind
// it five seconds. We retry such failures after a short backoff instead.
type lockHolder struct {
	client  *api.Client
	key     string
	session string
	retries int
	retryIn time.Duration
	log     hclog.Logger
	sendClock
	// beforeTake is Options.BeforeTake, never nil.
	beforeTake func()

	// queue is our place among our waiters for the lock.
	queue *lockQueue

	stopMonitor context.CancelFunc
	monitorDone chan struct{}
}

func newLockHolder(rn *run) *lockHolder {
	o := &rn.opts
	return &lockHolder{
		client:  rn.client,
		key:     o.lockKey(),
		session: rn.session,
		retries: o.MonitorRetries,
		retryIn: o.MonitorRetryTime,
		log:     rn.log,

		beforeTake: o.beforeTake(),
		queue:      newLockQueue(rn.client, o.Prefix, rn.session, rn.log),
	}
}

// pair is the lock key as we write it.
func (l *lockHolder) pair() *api.KVPair {
	return &api.KVPair{Key: l.key, Session: l.session, Flags: api.LockFlagValue}
}

// acquire takes the lock at once if nobody holds it; otherwise it waits for
// our turn in the queue of our waiters (see lockQueue), then for the lock
// itself.
func (l *lockHolder) acquire(ctx context.Context) (<-chan struct{}, error) {
	held, unsure := l.takeIfFree(ctx)
	if held {
		return l.held(), nil
	}
	var err error
	if !unsure {
		err = l.queue.waitTurn(ctx, l.key)
	}
	if err == nil {
		err = l.take(ctx)
	}
	if err != nil {
		l.queue.leave()
		return nil, err
	}
	// Our queue key went with the take, as a rule; if not (the take went
	// through unanswered), it goes now, so that the next waiter moves up
	// to wait on the lock key and our release wakes it alone.
	l.queue.leaveAsync()
	return l.held(), nil
}

// takeIfFree reads the lock key once and, if nobody holds it, tries to take
// it: a lock nobody waits for costs no queue key (a write, a list and a
// delete). held reports that we hold the lock. Anything else (held by
// another, a refused try, an error) leaves the wait to the queue and take,
// which report errors as they always have. unsure reports a write that
// failed without an answer: it may have gone through, and we may hold the
// lock without knowing. Queued, we would then wait behind waiters who wait
// for us; take, on its own, finds the lock ours at its first read.
//
// A newcomer that finds the lock free in the moment between a release and
// the front waiter's take may get it first: the queue orders our waiters,
// and the lock key alone decides who holds the lock.
func (l *lockHolder) takeIfFree(ctx context.Context) (held, unsure bool) {
	rctx, cancel := callCtx(ctx)
	l.mark()
	pair, _, err := l.client.KV().Get(l.key, (&api.QueryOptions{}).WithContext(rctx))
	cancel()
	if err != nil || (pair != nil && (pair.Flags != api.LockFlagValue || pair.Session != "")) {
		return false, false
	}
	ok, err := l.tryTake()
	return err == nil && ok, err != nil && !answered(err)
}

// take waits on the lock key until it is free, and takes it: the front
// waiter of the queue, or any waiter if the queue failed.
func (l *lockHolder) take(ctx context.Context) error {
	kv := l.client.KV()
	bo := newBackoff()
	var (
		index     uint64 // wait for the key to change past this; 0 reads at once
		contended bool   // our last acquire failed on a key nobody held
	)
	for {
		if ctx.Err() != nil {
			return waitEnded(ctx)
		}
		l.mark()
		pair, meta, again, err := waitRead(ctx, kv, l.key, index, blockingWait, bo)
		if err != nil {
			return err
		}
		if again {
			index = 0
			continue
		}
		index = nextIndex(index, meta.LastIndex)

		switch {
		case pair != nil && pair.Flags != api.LockFlagValue:
			return fmt.Errorf("%w: %q has flags %#x, not a lock's", errConflict, l.key, pair.Flags)
		case pair != nil && pair.Session == l.session:
			// An earlier acquire that failed in transit went through.
			return nil
		case pair != nil && pair.Session != "":
			// Held: sleep until the key changes. Its release is a
			// write to this very key, so we wake at once.
			bo.reset()
			contended = false
			continue
		}

		// Nobody holds it. After a failed acquire on a free key (Consul's
		// lock-delay, or someone who took and gave it back in between),
		// pause briefly rather than hammer it.
		if contended {
			if err := bo.wait(ctx); err != nil {
				return err
			}
		}
		ok, err := l.tryTake()
		switch {
		case err != nil && isTransient(err):
			contended = true
		case err != nil:
			return fmt.Errorf("acquiring the lock key %q: %w", l.key, err)
		case ok:
			return nil
		default:
			contended = true
		}
		// Look again at once: a session holding it now means a real
		// contender, whose release we then wait for.
		index = 0
	}
}

// tryTake is one try to take the lock key, seen free: it says so in the
// log, calls BeforeTake, and sends the write.
func (l *lockHolder) tryTake() (bool, error) {
	l.log.Debug("taking the lock", "key", l.key)
	l.beforeTake()
	return l.takeWrite()
}

// takeWrite tries to take the lock key. A queued waiter deletes its queue
// key in the same transaction (see lockQueue.takeOps): the transaction
// fails as a whole when the lock is held or in its lock-delay, as an
// acquire does, and then the key stays.
func (l *lockHolder) takeWrite() (bool, error) {
	extra := l.queue.takeOps()
	if extra == nil {
		return l.write(func(kv *api.KV, w *api.WriteOptions) (bool, error) {
			ok, _, err := kv.Acquire(l.pair(), w)
			return ok, err
		})
	}
	l.mark()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	p := l.pair()
	ops := append(api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVLock, Key: p.Key, Flags: p.Flags, Session: p.Session}}}, extra...)
	ok, resp, _, err := l.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case ok:
		l.queue.took()
	case (err != nil && isPermissionDenied(err)) || (err == nil && queueOpFailed(resp)):
		// Our queue key may not be deleted (a policy narrower than the
		// README's): take the lock with a plain acquire from now on, at
		// once. The key goes with our session, and the others tidy it.
		l.log.Debug("deleting our queue key with the take failed; taking the lock alone", "error", err)
		l.queue.abandon()
		return l.takeWrite()
	}
	return ok, err
}

// queueOpFailed reports whether a take transaction failed on its queue
// operations rather than on the lock (held, or in its lock-delay).
func queueOpFailed(resp *api.TxnResponse) bool {
	if resp == nil {
		return false
	}
	for _, e := range resp.Errors {
		if e.OpIndex >= 1 {
			return true
		}
	}
	return false
}

// write runs one write bounded by writeTimeout.
func (l *lockHolder) write(f func(*api.KV, *api.WriteOptions) (bool, error)) (bool, error) {
	l.mark()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	return f(l.client.KV(), (&api.WriteOptions{}).WithContext(ctx))
}

// held starts the monitor and returns the channel it closes when the lock
// is lost.
func (l *lockHolder) held() <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	l.stopMonitor = cancel
	l.monitorDone = make(chan struct{})
	lost := make(chan struct{})
	go func() {
		defer close(l.monitorDone)
		watchKey(ctx, l.client, l.key, l.retries, l.retryIn, l.log, func(pair *api.KVPair) bool {
			return pair != nil && pair.Session == l.session
		})
		if ctx.Err() == nil {
			close(lost)
		}
	}()
	return lost
}

func (l *lockHolder) release() error {
	// The monitor is stopped, but not waited for until the lock is
	// given back: its blocking query takes a moment to unwind, and the
	// next holder should not wait for that. Once cancelled it reports
	// nothing.
	if l.stopMonitor != nil {
		l.stopMonitor()
		defer func() { <-l.monitorDone }()
	}
	// The result does not matter: false only means that we no longer held
	// it, which the monitor has already reported.
	_, err := l.write(func(kv *api.KV, w *api.WriteOptions) (bool, error) {
		ok, _, err := kv.Release(l.pair(), w)
		return ok, err
	})
	// A queue key deleted apart from the take was deleted while the
	// command ran, unless Consul was slow: the run must not end with that
	// write in flight.
	l.queue.waitLeft()
	return err
}

func (l *lockHolder) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	kv := l.client.KV()
	pair, _, err := kv.Get(l.key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil || pair == nil {
		return err
	}
	if pair.Flags != api.LockFlagValue || pair.Session != "" {
		// Someone else's now; theirs to tidy up.
		return nil
	}
	// The CAS keeps us from deleting a key someone acquired meanwhile.
	if _, _, err = kv.DeleteCAS(pair, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return err
	}
	// Unused, so nobody queues for it either: delete what dead waiters
	// left in the queue, so that nothing of ours stays under the prefix.
	return l.queue.tidy(ctx)
}

// watchKey watches key with blocking queries until still reports false for
// it, ctx is done, or reading fails in a way that does not pass: an agent
// that refuses the connection more than retries times in a row (waiting
// retryIn between tries), or an answer such as a 403. Transient errors
// (Consul's 5xx and 429s, a read that timed out) are retried every retryIn
// without limit: the fence stops the command if the session cannot be
// confirmed meanwhile.
func watchKey(ctx context.Context, client *api.Client, key string, retries int, retryIn time.Duration,
	log hclog.Logger, still func(*api.KVPair) bool) {
	kv := client.KV()
	var index uint64
	left := retries
	for {
		// Consistent reads: a stale follower must not tell us we still
		// hold what we lost, nor the reverse.
		rctx, cancel := blockingCtx(ctx, blockingWait)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: blockingWait, RequireConsistent: true}).WithContext(rctx)
		pair, meta, err := kv.Get(key, q)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Consul recovering, or an agent that does not answer, is
			// ridden out for as long as the fence allows; an agent that
			// refuses the connection only MonitorRetries times.
			transient := isTransient(err)
			if transient || (left > 0 && api.IsRetryableError(err)) {
				if !transient {
					left--
				}
				log.Debug("monitor read failed; retrying", "key", key, "retries_left", left, "error", err)
				index = 0
				if sleepCtx(ctx, retryIn) != nil {
					return
				}
				continue
			}
			log.Warn("monitoring the lock failed", "key", key, "error", err)
			return
		}
		left = retries
		if !still(pair) {
			return
		}
		index = nextIndex(index, meta.LastIndex)
	}
}

// blockingCtx is ctx with the deadline of one blocking query waiting up to
// wait (see internal/blocking).
func blockingCtx(ctx context.Context, wait time.Duration) (context.Context, context.CancelFunc) {
	return blocking.Context(ctx, wait)
}

// callCtx is ctx with the deadline of one ordinary request.
func callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, callTimeout)
}

// nextIndex is the wait index for the next blocking query. Consul's index
// may go backwards (a snapshot restore, a new leader's view); waiting on
// the old one would then block for the whole wait, so start over.
func nextIndex(prev, last uint64) uint64 {
	if last < prev || last == 0 {
		return 0
	}
	return last
}

// waitRead is one read of key for a waiter: blocking past index for up to
// wait. again reports a transient failure (see isTransient), already
// waited out with bo: read afresh. A read that ctx ended returns waitEnded.
func waitRead(ctx context.Context, kv *api.KV, key string, index uint64, wait time.Duration, bo *backoff) (pair *api.KVPair, meta *api.QueryMeta, again bool, err error) {
	rctx, cancel := blockingCtx(ctx, wait)
	defer cancel()
	pair, meta, err = kv.Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(rctx))
	switch {
	case err == nil:
		return pair, meta, false, nil
	case ctx.Err() != nil:
		return nil, nil, false, waitEnded(ctx)
	case isTransient(err):
		// Consul recovering (a leader election, too many requests) or an
		// agent that did not answer in time: wait and read again.
		if err := bo.wait(ctx); err != nil {
			return nil, nil, false, err
		}
		return nil, nil, true, nil
	default:
		return nil, nil, false, fmt.Errorf("reading %q: %w", key, err)
	}
}

// waitEnded is the error for a wait that ctx cut short. Run tells the
// reasons apart by the cause.
func waitEnded(ctx context.Context) error {
	return fmt.Errorf("waiting for the lock: %w", context.Cause(ctx))
}

// sleepCtx sleeps for d or until ctx is done, returning the cause then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if ctxsleep.Sleep(ctx, d) != nil {
		return waitEnded(ctx)
	}
	return nil
}

// backoff is a doubling delay with jitter, so that contenders that failed
// together do not come back together.
type backoff struct {
	next time.Duration
}

func newBackoff() *backoff { return &backoff{next: minBackoff} }

func (b *backoff) reset() { b.next = minBackoff }

// wait sleeps for the current delay, give or take half of it, and doubles
// the next one up to maxBackoff.
func (b *backoff) wait(ctx context.Context) error {
	d := b.next/2 + rand.N(b.next)
	b.next = min(2*b.next, maxBackoff)
	return sleepCtx(ctx, d)
}
