package lockexec

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

// The queue of a plain lock. Every waiter blocking on the lock key wakes
// when it is released, and every one of them then sends an acquire, a Raft
// write each, of which one wins: a herd of K writes and K-1 re-reads per
// hand-over, which on a small machine makes the hand-over slower the more
// waiters there are. So our waiters queue first, each behind the one ahead
// of it, as in ZooKeeper's lock recipe, and only the front one waits on
// the lock key: a release then wakes one waiter, which writes once.
//
// A run that finds the lock free takes it without queueing (see
// lockHolder.takeIfFree). Otherwise it writes <prefix>/.queue/<session>,
// acquired with its session, and lists the queue once: the live keys
// created before its own are the waiters ahead of it, oldest first. Any waiter older than us wrote its key
// before ours, so that one list knows them all; younger ones queue behind
// us. It then watches only the key just ahead of it; when that goes, the
// next one ahead, from the list (one read shows whether it is still
// there). With none left ahead it is the front waiter, and takes the lock
// exactly as it did without a queue (see lockHolder.take), except that
// the write that takes the lock deletes its queue key in the same
// transaction, so that the next one moves up to wait on the lock key,
// ready for our release, without a write of ours beside our command.
//
// Invariants:
//   - The queue only decides when a waiter starts to contend for the lock
//     key; who holds the lock is decided there alone, as before. So the
//     queue cannot break mutual exclusion, and `consul lock` (which knows
//     nothing of it, and competes with our front waiter) still excludes us
//     and we it.
//   - Every failure of the queue (a key we may not write, a list or read
//     that fails for good) makes the waiter a front waiter: the old herd,
//     never a stall.
//   - A queue key whose session is not the one it is named for is gone:
//     lock sessions release their keys (Behavior=release), so a waiter
//     whose session ended (destroyed, or run out) leaves its key with no
//     session. Whoever meets such a key deletes it by check-and-set.
//   - A waiter ahead whose session lives on but which never takes the lock
//     (its process hangs, or was killed and its session has not run out
//     yet) must not stall the queue: the waiter just behind the front one
//     looks at the lock key whenever its bounded watch ends, and once it
//     has seen the lock free twice in a row it deletes the front one's key
//     and contends itself. If wrongly (the front one was waiting out a
//     lock-delay), two waiters contend for a while: all of them did before.
//   - A waiter that stops waiting, and a holder by the time it gives the
//     lock back, has deleted its queue key (best effort: a key left
//     behind loses its session with ours and is tidied by the others).

const (
	// queueDir is where, under the prefix, waiters queue for the lock.
	queueDir = ".queue/"

	// queueFlagValue marks a queue key, as api.LockFlagValue marks the
	// lock key.
	queueFlagValue uint64 = 0x2ddccbc058a50c1a

	// queueNearWait bounds the watch of the waiter just behind the front
	// one (plus up to half again, at random): each time it ends, that
	// waiter looks whether the lock stands free with nobody taking it. Two
	// such looks bound the stall a stuck front waiter causes.
	queueNearWait = 2 * time.Second

	// queueFarWait bounds the watch of a waiter further back: each time it
	// ends, it checks whether the oldest waiter it knows of is still there,
	// so that it finds out when it has become the second one.
	queueFarWait = 10 * time.Second
)

// queueValue is what a queue key holds; only for whoever reads the KV.
var queueValue = []byte("ct-supervise: waiting for the lock")

// lockQueue is our place in the queue of a plain lock.
type lockQueue struct {
	client  *api.Client
	dir     string // <prefix>/.queue/
	key     string // dir + our session
	session string
	log     hclog.Logger

	// joined is set once we have sent the write of our key: from then on
	// it must be deleted when we stop waiting or hold the lock.
	joined bool
	// left is closed when the deletion started by leaveAsync is done; nil
	// when none was started or it has been waited for.
	left chan struct{}
}

func newLockQueue(client *api.Client, prefix, session string, log hclog.Logger) *lockQueue {
	dir := prefix + "/" + queueDir
	return &lockQueue{client: client, dir: dir, key: dir + session, session: session, log: log}
}

// isEntry reports whether p is a queue key, live or left over.
func (q *lockQueue) isEntry(p *api.KVPair) bool {
	return p.Flags == queueFlagValue && strings.HasPrefix(p.Key, q.dir) && !strings.Contains(p.Key[len(q.dir):], "/")
}

// isLive reports whether p is a queue key whose waiter is still there:
// held by the session it is named for.
func (q *lockQueue) isLive(p *api.KVPair) bool {
	return p != nil && q.isEntry(p) && p.Session != "" && p.Key == q.dir+p.Session
}

// waitTurn joins the queue and returns once no live waiter is ahead of us
// (or one ahead is stuck): then we are the front waiter. It fails only when
// ctx is done, with waitEnded.
func (q *lockQueue) waitTurn(ctx context.Context, lockKey string) error {
	ahead, err := q.join(ctx)
	if err == nil && len(ahead) > 0 {
		err = q.watch(ctx, lockKey, ahead)
	}
	switch {
	case ctx.Err() != nil:
		return waitEnded(ctx)
	case err != nil:
		q.log.Debug("the lock's queue failed; waiting on the lock key with everyone", "key", q.key, "error", err)
	}
	return nil
}

// join writes our queue key and returns the live waiters ahead of us,
// oldest first, tidying up the keys of dead waiters it meets.
func (q *lockQueue) join(ctx context.Context) ([]*api.KVPair, error) {
	kv := q.client.KV()
	// Bound by ctx, so that -try and a stop are not held up by this write
	// to an agent that does not answer (leave, which follows, has its own
	// bound): a write cancelled in flight may still go through, but joined
	// makes leave delete it whatever happened.
	q.joined = true
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	ok, _, err := kv.Acquire(&api.KVPair{Key: q.key, Session: q.session, Flags: queueFlagValue, Value: queueValue},
		(&api.WriteOptions{}).WithContext(wctx))
	cancel()
	if err != nil {
		if answered(err) {
			// Turned down (a 403, a 429): no key of ours to delete.
			q.joined = false
		}
		return nil, fmt.Errorf("writing the queue key %q: %w", q.key, err)
	}
	if !ok {
		q.joined = false
		return nil, fmt.Errorf("writing the queue key %q: refused", q.key)
	}
	lctx, cancel := callCtx(ctx)
	defer cancel()
	pairs, _, err := kv.List(q.dir, (&api.QueryOptions{}).WithContext(lctx))
	if err != nil {
		return nil, fmt.Errorf("listing the queue %q: %w", q.dir, err)
	}
	var mine *api.KVPair
	for _, p := range pairs {
		if p.Key == q.key && p.Session == q.session {
			mine = p
		}
	}
	if mine == nil {
		return nil, fmt.Errorf("our queue key %q is not in the queue", q.key)
	}
	var ahead []*api.KVPair
	for _, p := range pairs {
		switch {
		case !q.isEntry(p) || p == mine:
		case !q.isLive(p):
			q.dropLeftover(ctx, p)
		case p.CreateIndex < mine.CreateIndex:
			ahead = append(ahead, p)
		}
	}
	sort.Slice(ahead, func(i, j int) bool { return ahead[i].CreateIndex < ahead[j].CreateIndex })
	q.log.Debug("queued for the lock", "key", q.key, "ahead", len(ahead))
	return ahead, nil
}

// watch waits until every waiter in ahead (oldest first) has gone, or the
// last one left, the front one, is stuck. It watches the last one, then the
// one before it, and so on.
func (q *lockQueue) watch(ctx context.Context, lockKey string, ahead []*api.KVPair) error {
	kv := q.client.KV()
	bo := newBackoff()
	index := ahead[len(ahead)-1].ModifyIndex
	freeOnce := false // the lock stood free at our last look
	for len(ahead) > 0 {
		next := ahead[len(ahead)-1]
		wait := queueFarWait
		if len(ahead) == 1 {
			wait = queueNearWait
		}
		pair, meta, again, err := waitRead(ctx, kv, next.Key, index, wait+rand.N(wait/2), bo)
		switch {
		case err != nil:
			return err
		case again:
			continue
		}
		bo.reset()
		if !q.isLive(pair) {
			// Gone: on to the one ahead of it, read afresh.
			q.dropLeftover(ctx, pair)
			ahead, index, freeOnce = ahead[:len(ahead)-1], 0, false
			continue
		}
		index = nextIndex(index, meta.LastIndex)
		// Still there: the wait ran out (its key does not change while it
		// waits).
		if len(ahead) > 1 {
			ahead = q.prune(ctx, ahead)
			continue
		}
		free, err := q.lockFree(ctx, lockKey)
		if err != nil {
			return err
		}
		if free && freeOnce {
			// Its key goes too, unless it changed: the waiters behind us
			// would otherwise each wait for it in turn.
			q.log.Debug("the waiter ahead leaves the lock free; contending for it", "ahead", next.Key)
			q.deleteCAS(ctx, pair)
			return nil
		}
		freeOnce = free
	}
	return nil
}

// prune drops from the front of ahead the waiters that have gone, leaving
// at least the last one (which the caller watches). It reads one key when
// the oldest is still there.
func (q *lockQueue) prune(ctx context.Context, ahead []*api.KVPair) []*api.KVPair {
	for len(ahead) > 1 {
		rctx, cancel := callCtx(ctx)
		pair, _, err := q.client.KV().Get(ahead[0].Key, (&api.QueryOptions{}).WithContext(rctx))
		cancel()
		if err != nil || q.isLive(pair) {
			return ahead
		}
		q.dropLeftover(ctx, pair)
		ahead = ahead[1:]
	}
	return ahead
}

// lockFree reads the lock key: whether nobody holds it.
func (q *lockQueue) lockFree(ctx context.Context, lockKey string) (bool, error) {
	rctx, cancel := callCtx(ctx)
	defer cancel()
	pair, _, err := q.client.KV().Get(lockKey, (&api.QueryOptions{}).WithContext(rctx))
	switch {
	case err != nil && isTransient(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("reading the lock key %q: %w", lockKey, err)
	}
	return pair == nil || pair.Session == "", nil
}

// dropLeftover deletes p, a queue key whose waiter has gone, if nothing
// changed it since it was read. Best effort: it is only tidying up.
func (q *lockQueue) dropLeftover(ctx context.Context, p *api.KVPair) {
	if p != nil && q.isEntry(p) && p.Session == "" {
		q.deleteCAS(ctx, p)
	}
}

// deleteCAS deletes the queue key p of another waiter, unless it changed
// since it was read. Best effort: only the order of the waiters is at
// stake, never who holds the lock.
func (q *lockQueue) deleteCAS(ctx context.Context, p *api.KVPair) {
	dctx, cancel := callCtx(ctx)
	defer cancel()
	if _, _, err := q.client.KV().DeleteCAS(p, (&api.WriteOptions{}).WithContext(dctx)); err != nil {
		q.log.Debug("deleting another waiter's queue key failed", "key", p.Key, "error", err)
	}
}

// takeOps are what a take adds to its write: the deletion of our queue
// key, in the same transaction, so that the next waiter moves up without a
// write of ours beside our command's start (on a small machine that write
// competes with the fork). Nil when we are not in the queue.
func (q *lockQueue) takeOps() api.TxnOps {
	if !q.joined {
		return nil
	}
	return api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: q.key}}}
}

// took records that our queue key went with the take: nothing is left to
// delete.
func (q *lockQueue) took() { q.joined = false }

// abandon stops deleting our queue key, with the take or afterwards: we
// may not delete it, and it goes with our session.
func (q *lockQueue) abandon() { q.joined = false }

// leave deletes our queue key, if we wrote it, retrying transient failures
// for up to writeTimeout.
func (q *lockQueue) leave() {
	if !q.joined {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	err := retryTransient(ctx, func() error {
		_, err := q.client.KV().Delete(q.key, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		q.log.Debug("deleting our queue key failed; it goes with our session", "key", q.key, "error", err)
	}
}

// leaveAsync starts leave in the background, for a holder whose queue key
// did not go with its take (a take that went through unanswered): the
// key is deleted while the command starts, not before. waitLeft waits for
// it.
func (q *lockQueue) leaveAsync() {
	if !q.joined {
		return
	}
	q.left = make(chan struct{})
	go func() {
		defer close(q.left)
		q.leave()
	}()
}

// waitLeft waits for the deletion leaveAsync started, if any.
func (q *lockQueue) waitLeft() {
	if q.left != nil {
		<-q.left
		q.left = nil
	}
}

// tidy deletes the queue keys dead waiters left behind. Best effort: a key
// left is only clutter, which the next waiters delete.
func (q *lockQueue) tidy(ctx context.Context) error {
	pairs, _, err := q.client.KV().List(q.dir, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pairs {
		if q.isEntry(p) && p.Session == "" {
			_, _, err := q.client.KV().DeleteCAS(p, (&api.WriteOptions{}).WithContext(ctx))
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
