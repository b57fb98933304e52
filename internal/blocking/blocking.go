// Package blocking gives a Consul blocking query its client-side deadline.
//
// A query's WaitTime is a request to the server; it bounds nothing when the
// agent is frozen (SIGSTOP, a stalled VM) or the connection died silently:
// the agent accepted the connection and answers nothing, and the query
// waits with it until its context ends.
package blocking

import (
	"context"
	"time"
)

// Slack is added to a query's wait for its deadline: Consul adds up to
// wait/16 of jitter, and the answer needs a moment to come back.
const Slack = 5 * time.Second

// Context is ctx with the deadline of one blocking query that waits up to
// wait. Past it the agent is not answering; callers treat that like any
// other failed read.
func Context(ctx context.Context, wait time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, wait+wait/16+Slack)
}
