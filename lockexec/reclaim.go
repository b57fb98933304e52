package lockexec

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// Reclaim gives back the lock (limit 1) or the semaphore slot (limit > 1)
// at prefix that session holds, and then destroys the session. It is for a
// run that died without giving back what it held (a worker killed
// mid-action), whose session the caller knows (Options.OnSession).
//
// It gives back the way the holder itself would have: the lock key is
// released, or the session taken out of the semaphore's holders by
// check-and-set and its contender key deleted, before the session goes.
// So no lock-delay applies, and the next holder gets in at once. That is
// only safe because the caller guarantees that the dead run's command is
// already gone: Reclaim skips the fence.
//
// Nothing held by session is not an error: the session is destroyed
// anyway. Every request is bounded by ctx and callTimeout.
func (r *Runner) Reclaim(ctx context.Context, prefix string, limit int, session string) error {
	o := Options{Prefix: prefix, Limit: limit}
	if err := o.validateLock(); err != nil {
		return err
	}
	if session == "" {
		return fmt.Errorf("%w: no session to reclaim", ErrInvalidOptions)
	}
	if r == nil || r.client == nil {
		return fmt.Errorf("%w: no Consul client", ErrInvalidOptions)
	}
	o = o.withDefaults()
	var err error
	if o.Limit == 1 {
		err = r.reclaimLock(ctx, o.Prefix, o.lockKey(), session)
	} else {
		err = r.reclaimSlot(ctx, o.Prefix, o.lockKey(), session)
	}
	if err != nil {
		return consulError(fmt.Sprintf("reclaiming %q from session %s", prefix, session), err)
	}
	cctx, cancel := callCtx(ctx)
	defer cancel()
	if _, err := r.client.Session().Destroy(session, (&api.WriteOptions{}).WithContext(cctx)); err != nil {
		return consulError(fmt.Sprintf("reclaiming %q: destroying session %s", prefix, session), err)
	}
	return nil
}

// reclaimLock releases key if session holds it, then deletes session's
// queue key (see lockQueue), which would otherwise stay behind once the
// session is destroyed: lock sessions release their keys, they do not
// delete them.
func (r *Runner) reclaimLock(ctx context.Context, prefix, key, session string) error {
	cctx, cancel := callCtx(ctx)
	defer cancel()
	_, _, err := r.client.KV().Release(&api.KVPair{Key: key, Session: session, Flags: api.LockFlagValue},
		(&api.WriteOptions{}).WithContext(cctx))
	if err != nil {
		return fmt.Errorf("releasing the lock key %q: %w", key, err)
	}
	// Best effort: a queue key left behind loses its session when Reclaim
	// destroys it, and the waiters behind it then pass it and tidy it.
	queued := prefix + "/" + queueDir + session
	_, _ = r.client.KV().Delete(queued, (&api.WriteOptions{}).WithContext(cctx))
	return nil
}

// reclaimSlot deletes session's contender key, then takes session out of
// the semaphore's holders. In that order, as a waiter that stops does (see
// withdraw): once the key is gone no holder can hand the dead run a slot,
// which would otherwise sit idle until the others prune it after the lock
// delay.
func (r *Runner) reclaimSlot(ctx context.Context, prefix, lockKey, session string) error {
	cctx, cancel := callCtx(ctx)
	contender := prefix + "/" + session
	_, err := r.client.KV().Delete(contender, (&api.WriteOptions{}).WithContext(cctx))
	cancel()
	if err != nil {
		return fmt.Errorf("deleting the contender key %q: %w", contender, err)
	}
	for {
		done, err := r.dropHolder(ctx, lockKey, session)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		// Changed since we read it: read again.
		if err := newBackoff().wait(ctx); err != nil {
			return err
		}
	}
}

// dropHolder removes session from the semaphore's holders by one
// check-and-set. done is false if someone changed the key meanwhile.
func (r *Runner) dropHolder(ctx context.Context, lockKey, session string) (done bool, err error) {
	cctx, cancel := callCtx(ctx)
	defer cancel()
	kv := r.client.KV()
	pair, _, err := kv.Get(lockKey, (&api.QueryOptions{}).WithContext(cctx))
	if err != nil {
		return false, fmt.Errorf("reading the semaphore %q: %w", lockKey, err)
	}
	if pair == nil || pair.Flags != api.SemaphoreFlagValue {
		return true, nil
	}
	var v map[string]any
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		return false, fmt.Errorf("decoding the semaphore %q: %w", lockKey, err)
	}
	holders, _ := v["Holders"].(map[string]any)
	if _, ok := holders[session]; !ok {
		return true, nil
	}
	// Only our entry changes; whatever else the value holds stays.
	delete(holders, session)
	value, err := json.Marshal(v)
	if err != nil {
		return false, fmt.Errorf("encoding the semaphore %q: %w", lockKey, err)
	}
	next := &api.KVPair{Key: lockKey, Value: value, Flags: api.SemaphoreFlagValue, ModifyIndex: pair.ModifyIndex}
	ok, _, err := kv.CAS(next, (&api.WriteOptions{}).WithContext(cctx))
	if err != nil {
		return false, fmt.Errorf("updating the semaphore %q: %w", lockKey, err)
	}
	return ok, nil
}
