package lockexec

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

const (
	// pruneInterval is how often, at most, a waiter that finds every slot
	// taken reads the contender keys to drop holders whose session died
	// without giving their slot back. Such a crash thus costs the others a
	// few seconds at most; the session TTL bounds it anyway.
	pruneInterval = 3 * time.Second

	// staleWait is how long a free slot may stay unclaimed by the
	// contenders we believe are ahead of us before we read the contender
	// keys again: they may have gone without our noticing.
	staleWait = 50 * time.Millisecond
)

// semaphoreHolder holds a slot of a semaphore (limit > 1) with the layout
// of consul's api.Semaphore: a contender key <prefix>/<session> acquired
// with our session, and the lock key <prefix>/.lock whose JSON value lists
// the limit and the sessions holding a slot, updated by check-and-set.
// Both carry api.SemaphoreFlagValue.
//
// api.Semaphore has every waiter and every holder's monitor block on the
// whole prefix, so each wakes and re-reads every key at each contender's
// arrival or departure, and all waiters race a check-and-set (a Raft
// write each) for every slot that frees: the cost grows with the square of
// the number of contenders. Here the queue is served oldest contender
// first: only as many of the oldest waiters as there are free slots try
// to take one; the waiters within a round of holders of the front block on
// the lock key alone; those further back block on the contender key of
// the waiter a round ahead of them, which changes once. The contender keys
// are read as a whole only now and then: to learn who is ahead, when the
// queue has moved, and to prune holders that died without giving their
// slot back.
type semaphoreHolder struct {
	client    *api.Client
	prefix    string // with a trailing slash: "x/a" must not list "x/ab/…"
	lockKey   string
	contender string
	session   string
	limit     int
	retries   int
	retryIn   time.Duration
	log       hclog.Logger
	sendClock
	// beforeTake is Options.BeforeTake, never nil.
	beforeTake func()
	// vanishPeriod is how long a holder's session must have been seen
	// gone before its slot is reused: our lock-delay (see fence.go).
	vanishPeriod time.Duration

	stopMonitor context.CancelFunc
	monitorDone sync.WaitGroup
	// lastLock is the lock key as the monitor last saw it listing us.
	// Only the monitor writes it; release reads it once the monitor is
	// done, and tries it first to save a read on the way out.
	lastLock *api.KVPair
	// waiting is who else waited when we got the slot, for the
	// hand-off at release (see handoff.go).
	waiting waiters
}

func newSemaphoreHolder(rn *run) *semaphoreHolder {
	o := &rn.opts
	return &semaphoreHolder{
		client:    rn.client,
		prefix:    o.Prefix + "/",
		lockKey:   o.lockKey(),
		contender: o.Prefix + "/" + rn.session,
		session:   rn.session,
		limit:     o.Limit,
		retries:   o.MonitorRetries,
		retryIn:   o.MonitorRetryTime,
		log:       rn.log,

		vanishPeriod: rn.fence.lockDelay,
		beforeTake:   o.beforeTake(),
	}
}

// queue is what a waiter knows of the contenders ahead of it, from its
// last read of the contender keys.
type queue struct {
	listed    time.Time           // when we last read them; zero before the first time
	lockIndex uint64              // the lock key's ModifyIndex then; 0 if it did not exist
	ahead     map[string]struct{} // older contenders not yet seen holding a slot
	order     []*api.KVPair       // their contender keys, oldest first, as listed
	younger   []*api.KVPair       // the contender keys after ours, oldest first
	own       uint64              // our contender key's ModifyIndex
	live      map[string]struct{} // sessions holding any key of the prefix
	// vanished is when we first saw each listed holder without a live
	// session. Kept across reads: the slot is reused vanishPeriod later.
	vanished map[string]time.Time
}

// semWait is the state of one wait for a slot.
type semWait struct {
	q        queue
	bo       *backoff
	index    uint64        // wait index on the lock key; 0 reads at once
	waitFor  time.Duration // the next blocking read's wait
	mustList bool          // read the contender keys before deciding
	// unlisted is when the last read that found us not holding was sent.
	// A hand-off found by the next read came after it: our session was
	// alive then, which makes it a confirmation for the fence.
	unlisted time.Time

	// What the last look found.
	pair *api.KVPair
	v    *semaphoreLockValue
	free int
	turn bool
}

func (s *semaphoreHolder) acquire(ctx context.Context) (lost <-chan struct{}, err error) {
	if err := s.createContender(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.withdraw()
		}
	}()
	w := &semWait{bo: newBackoff(), waitFor: blockingWait, mustList: true}
	for {
		if ctx.Err() != nil {
			return nil, waitEnded(ctx)
		}
		held, again, err := s.look(ctx, w)
		switch {
		case err != nil:
			return nil, err
		case held:
			// Handed to us: a read started by an earlier, failed take
			// came before the release that handed it, so a new one
			// must start now (see Options.BeforeTake).
			s.beforeTake()
			return s.heldAfter(w), nil
		case again:
			continue
		}
		if again, err := s.waitTurn(ctx, w); err != nil || again {
			if err != nil {
				return nil, err
			}
			continue
		}
		held, err = s.take(ctx, w)
		switch {
		case err != nil:
			return nil, err
		case held:
			return s.heldAfter(w), nil
		}
		// Someone changed it first: look again at once.
		w.index, w.waitFor = 0, blockingWait
	}
}

// look reads the lock key (blocking on it), and the contender keys when
// due, and works out whether it is our turn. held reports that we hold a
// slot already; again that the read must be repeated.
func (s *semaphoreHolder) look(ctx context.Context, w *semWait) (held, again bool, err error) {
	timedOut := false
	if !w.mustList {
		sent := time.Now()
		p, meta, again, err := waitRead(ctx, s.client.KV(), s.lockKey, w.index, w.waitFor, w.bo)
		if err != nil || again {
			w.index = 0
			return false, again, err
		}
		// A blocking wait that ran out unchanged means a free slot
		// nobody took, or a full semaphore nobody released for a while.
		timedOut = w.index != 0 && meta.LastIndex == w.index
		w.index = nextIndex(w.index, meta.LastIndex)
		held, err := s.sawLock(w, p)
		switch {
		case err != nil:
			return false, false, err
		case held:
			return true, false, s.confirmHanded(ctx, w)
		}
		w.unlisted = sent
		for id := range w.v.Holders {
			delete(w.q.ahead, id)
		}
		w.turn = s.myTurn(w.free, &w.q)
		w.mustList = timedOut || (!w.turn && time.Since(w.q.listed) >= pruneInterval)
	}
	if !w.mustList {
		return false, false, nil
	}
	w.mustList = false
	prev, first := w.q.lockIndex, w.q.listed.IsZero()
	p, err := s.refresh(ctx, &w.q)
	if err != nil {
		if ctx.Err() == nil && isTransient(err) {
			w.mustList = true
			return false, true, w.bo.wait(ctx)
		}
		return false, false, err
	}
	if held, err := s.sawLock(w, p); held || err != nil {
		// The list showed our contender key: the session was alive
		// after the list was sent, which refresh marked.
		return held, false, err
	}
	w.unlisted = s.sentAt()
	s.prune(w.v, &w.q, time.Now())
	w.index = w.q.lockIndex
	w.free = s.limit - len(w.v.Holders)
	w.turn = s.myTurn(w.free, &w.q)
	// A slot that stayed free through a whole wait although the
	// contenders ahead are still there: they are not taking it (one that
	// gave up but whose session lives on, say), so do.
	stalled := timedOut || (!first && w.q.lockIndex == prev)
	if !w.turn && w.free > 0 && stalled {
		w.turn = true
	}
	return false, false, nil
}

// sawLock decodes the lock key p into w and reports whether it lists us.
func (s *semaphoreHolder) sawLock(w *semWait, p *api.KVPair) (bool, error) {
	v, err := s.decode(p)
	if err != nil {
		return false, err
	}
	w.pair, w.v = p, v
	w.free = s.limit - len(v.Holders)
	return v.Holders[s.session], nil
}

// waitTurn waits when it is not our turn to take a slot: again reports
// that it did, and that we must look again.
func (s *semaphoreHolder) waitTurn(ctx context.Context, w *semWait) (again bool, err error) {
	switch {
	case !w.turn && len(w.q.ahead) >= 2*s.limit:
		// Far back: two full rounds of holders go before us, and
		// watching the lock key would wake us at every change for
		// nothing. Wait instead for the departure of the contender two
		// rounds ahead of us: with the queue served oldest first, all
		// older ones have had their turn by then, and we are still a
		// round from ours. (One round would do if holders gave their
		// slots back in the order they took them.)
		if err := s.waitForKey(ctx, w.q.far(2*s.limit), w.q.own, farWait(len(w.q.ahead), s.limit)); err != nil {
			return false, err
		}
		w.mustList = true
		return true, nil
	case w.free <= 0:
		w.waitFor = jitter(pruneInterval)
		if at, ok := w.q.nextPrune(s.vanishPeriod); ok {
			// Look again as soon as a vanished holder's slot is due.
			w.waitFor = min(w.waitFor, max(time.Until(at), staleWait))
		}
		return true, nil
	case !w.turn:
		w.waitFor = staleWait
		return true, nil
	}
	return false, nil
}

// take tries to add us to the holders by check-and-set. held is false when
// someone changed the key first or Consul turned us away for a moment.
func (s *semaphoreHolder) take(ctx context.Context, w *semWait) (held bool, err error) {
	s.beforeTake()
	w.v.Holders[s.session] = true
	next, err := s.encode(w.v, w.pair)
	if err != nil {
		return false, err
	}
	ok, err := s.write(func(kv *api.KV, wo *api.WriteOptions) (bool, error) {
		ok, _, err := kv.CAS(next, wo)
		return ok, err
	})
	switch {
	case err != nil && isTransient(err):
		return false, w.bo.wait(ctx)
	case err != nil:
		return false, fmt.Errorf("updating the semaphore %q: %w", s.lockKey, err)
	}
	return ok, nil
}

// createContender writes our contender key, which tells the others that
// we wait and which dies with our session. Its value says that we take a
// slot handed to us (see handoff.go).
func (s *semaphoreHolder) createContender(ctx context.Context) error {
	bo := newBackoff()
	for {
		ok, err := s.write(func(kv *api.KV, w *api.WriteOptions) (bool, error) {
			ok, _, err := kv.Acquire(&api.KVPair{Key: s.contender, Value: handoffValue, Session: s.session, Flags: api.SemaphoreFlagValue}, w)
			return ok, err
		})
		switch {
		case err != nil && isTransient(err):
			if err := bo.wait(ctx); err != nil {
				return err
			}
			continue
		case err != nil:
			return fmt.Errorf("creating the contender key %q: %w", s.contender, err)
		case !ok:
			return fmt.Errorf("creating the contender key %q: refused (session %s invalidated?)", s.contender, s.session)
		}
		return nil
	}
}

// refresh reads every key of the semaphore: it returns the lock key and
// brings q up to date with the contenders older than us.
func (s *semaphoreHolder) refresh(ctx context.Context, q *queue) (*api.KVPair, error) {
	rctx, cancel := callCtx(ctx)
	defer cancel()
	s.mark()
	pairs, _, err := s.client.KV().List(s.prefix, (&api.QueryOptions{}).WithContext(rctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil, waitEnded(ctx)
		}
		return nil, fmt.Errorf("reading the semaphore prefix %q: %w", s.prefix, err)
	}
	var lockPair, ours *api.KVPair
	for _, p := range pairs {
		switch p.Key {
		case s.lockKey:
			lockPair = p
		case s.contender:
			ours = p
		}
	}
	if ours == nil || ours.Session != s.session {
		return nil, fmt.Errorf("our contender key %q is gone: session %s was invalidated", s.contender, s.session)
	}
	q.listed = time.Now()
	q.own = ours.ModifyIndex
	q.lockIndex = 0
	if lockPair != nil {
		q.lockIndex = lockPair.ModifyIndex
	}
	q.ahead = make(map[string]struct{})
	q.order, q.younger = q.order[:0], q.younger[:0]
	for _, p := range pairs {
		switch {
		case !s.isContender(p) || p.Key == s.contender:
		case p.CreateIndex < ours.CreateIndex:
			q.ahead[p.Session] = struct{}{}
			q.order = append(q.order, p)
		default:
			q.younger = append(q.younger, p)
		}
	}
	sort.Slice(q.order, func(i, j int) bool { return q.order[i].CreateIndex < q.order[j].CreateIndex })
	sort.Slice(q.younger, func(i, j int) bool { return q.younger[i].CreateIndex < q.younger[j].CreateIndex })
	// Sessions seen here and their keys, for prune.
	q.alive(pairs)
	return lockPair, nil
}

// myTurn reports whether we should try for a slot, free being free. The
// oldest waiters go first, as many as there are free slots, plus one: a
// waiter that is slow to act (on a busy machine, one not scheduled yet)
// then does not hold up the hand-off, for the price of at most one failed
// check-and-set per slot.
func (s *semaphoreHolder) myTurn(free int, q *queue) bool {
	return free > 0 && len(q.ahead) < free+1
}

// far returns the contender key n places ahead of us among those
// waiting, as last listed. Only valid while at least n are ahead.
func (q *queue) far(n int) *api.KVPair {
	var waiting []*api.KVPair
	for _, p := range q.order {
		if _, ok := q.ahead[p.Session]; ok {
			waiting = append(waiting, p)
		}
	}
	return waiting[max(len(waiting)-n, 0)]
}

// waitForKey waits until the contender key p is gone, until a hand-off
// writes our own contender key (still at index own as we last listed it),
// or for about wait, whichever comes first: p's owner may also be stuck
// without ever taking a slot, and we then have to look around again.
func (s *semaphoreHolder) waitForKey(ctx context.Context, p *api.KVPair, own uint64, wait time.Duration) error {
	until := time.Now().Add(jitter(wait))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 2)
	go func() { done <- s.watchGone(wctx, p, until) }()
	go func() {
		_, err := s.watchChange(wctx, s.contender, own, until)
		done <- err
	}()
	err := <-done
	cancel()
	<-done
	switch {
	case ctx.Err() != nil:
		return waitEnded(ctx)
	case err != nil && isTransient(err):
		return newBackoff().wait(ctx)
	case err != nil:
		return fmt.Errorf("watching the contender keys %q and %q: %w", p.Key, s.contender, err)
	}
	return nil
}

// watchGone waits until the contender key p is gone or until. A change
// that leaves it in place (its owner handed a slot) is waited past.
func (s *semaphoreHolder) watchGone(ctx context.Context, p *api.KVPair, until time.Time) error {
	index := p.ModifyIndex
	for {
		pair, err := s.watchChange(ctx, p.Key, index, until)
		if err != nil || pair == nil || pair.Session != p.Session || !time.Now().Before(until) {
			return err
		}
		index = pair.ModifyIndex
	}
}

// watchChange is one blocking read of key past index, until at most.
func (s *semaphoreHolder) watchChange(ctx context.Context, key string, index uint64, until time.Time) (*api.KVPair, error) {
	wait := time.Until(until)
	if wait <= 0 {
		return nil, nil
	}
	rctx, cancel := blockingCtx(ctx, wait)
	defer cancel()
	pair, _, err := s.client.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(rctx))
	if ctx.Err() != nil {
		return nil, nil
	}
	return pair, err
}

// farWait is how long a waiter with ahead contenders before it waits at
// most for the one two rounds ahead before it looks around again: about
// pruneInterval a couple of rounds from its turn, longer further back (up
// to blockingWait), in proportion. Each look reads every contender key, so
// with a fixed period a long queue would read the whole prefix once per
// waiter per period, a cost that grows with the square of its length; in
// proportion, the reads per period grow with its logarithm.
func farWait(ahead, limit int) time.Duration {
	rounds := max(ahead/(2*limit), 1)
	return min(time.Duration(rounds)*pruneInterval, blockingWait)
}

// isContender reports whether p is a live contender key: one named after
// the session holding it.
func (s *semaphoreHolder) isContender(p *api.KVPair) bool {
	return p.Session != "" && p.Flags == api.SemaphoreFlagValue && p.Key == s.prefix+p.Session
}

// alive is filled in by refresh: the sessions holding any key of the
// prefix, as api.Semaphore counts them.
func (q *queue) alive(pairs api.KVPairs) {
	q.live = make(map[string]struct{}, len(pairs))
	for _, p := range pairs {
		if p.Session != "" {
			q.live[p.Session] = struct{}{}
		}
	}
}

// prune drops from v the holders whose session has been gone, by the
// contender keys listed in q, for vanishPeriod at now: they died without
// giving their slot back. Consul gives a semaphore no lock-delay, so this
// wait is ours: a holder whose agent froze may still be running its
// command, and its fence stops it before the same period has passed since
// its session could have vanished (see fence.go). A clean release takes the
// holder out of the lock key before its session goes, so it never pays
// this. prune also drops holders from the contenders ahead of us.
func (s *semaphoreHolder) prune(v *semaphoreLockValue, q *queue, now time.Time) {
	if q.vanished == nil {
		q.vanished = make(map[string]time.Time)
	}
	for id := range q.vanished {
		if _, listed := v.Holders[id]; !listed {
			delete(q.vanished, id)
		}
	}
	for id := range v.Holders {
		if _, ok := q.live[id]; ok || id == s.session {
			delete(q.vanished, id)
			delete(q.ahead, id)
			continue
		}
		since, seen := q.vanished[id]
		if !seen {
			// Seen gone now, so gone since at most now: the period runs
			// from here, which is never too early.
			q.vanished[id] = now
			s.log.Debug("a semaphore holder's session is gone; its slot is free after the lock delay",
				"prefix", s.prefix, "session", id, "delay", s.vanishPeriod)
			continue
		}
		if now.Sub(since) >= s.vanishPeriod {
			s.log.Debug("pruning a dead semaphore holder", "prefix", s.prefix, "session", id)
			delete(v.Holders, id)
			delete(q.vanished, id)
		}
	}
}

// nextPrune is when the first vanished holder's slot is due, if any.
func (q *queue) nextPrune(period time.Duration) (time.Time, bool) {
	var first time.Time
	for _, since := range q.vanished {
		if first.IsZero() || since.Before(first) {
			first = since
		}
	}
	return first.Add(period), !first.IsZero()
}

// decode reads the lock key's value, checking that it is a semaphore of
// our limit. A missing key is an empty semaphore of our limit.
func (s *semaphoreHolder) decode(pair *api.KVPair) (*semaphoreLockValue, error) {
	v := &semaphoreLockValue{Limit: s.limit}
	if pair == nil {
		v.Holders = map[string]bool{}
		return v, nil
	}
	if pair.Flags != api.SemaphoreFlagValue {
		return nil, fmt.Errorf("%w: %q has flags %#x, not a semaphore's", errConflict, s.lockKey, pair.Flags)
	}
	if len(pair.Value) > 0 {
		if err := json.Unmarshal(pair.Value, v); err != nil {
			return nil, fmt.Errorf("%w: decoding the semaphore %q: %v", errConflict, s.lockKey, err)
		}
	}
	if v.Limit != s.limit {
		return nil, fmt.Errorf("%w: %q has limit %d, ours is %d", errConflict, s.lockKey, v.Limit, s.limit)
	}
	if v.Holders == nil {
		v.Holders = map[string]bool{}
	}
	for id, held := range v.Holders {
		if !held {
			delete(v.Holders, id)
		}
	}
	return v, nil
}

// encode is the check-and-set write of v over old (nil: the key must not
// exist yet).
func (s *semaphoreHolder) encode(v *semaphoreLockValue, old *api.KVPair) (*api.KVPair, error) {
	if v.Holders == nil {
		// api.Semaphore writes into the map it decodes: never hand it null.
		v.Holders = map[string]bool{}
	}
	value, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encoding the semaphore %q: %w", s.lockKey, err)
	}
	next := &api.KVPair{Key: s.lockKey, Value: value, Flags: api.SemaphoreFlagValue}
	if old != nil {
		next.ModifyIndex = old.ModifyIndex
	}
	return next, nil
}

// write runs one write bounded by writeTimeout.
func (s *semaphoreHolder) write(f func(*api.KV, *api.WriteOptions) (bool, error)) (bool, error) {
	s.mark()
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	return f(s.client.KV(), (&api.WriteOptions{}).WithContext(ctx))
}

// held starts the monitors and returns the channel closed when the slot is
// lost. Two keys tell: the lock key, which must keep listing us, and our
// contender key, which goes with our session. Watching the lock key alone
// would miss a dead session until somebody pruned us.
func (s *semaphoreHolder) held() <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopMonitor = cancel
	lost := make(chan struct{})
	var once sync.Once
	watch := func(key string, still func(*api.KVPair) bool) {
		s.monitorDone.Add(1)
		go func() {
			defer s.monitorDone.Done()
			watchKey(ctx, s.client, key, s.retries, s.retryIn, s.log, still)
			if ctx.Err() == nil {
				once.Do(func() { close(lost) })
			}
		}()
	}
	watch(s.lockKey, func(pair *api.KVPair) bool {
		v, err := s.decode(pair)
		if pair != nil && err == nil && v.Holders[s.session] {
			s.lastLock = pair
			s.waiting.sawHolding(v.Holders)
			return true
		}
		return false
	})
	watch(s.contender, func(pair *api.KVPair) bool {
		return pair != nil && pair.Session == s.session
	})
	return lost
}

// release gives our slot back, handing it to the oldest waiter when that
// one is ready for it (see handoff.go), and deletes our contender key, all
// in one transaction.
func (s *semaphoreHolder) release() error {
	if s.stopMonitor != nil {
		s.stopMonitor()
		s.monitorDone.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	kv := s.client.KV()
	// First try with what we know: the lock key as the monitor last saw
	// it, and the waiters listed when we got the slot. If either is out
	// of date the transaction fails, and we read both afresh.
	pair, waiting := s.lastLock, s.waiting.known()
	s.lastLock = nil
	for try := 0; ; try++ {
		known := pair != nil && waiting != nil
		if !known {
			var err error
			if pair, waiting, err = s.readSemaphore(ctx); err != nil {
				return err
			}
		}
		if pair == nil || pair.Flags != api.SemaphoreFlagValue {
			break
		}
		var v semaphoreLockValue
		if err := json.Unmarshal(pair.Value, &v); err != nil || !v.Holders[s.session] {
			// Not ours to rewrite, or nothing of ours in it.
			break
		}
		var next *api.KVPair
		if try < handoffTries {
			next = successor(waiting, v.Holders)
		}
		if next == nil && known {
			// Nobody we knew of is ready: somebody newer may be.
			pair, waiting = nil, nil
			continue
		}
		done, stale, err := s.giveBack(ctx, pair, next)
		switch {
		case done || err != nil:
			return err
		case stale && known:
			// Another holder wrote the lock key first, most likely
			// handing its slot on too: read the key alone, and skip
			// whoever it lists now.
			if pair, _, err = kv.Get(s.lockKey, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				return fmt.Errorf("reading the semaphore %q: %w", s.lockKey, err)
			}
			if v, err := s.decode(pair); err == nil {
				s.waiting.sawHolding(v.Holders)
			}
			waiting = s.waiting.known()
			if pair == nil {
				// Gone: nothing of ours left in it.
				waiting = nil
			}
		default:
			// The waiter moved on, or what we knew was out of date:
			// read both again.
			pair, waiting = nil, nil
		}
	}
	if _, err := kv.Delete(s.contender, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("deleting the contender key %q: %w", s.contender, err)
	}
	return nil
}

// withdraw undoes a wait that ends without a slot. It deletes our contender
// key first, so that nobody can hand us a slot any more, then takes us out
// of the holders in case a hand-off came meanwhile. If it fails, the
// session's destruction deletes the key, and the others reuse a slot it
// was handed after the lock delay.
func (s *semaphoreHolder) withdraw() {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	kv := s.client.KV()
	if _, err := kv.Delete(s.contender, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		s.log.Debug("deleting the contender key failed", "key", s.contender, "error", err)
		return
	}
	for {
		pair, _, err := kv.Get(s.lockKey, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || pair == nil || pair.Flags != api.SemaphoreFlagValue {
			return
		}
		var v semaphoreLockValue
		if err := json.Unmarshal(pair.Value, &v); err != nil || !v.Holders[s.session] {
			return
		}
		delete(v.Holders, s.session)
		next, err := s.encode(&v, pair)
		if err != nil {
			return
		}
		if ok, _, err := kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx)); err != nil || ok {
			if err != nil {
				s.log.Debug("giving back a slot handed to us failed", "key", s.lockKey, "error", err)
			}
			return
		}
	}
}

// confirmHanded sets the fence's starting point for a slot that a read of
// the lock key found ours (handed over, or taken by a write whose answer
// was lost). The others reuse a slot whose holder vanished only a lock
// delay after they see it listed and gone, and we were listed after the
// last read that found us not: its send time is a safe start. If that read
// is old, a read of our contender key, found with our session, confirms
// the session afresh, so that the fence does not start near its end.
func (s *semaphoreHolder) confirmHanded(ctx context.Context, w *semWait) error {
	if !w.unlisted.IsZero() && time.Since(w.unlisted) <= fenceConfirmInterval {
		s.sent = w.unlisted
		return nil
	}
	for {
		rctx, cancel := callCtx(ctx)
		sent := time.Now()
		p, _, err := s.client.KV().Get(s.contender, (&api.QueryOptions{}).WithContext(rctx))
		cancel()
		switch {
		case err == nil && (p == nil || p.Session != s.session):
			return fmt.Errorf("our contender key %q is gone: session %s was invalidated", s.contender, s.session)
		case err == nil:
			s.sent = sent
			return nil
		case ctx.Err() != nil:
			return waitEnded(ctx)
		case isTransient(err):
			if err := w.bo.wait(ctx); err != nil {
				return err
			}
		default:
			return fmt.Errorf("reading our contender key %q: %w", s.contender, err)
		}
	}
}

func (s *semaphoreHolder) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	kv := s.client.KV()
	pairs, _, err := kv.List(s.prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	var lockPair *api.KVPair
	for _, p := range pairs {
		switch {
		case p.Key == s.lockKey:
			lockPair = p
		case s.isContender(p) && p.Session != s.session:
			// Someone waits, and would only write the key again.
			return nil
		}
	}
	if lockPair == nil {
		return nil
	}
	v, err := s.decode(lockPair)
	if err != nil {
		// Someone else's now; theirs to tidy up.
		return nil
	}
	// Holders whose session is gone count too: deleting the key would free
	// their slots before the lock delay that prune gives them.
	if len(v.Holders) > 0 {
		return nil
	}
	// The CAS keeps us from deleting a key someone updated meanwhile.
	_, _, err = kv.DeleteCAS(lockPair, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// jitter spreads d over [d, 1.5d), so that waiters that started together
// do not all come back together.
func jitter(d time.Duration) time.Duration {
	return d + rand.N(d/2)
}
