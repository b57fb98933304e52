package lockexec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// Fencing by time. A holder whose agent freezes, or that is cut off from the
// servers, cannot learn that its session was invalidated, and its command
// would run on while somebody else holds the lock. What it can know is when
// it last confirmed the session: the moment it SENT the last request that
// came back successful (a renewal, or the write that acquired the lock).
// Consul processed that request later, with the session still valid, so the
// session can only have been invalidated after it was sent, and nobody can
// acquire before the lock-delay that follows the invalidation has passed:
//
//	earliest other acquire  >=  confirmed + lockDelay
//
// (For a semaphore, which Consul gives no lock-delay, our contenders wait the
// same lockDelay after they first see a holder's session gone before they
// reuse its slot: see semaphoreHolder.prune.)
//
// So the command must be dead by confirmed + lockDelay - fenceMargin. If no
// later confirmation has come by then minus the kill grace, the fence cancels
// the lease's context: the command gets SIGTERM, and SIGKILL when the grace
// is over, at confirmed + lockDelay - fenceMargin at the latest. With the
// defaults (lock-delay 15s, margin 2s, grace 5s, a renewal every 2s):
//
//	confirmed ... +2s renew ... +8s SIGTERM ... +13s SIGKILL ... +15s others may acquire
//
// A stall of the agent shorter than about 6s (8s less one renewal interval)
// therefore costs nothing. Seen from a client agent, a leader election looks
// like any other failure to confirm (so does a partition, where the servers
// may well invalidate the session): one longer than that stops the command
// too. Measured on 3 servers with Consul's default raft timing, killing the
// leader did. A longer lock-delay buys more room, at the price of a longer
// wait for the next holder after a holder vanished.
const (
	// DefaultLockDelay is Consul's lock-delay for a session that asks for
	// none, and the period our semaphore contenders wait before reusing
	// the slot of a holder whose session vanished.
	DefaultLockDelay = 15 * time.Second

	// fenceMargin is how long before the earliest moment somebody else
	// could acquire the command must already be dead. It covers the
	// kernel delivering SIGKILL, timers firing late on a loaded machine,
	// and clocks that run at slightly different rates. (A raft leader cut
	// off from the others steps down when its leader lease runs out, before
	// they can elect another: a renewal it answered was answered before
	// anybody else could invalidate the session.)
	fenceMargin = 2 * time.Second

	// fenceConfirmInterval is how often a holder renews its session, each
	// success being a confirmation. Consul serves renewals from the
	// leader's memory, without a Raft write, so they are cheap.
	fenceConfirmInterval = 2 * time.Second

	// maxFenceKillGrace caps the kill grace used when the fence stops the
	// command: the grace comes out of the lock-delay.
	maxFenceKillGrace = DefaultKillGrace

	// minFenceSlack is the least time between a confirmation and the
	// fence's SIGTERM that a lock-delay must leave: two renewals, so that
	// one slow answer does not cost the lock.
	minFenceSlack = 2 * fenceConfirmInterval
)

// errNotConfirmed is the cause of a fence that fired because the session
// could not be confirmed in time.
var errNotConfirmed = errors.New("could not confirm the session in time")

// fence is the pure timing logic: when the session was last confirmed, and
// from that when the command must be stopped and when it must be dead.
type fence struct {
	lockDelay time.Duration
	grace     time.Duration // SIGTERM to SIGKILL when the fence stops the command

	mu        sync.Mutex
	confirmed time.Time // send time of the latest successful confirmation
}

// newFence returns the fence for a session with lockDelay (zero: Consul's
// default) whose command gets killGrace between SIGTERM and SIGKILL.
func newFence(lockDelay, killGrace time.Duration) *fence {
	if lockDelay == 0 {
		lockDelay = DefaultLockDelay
	}
	return &fence{lockDelay: lockDelay, grace: min(killGrace, maxFenceKillGrace)}
}

// fenceSlack is the time between a confirmation and the fence's SIGTERM.
func fenceSlack(lockDelay, killGrace time.Duration) time.Duration {
	f := newFence(lockDelay, killGrace)
	return f.lockDelay - fenceMargin - f.grace
}

// confirm records a confirmation by a request sent at sent. Answers may come
// back out of order; only the latest send time counts.
func (f *fence) confirm(sent time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if sent.After(f.confirmed) {
		f.confirmed = sent
	}
}

// confirmedAt is the send time of the latest confirmation.
func (f *fence) confirmedAt() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.confirmed
}

// stopAt is when the command must be sent SIGTERM unless a later
// confirmation comes first.
func (f *fence) stopAt() time.Time {
	return f.deadBy().Add(-f.grace)
}

// deadBy is when the command must be dead.
func (f *fence) deadBy() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.confirmed.Add(f.lockDelay - fenceMargin)
}

// watch cancels with a cause wrapping errNotConfirmed once stopAt passes
// without a later confirmation, or returns when done is closed. It sleeps
// until the current stopAt and looks again, so a confirmation needs no
// signalling.
func (f *fence) watch(done <-chan struct{}, cancel context.CancelCauseFunc) {
	for {
		at := f.stopAt()
		d := time.Until(at)
		if d <= 0 {
			cancel(fmt.Errorf("%w: %w: not confirmed since %s; the lock may be free from %s",
				ErrLockLost, errNotConfirmed, at.Add(-f.slack()).Format(time.RFC3339Nano),
				at.Add(f.grace+fenceMargin).Format(time.RFC3339Nano)))
			return
		}
		t := time.NewTimer(d)
		select {
		case <-done:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// slack is the time between a confirmation and stopAt.
func (f *fence) slack() time.Duration {
	return f.lockDelay - fenceMargin - f.grace
}

// renewer keeps the session alive and confirms it for the fence. It renews
// every ttl/2 while waiting, and every fenceConfirmInterval once holding.
// Every renewal has a deadline: a frozen agent must not hold it up, nor the
// fence that relies on it.
type renewer struct {
	client  *api.Client
	session string
	ttl     time.Duration
	fence   *fence
	log     hclog.Logger

	kick   chan struct{} // renew at once; buffered, one
	onGone func(error)   // called once if Consul says the session is gone

	mu      sync.Mutex
	holding bool
}

// hold switches to the holding cadence. If the last confirmation is older
// than a renewal interval (the lock came in on an old read, not a fresh
// write), it renews at once, so as not to start nearer the fence than
// usual; otherwise it adds no request to the hand-off.
func (r *renewer) hold() {
	r.mu.Lock()
	r.holding = true
	r.mu.Unlock()
	if time.Since(r.fence.confirmedAt()) <= fenceConfirmInterval {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// timeout bounds one renewal: while holding, short enough that a renewal
// lost in a stalled connection is retried well before the fence fires.
func (r *renewer) timeout() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holding {
		return 2 * fenceConfirmInterval
	}
	return callTimeout
}

func (r *renewer) interval() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holding {
		return fenceConfirmInterval
	}
	return r.ttl / 2
}

// run renews until ctx is done.
func (r *renewer) run(ctx context.Context) {
	failing := false
	for {
		wait := r.interval()
		sent := time.Now()
		gone, err := r.renew(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case gone:
			r.log.Warn("the session is gone", "session", r.session)
			r.onGone(fmt.Errorf("%w: Consul no longer knows session %s (invalidated)", ErrLockLost, r.session))
			return
		case err != nil:
			if !failing {
				r.log.Warn("renewing the session failed; retrying", "session", r.session, "error", err)
			}
			failing = true
			// Try again soon: each failure brings the fence closer.
			wait = min(wait, time.Second)
		default:
			if failing {
				r.log.Info("renewing the session works again", "session", r.session)
			}
			failing = false
			r.fence.confirm(sent)
		}
		t := time.NewTimer(max(0, wait-time.Since(sent)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// renew sends one renewal. gone reports that Consul answered that the
// session does not exist.
func (r *renewer) renew(ctx context.Context) (gone bool, err error) {
	rctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	entry, _, err := r.client.Session().Renew(r.session, (&api.WriteOptions{}).WithContext(rctx))
	if err != nil {
		return false, err
	}
	return entry == nil, nil
}
