// Package ctxsleep is a sleep that a context cuts short, shared by the
// packages that wait between Consul calls or around an action's steps.
package ctxsleep

import (
	"context"
	"time"
)

// Sleep waits for d or until ctx is done, whichever comes first. It returns
// nil after a full sleep and ctx.Err() when ctx ended it; callers that want
// the reason read context.Cause(ctx).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
