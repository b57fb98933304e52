package lockexec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/hashicorp/consul/api"
)

// Hand-off. A semaphore holder that gives its slot back writes the lock
// key in one transaction that takes itself out of the holders, puts the
// oldest waiter in, and deletes its own contender key. The slot never
// stands free, no waiter races another for it, and the waiter holds it as
// soon as its read of the lock key returns: one write and one wake-up per
// hand-over, where a freed slot costs a second write and, with several
// waiters trying, failed check-and-sets, and wakes every waiter twice.
//
// Only a waiter whose contender key carries handoffValue is handed a slot:
// `consul lock` (api.Semaphore would count itself among the holders and
// wait on) and older versions of ct-supervise are not. If the oldest waiter
// is one of those, the slot is given back as before and the waiters take
// it: nobody jumps the queue. The transaction checks that the waiter's
// contender key is unchanged since it was read, so a waiter that left or
// died meanwhile is not put in; a waiter that stops waiting deletes its
// contender key before it gives back a slot it may have been handed (see
// withdraw).
//
// A waiter far back in the queue watches the contender key of the one two
// rounds ahead rather than the lock key (see waitTurn), and its own: the
// transaction rewrites the waiter's contender key unchanged, which wakes
// it.
var handoffValue = []byte("ct-supervise:handoff")

const (
	// handoffTries bounds the hand-off transactions one release tries
	// before it gives the slot back plainly: each failed one found the
	// lock key or the chosen waiter changed meanwhile.
	handoffTries = 3
)

// waiters is who waited besides us when we got the slot, less those seen
// holding a slot since: a session waits only once, so one seen holding
// never waits again.
type waiters struct {
	mu     sync.Mutex
	listed bool
	pairs  []*api.KVPair // contender keys other than ours, oldest first
	seen   map[string]bool
}

// sawHolding records sessions the lock key listed as holders.
func (w *waiters) sawHolding(holders map[string]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seen == nil {
		w.seen = make(map[string]bool)
	}
	for id := range holders {
		w.seen[id] = true
	}
}

// known is the listed waiters not seen holding since, oldest first; nil
// if the list was not read (yet).
func (w *waiters) known() []*api.KVPair {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.listed {
		return nil
	}
	out := make([]*api.KVPair, 0, len(w.pairs))
	for _, p := range w.pairs {
		if !w.seen[p.Session] {
			out = append(out, p)
		}
	}
	return out
}

// heldAfter starts holding (see held), keeping from the wait w who else
// waits, for the hand-off at release: the `consul lock` contenders ahead of
// us that we never saw holding a slot (ones we passed, which keep their
// place), and those behind us, as last listed. Whoever took a
// slot since is left out as the monitor sees it in the lock key; a
// waiter that left since fails the transaction's check, and release then
// lists afresh. This spares a list of the whole prefix per hand-off.
func (s *semaphoreHolder) heldAfter(w *semWait) <-chan struct{} {
	pairs := make([]*api.KVPair, 0, len(w.q.ahead)+len(w.q.younger))
	for _, p := range w.q.order {
		// One of ours still ahead was passed as stalled, or is taking
		// another free slot right now: handing it ours could leave the
		// slot idle (a waiter killed with its session alive) until the
		// others prune it. `consul lock`'s keep their place, so that we
		// give back plainly rather than jump them.
		if _, ok := w.q.ahead[p.Session]; ok && !bytes.Equal(p.Value, handoffValue) {
			pairs = append(pairs, p)
		}
	}
	pairs = append(pairs, w.q.younger...)
	s.waiting.mu.Lock()
	s.waiting.listed, s.waiting.pairs = !w.q.listed.IsZero(), pairs
	s.waiting.mu.Unlock()
	if w.v != nil {
		s.waiting.sawHolding(w.v.Holders)
	}
	return s.held()
}

// readSemaphore reads the lock key and the contender keys other than
// ours, oldest first, in one request.
func (s *semaphoreHolder) readSemaphore(ctx context.Context) (lock *api.KVPair, waiting []*api.KVPair, err error) {
	pairs, _, err := s.client.KV().List(s.prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the semaphore prefix %q: %w", s.prefix, err)
	}
	for _, p := range pairs {
		switch {
		case p.Key == s.lockKey:
			lock = p
		case s.isContender(p) && p.Key != s.contender:
			waiting = append(waiting, p)
		}
	}
	sort.Slice(waiting, func(i, j int) bool { return waiting[i].CreateIndex < waiting[j].CreateIndex })
	return lock, waiting, nil
}

// successor is the waiter to hand our slot to: the oldest contender not
// holding a slot, if it is ready for a hand-off; nil otherwise.
func successor(waiting []*api.KVPair, holders map[string]bool) *api.KVPair {
	for _, p := range waiting {
		if holders[p.Session] {
			continue
		}
		if bytes.Equal(p.Value, handoffValue) {
			return p
		}
		return nil
	}
	return nil
}

// giveBack takes us out of the holders of the lock key pair and deletes
// our contender key in one transaction, handing the slot to a waiter when
// one is ready. done is false when the lock key (stale) or the waiter
// changed meanwhile.
func (s *semaphoreHolder) giveBack(ctx context.Context, pair *api.KVPair, next *api.KVPair) (done, stale bool, err error) {
	var v semaphoreLockValue
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		return false, false, fmt.Errorf("decoding the semaphore %q: %w", s.lockKey, err)
	}
	delete(v.Holders, s.session)
	if next != nil {
		v.Holders[next.Session] = true
	}
	lock, err := s.encode(&v, pair)
	if err != nil {
		return false, false, err
	}
	ops := api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: lock.Key, Value: lock.Value, Flags: lock.Flags, Index: lock.ModifyIndex}},
		{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: s.contender}},
	}
	if next != nil {
		// Rewritten as it was, by check-and-set: it fails if the waiter
		// left or died since we read it, and the write wakes a waiter
		// watching its own key rather than the lock key (see
		// waitForKey). Consul keeps the key's session.
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCAS, Key: next.Key, Value: next.Value, Flags: next.Flags, Index: next.ModifyIndex}})
	}
	ok, resp, _, err := s.client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, false, fmt.Errorf("updating the semaphore %q: %w", s.lockKey, err)
	}
	if ok {
		if next != nil {
			s.log.Debug("semaphore slot handed over", "prefix", s.prefix, "to", next.Session)
		}
		return true, false, nil
	}
	// Which check failed: the lock key's (stale), or the waiter's.
	stale = resp == nil || len(resp.Errors) == 0
	if resp != nil {
		for _, e := range resp.Errors {
			stale = stale || e.OpIndex == 0
		}
	}
	return false, stale, nil
}
