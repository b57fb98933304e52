package fleet

import (
	"context"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/blocking"
	"ct-supervise/internal/ctxsleep"
)

// retryWait is the pause after a failed read while waiting: a Consul
// outage makes WaitClearFor wait longer, never give up.
const retryWait = time.Second

// WaitClearFor returns once neither a halt nor a pause (the action's own
// or the global one) stops node's action, or with ctx's error, or with the
// error of a first read that failed (later read errors are waited out). A
// halt that node set itself does not hold it (see Rollout.BlockedFor); an
// empty node is held by any halt. While it waits it tells onBlocked why,
// each time that changes. It watches both places with blocking queries, so
// it returns within a round trip of the switch being cleared.
func (f *Fleet) WaitClearFor(ctx context.Context, node string, onBlocked func(why string)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Watched only once something blocks us: most calls find nothing set
	// and return after one read, which two blocking queries sent along
	// would only double (and with them the connections of every node
	// starting at once). Changes signals once as it starts, so a change
	// between the read and the watch is not missed.
	var changed <-chan struct{}

	last := ""
	for {
		r := Rollout{}
		var err error
		r.Halt, r.Pause, err = f.Switches(ctx)
		if err != nil && last == "" {
			// The first read: a Consul that cannot be read at all
			// (unreachable, a token without key:read) is the caller's
			// error to report, not a wait without end.
			return err
		}
		why := r.BlockedFor(node)
		if err != nil {
			why = "cannot read the fleet's halt and pause switches: " + err.Error()
		}
		if why == "" {
			return nil
		}
		if why != last && onBlocked != nil {
			onBlocked(why)
		}
		last = why
		if err != nil {
			if err := ctxsleep.Sleep(ctx, retryWait); err != nil {
				return err
			}
			continue
		}
		if changed == nil {
			changed = f.Changes(ctx)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Changes returns a channel that receives whenever the action's fleet
// records or the global pause change, once soon after the call too, until
// ctx ends. Receives coalesce: a reader that is busy gets one for many
// changes.
func (f *Fleet) Changes(ctx context.Context) <-chan struct{} {
	changed := make(chan struct{}, 1)
	go f.watch(ctx, f.dir, changed)
	go f.watch(ctx, GlobalPauseKey, changed)
	return changed
}

// watch signals changed whenever the KV key or folder at key changes,
// until ctx ends.
func (f *Fleet) watch(ctx context.Context, key string, changed chan<- struct{}) {
	var index uint64
	for ctx.Err() == nil {
		rctx, cancel := blocking.Context(ctx, blockingWait)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: blockingWait}).WithContext(rctx)
		_, meta, err := f.client.KV().List(key, q)
		cancel()
		if err != nil {
			index = 0
			if ctxsleep.Sleep(ctx, retryWait) != nil {
				return
			}
			continue
		}
		if meta.LastIndex == index {
			continue
		}
		// The first answer signals too: a change between the caller's
		// read and ours would otherwise go unnoticed.
		select {
		case changed <- struct{}{}:
		default:
		}
		index = meta.LastIndex
	}
}
