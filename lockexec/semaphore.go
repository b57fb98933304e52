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

	// What the last look found.
	pair *api.KVPair
	v    *semaphoreLockValue
	free int
	turn bool
}

func (s *semaphoreHolder) acquire(ctx context.Context) (<-chan struct{}, error) {
	if err := s.createContender(ctx); err != nil {
		return nil, err
	}
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
			return s.held(), nil
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
			return s.held(), nil
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
		s.mark()
		p, meta, again, err := waitRead(ctx, s.client.KV(), s.lockKey, w.index, w.waitFor, w.bo)
		if err != nil || again {
			w.index = 0
			return false, again, err
		}
		// A blocking wait that ran out unchanged means a free slot
		// nobody took, or a full semaphore nobody released for a while.
		timedOut = w.index != 0 && meta.LastIndex == w.index
		w.index = nextIndex(w.index, meta.LastIndex)
		if held, err := s.sawLock(w, p); held || err != nil {
			return held, false, err
		}
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
		return held, false, err
	}
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
		if err := s.waitForKey(ctx, w.q.far(2*s.limit)); err != nil {
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
// we wait and which dies with our session.
func (s *semaphoreHolder) createContender(ctx context.Context) error {
	bo := newBackoff()
	for {
		ok, err := s.write(func(kv *api.KV, w *api.WriteOptions) (bool, error) {
			ok, _, err := kv.Acquire(&api.KVPair{Key: s.contender, Session: s.session, Flags: api.SemaphoreFlagValue}, w)
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
	q.lockIndex = 0
	if lockPair != nil {
		q.lockIndex = lockPair.ModifyIndex
	}
	q.ahead = make(map[string]struct{})
	q.order = q.order[:0]
	for _, p := range pairs {
		if s.isContender(p) && p.Key != s.contender && p.CreateIndex < ours.CreateIndex {
			q.ahead[p.Session] = struct{}{}
			q.order = append(q.order, p)
		}
	}
	sort.Slice(q.order, func(i, j int) bool { return q.order[i].CreateIndex < q.order[j].CreateIndex })
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

// waitForKey waits until the contender key p is gone or changes, or for
// about pruneInterval, whichever comes first: its owner may also be stuck
// without ever taking a slot, and we then have to look around again.
func (s *semaphoreHolder) waitForKey(ctx context.Context, p *api.KVPair) error {
	wait := jitter(pruneInterval)
	rctx, cancel := blockingCtx(ctx, wait)
	defer cancel()
	opts := (&api.QueryOptions{WaitIndex: p.ModifyIndex, WaitTime: wait}).WithContext(rctx)
	_, _, err := s.client.KV().Get(p.Key, opts)
	switch {
	case ctx.Err() != nil:
		return waitEnded(ctx)
	case err != nil && isTransient(err):
		return newBackoff().wait(ctx)
	case err != nil:
		return fmt.Errorf("watching the contender key %q: %w", p.Key, err)
	}
	return nil
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
			return true
		}
		return false
	})
	watch(s.contender, func(pair *api.KVPair) bool {
		return pair != nil && pair.Session == s.session
	})
	return lost
}

func (s *semaphoreHolder) release() error {
	if s.stopMonitor != nil {
		s.stopMonitor()
		s.monitorDone.Wait()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	kv := s.client.KV()
	pair := s.lastLock
	s.lastLock = nil
	for {
		if pair == nil {
			var err error
			if pair, _, err = kv.Get(s.lockKey, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				return fmt.Errorf("reading the semaphore %q: %w", s.lockKey, err)
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
		delete(v.Holders, s.session)
		next, err := s.encode(&v, pair)
		if err != nil {
			return err
		}
		ok, _, err := kv.CAS(next, (&api.WriteOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("updating the semaphore %q: %w", s.lockKey, err)
		}
		if ok {
			break
		}
		// Someone changed it meanwhile: read it again.
		pair = nil
	}
	if _, err := kv.Delete(s.contender, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("deleting the contender key %q: %w", s.contender, err)
	}
	return nil
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
