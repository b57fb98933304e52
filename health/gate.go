// Package health decides when a node's service is back in service after a
// reload or restart: the health gate that keeps a lock held until this
// node's instances of the named services pass their Consul checks with a
// result that is fresh, and the maintenance mode that keeps traffic away
// meanwhile. It reads the node's checks with blocking queries; it takes no
// locks.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/internal/blocking"
	"ct-supervise/internal/ctxsleep"
)

// Defaults used when the matching Options field is zero.
const (
	// DefaultTimeout bounds the whole wait for health.
	DefaultTimeout = 2 * time.Minute

	// DefaultTTLSettle is how long a TTL check must stay passing after the
	// command ended. Consul's API does not expose a check's TTL, so the
	// gate cannot use it as it uses an interval; -health-settle overrides.
	DefaultTTLSettle = 30 * time.Second

	// minLateRun is the least slack added to a check's interval for a
	// run that comes late (a loaded agent, a check slow to answer): half
	// the interval, and at least this. Without it a result older than the
	// command could still read as passing when the interval is up.
	minLateRun = time.Second

	// maxBlockingWait bounds one blocking query; with its client-side
	// deadline (blocking.Context) a connection that died silently or a
	// frozen agent is noticed within about this time.
	maxBlockingWait = 30 * time.Second

	// retryWait is the pause after a failed read of the checks: the gate
	// rides out Consul errors until its timeout.
	retryWait = time.Second

	// maintenancePrefix starts the ID of the check Consul adds to a
	// service in maintenance mode.
	maintenancePrefix = "_service_maintenance:"
)

// ErrUnhealthy means the services did not become healthy within the
// timeout. The error names the check that held the gate and its output.
var ErrUnhealthy = errors.New("not healthy")

// errGateTimeout tells the gate's own timeout from the caller's deadline.
var errGateTimeout = errors.New("health timeout")

// Options configures one wait. Every field says what its zero value does.
type Options struct {
	// Services are the service names whose instances on Node must pass.
	// Required. Each must have at least one instance on Node.
	Services []string

	// Node is the Consul node name of this machine. Required.
	Node string

	// Since is when the command ended: a passing result older than Since
	// plus a check's settle time proves nothing about the restarted
	// process. Zero means the time Wait is called.
	Since time.Time

	// Settle overrides how long every check must have stayed passing.
	// Zero uses each check's own interval plus half of it (at least 1s)
	// for a run that comes late; DefaultTTLSettle for a TTL check;
	// nothing for a check without an interval, such as serfHealth.
	Settle time.Duration

	// Timeout bounds the wait. Zero means DefaultTimeout.
	Timeout time.Duration

	// IgnoreMaintenance leaves the maintenance checks of these service IDs
	// out: the caller put them in maintenance itself, to lift it once the
	// gate opens. Nil ignores none.
	IgnoreMaintenance []string

	// OnWaiting, if not nil, is called with a one-line description of what
	// the gate waits on, each time that changes.
	OnWaiting func(what string)

	// Logger receives debug lines. Nil discards them.
	Logger hclog.Logger
}

// check is one health check as the gate reads it: api.HealthCheck lacks
// the interval, which the catalog returns at the top level.
type check struct {
	Node        string
	CheckID     string
	Name        string
	Status      string
	Output      string
	ServiceID   string
	ServiceName string
	Type        string
	Interval    string
}

// instance is one entry of /v1/health/service, reduced to what we read.
type instance struct {
	Service struct{ ID string }
	Checks  []check
}

// Wait blocks until every instance on opts.Node of every service in
// opts.Services, and the node itself, pass every check, each having stayed
// passing for its settle time after opts.Since; or until the timeout
// (ErrUnhealthy) or ctx ends (the context's error).
func Wait(ctx context.Context, client *api.Client, opts Options) error {
	if len(opts.Services) == 0 || opts.Node == "" {
		return errors.New("health: Services and Node are required")
	}
	g := newGate(opts)
	ctx, cancel := context.WithTimeoutCause(ctx, g.timeout, errGateTimeout)
	defer cancel()

	snaps := make(chan snapshot, len(opts.Services))
	for _, svc := range opts.Services {
		go watch(ctx, client, svc, fmt.Sprintf("Node.Node == %q", opts.Node), snaps)
	}
	latest := make(map[string]snapshot, len(opts.Services))
	var wake *time.Timer
	defer func() {
		if wake != nil {
			wake.Stop()
		}
	}()
	var wakeC <-chan time.Time
	for {
		select {
		case s := <-snaps:
			latest[s.service] = s
		case <-wakeC:
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errGateTimeout) {
				return fmt.Errorf("%w after %s: %s", ErrUnhealthy, g.timeout, g.describeTimeout(client))
			}
			return ctx.Err()
		}
		if len(latest) < len(opts.Services) {
			continue
		}
		open, next := g.evaluate(latest, time.Now())
		if open {
			g.log.Debug("health gate open", "services", opts.Services, "node", opts.Node)
			return nil
		}
		if wake != nil {
			wake.Stop()
			wakeC = nil
		}
		if !next.IsZero() {
			wake = time.NewTimer(time.Until(next))
			wakeC = wake.C
		}
	}
}

// snapshot is one read of a service's instances on the node, or the
// error that prevented it.
type snapshot struct {
	service   string
	instances []instance
	err       error
}

// watch reads the service's instances that match filter (empty: all of
// the datacenter's) with blocking queries and sends each new answer, until
// ctx ends. Errors are sent too, and retried.
func watch(ctx context.Context, client *api.Client, service, filter string, out chan<- snapshot) {
	endpoint := "/v1/health/service/" + url.PathEscape(service)
	var index uint64
	for ctx.Err() == nil {
		var got []instance
		rctx, cancel := blocking.Context(ctx, maxBlockingWait)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: maxBlockingWait, Filter: filter}).WithContext(rctx)
		meta, err := client.Raw().Query(endpoint, &got, q)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			select {
			case out <- snapshot{service: service, err: err}:
			case <-ctx.Done():
				return
			}
			index = 0
			if ctxsleep.Sleep(ctx, retryWait) != nil {
				return
			}
			continue
		}
		if index != 0 && meta.LastIndex == index {
			continue // the wait ran out with nothing new
		}
		index = meta.LastIndex
		if index < 1 {
			index = 0
		}
		select {
		case out <- snapshot{service: service, instances: got}:
		case <-ctx.Done():
			return
		}
	}
}

// gate is the settle rule's memory: since when each check has been seen
// passing.
type gate struct {
	opts      Options
	timeout   time.Duration
	log       hclog.Logger
	ignore    map[string]bool
	since     map[string]time.Time // check key -> passing since
	evaluated bool                 // a first answer for every service was judged
	waitingOn string
	// holding is the check that holds the gate shut, when one does.
	holding *check
}

func newGate(opts Options) *gate {
	g := &gate{opts: opts, timeout: opts.Timeout, log: opts.Logger,
		ignore: map[string]bool{}, since: map[string]time.Time{}}
	if g.timeout <= 0 {
		g.timeout = DefaultTimeout
	}
	if g.log == nil {
		g.log = hclog.NewNullLogger()
	}
	if g.opts.Since.IsZero() {
		g.opts.Since = time.Now()
	}
	for _, id := range opts.IgnoreMaintenance {
		g.ignore[maintenancePrefix+id] = true
	}
	g.waitingOn = "no answer from Consul yet"
	return g
}

// evaluate applies the rule to the latest snapshots at now. It reports
// whether the gate is open and, if it is not, when it should look again
// without news from Consul (zero: only on news).
func (g *gate) evaluate(latest map[string]snapshot, now time.Time) (open bool, next time.Time) {
	services := make([]string, 0, len(latest))
	for s := range latest {
		services = append(services, s)
	}
	sort.Strings(services)
	var blocked []string
	g.holding = nil
	for _, svc := range services {
		s := latest[svc]
		switch {
		case s.err != nil:
			blocked = append(blocked, fmt.Sprintf("reading the checks of %q: %v", svc, s.err))
			continue
		case len(s.instances) == 0:
			blocked = append(blocked, fmt.Sprintf("service %q has no instance on node %q", svc, g.opts.Node))
			continue
		}
		for _, inst := range s.instances {
			for _, c := range inst.Checks {
				why, due := g.judge(c, now)
				if why != "" {
					blocked = append(blocked, why)
					if g.holding == nil && c.Status != api.HealthPassing {
						g.holding = &c
					}
				}
				if !due.IsZero() && (next.IsZero() || due.Before(next)) {
					next = due
				}
			}
		}
	}
	g.evaluated = true
	if len(blocked) == 0 {
		return true, time.Time{}
	}
	g.report(blocked[0])
	return false, next
}

// judge applies the settle rule to one check. It returns why the check
// holds the gate ("" if it does not) and, for a passing check still
// settling, when it will have settled.
func (g *gate) judge(c check, now time.Time) (why string, due time.Time) {
	if g.ignore[c.CheckID] {
		return "", time.Time{}
	}
	key := c.Node + "/" + c.CheckID
	if c.Status != api.HealthPassing {
		delete(g.since, key)
		return fmt.Sprintf("check %q (%s) is %s: %s", c.Name, c.CheckID, c.Status, summarize(c.Output)), time.Time{}
	}
	since, seen := g.since[key]
	if !seen {
		// Passing when first seen: it may be a result from before the
		// command ended, so its clock starts no earlier than that.
		// Seen in the first answer, it has been passing as far as we
		// can know since the command ended; a check that turns up (or
		// turns passing) later starts its clock when we see it.
		since = now
		if !g.evaluated && g.opts.Since.Before(now) {
			since = g.opts.Since
		}
		g.since[key] = since
	}
	settled := since.Add(g.settle(c))
	if now.Before(settled) {
		return fmt.Sprintf("check %q (%s) is passing, settling until %s", c.Name, c.CheckID,
			settled.Format("15:04:05.000")), settled
	}
	return "", time.Time{}
}

// settle is how long the check must have stayed passing.
func (g *gate) settle(c check) time.Duration {
	if g.opts.Settle > 0 {
		return g.opts.Settle
	}
	if c.Type == "ttl" {
		return DefaultTTLSettle
	}
	if d, err := time.ParseDuration(c.Interval); err == nil && d > 0 {
		return d + max(d/2, minLateRun)
	}
	return 0
}

// report records what the gate waits on and tells OnWaiting when it
// changed.
func (g *gate) report(what string) {
	if what == g.waitingOn {
		return
	}
	g.waitingOn = what
	g.log.Debug("health gate waiting", "on", what)
	if g.opts.OnWaiting != nil {
		g.opts.OnWaiting(what)
	}
}

// describeTimeout says what held the gate when it timed out. The catalog
// may lag behind on a check's output (Consul syncs an output change that
// comes without a status change only every few minutes), so the output is
// read afresh from the local agent, which runs the check.
func (g *gate) describeTimeout(client *api.Client) string {
	c := g.holding
	if c == nil {
		return g.waitingOn
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	q := (&api.QueryOptions{}).WithContext(ctx)
	checks, err := client.Agent().ChecksWithFilterOpts(fmt.Sprintf("CheckID == %q", c.CheckID), q)
	if err == nil {
		if ac, ok := checks[c.CheckID]; ok && ac.Output != "" {
			return fmt.Sprintf("check %q (%s) is %s: %s", ac.Name, ac.CheckID, ac.Status, summarize(ac.Output))
		}
	}
	return g.waitingOn
}

// summarize keeps a check's output to one short line.
func summarize(out string) string {
	out = strings.Join(strings.Fields(out), " ")
	const max = 200
	if len(out) > max {
		out = out[:max] + "..."
	}
	if out == "" {
		return "(no output)"
	}
	return out
}
