package health

import (
	"context"
	"fmt"
	"sort"

	"github.com/hashicorp/consul/api"
)

// BlockerOptions configures WaitNoneCritical. Every field says what its
// zero value does.
type BlockerOptions struct {
	// Services are the services that must have no critical instance
	// elsewhere. Required.
	Services []string

	// Node is this machine's node name: its own instances never block it
	// (the action may be what repairs them). Empty excludes none.
	Node string

	// OnBlocked, if not nil, is told what blocks, each time that changes.
	OnBlocked func(why string)
}

// WaitNoneCritical returns once no instance of any of the services on
// another node than opts.Node has a critical check, or with ctx's error.
// It watches with blocking queries, so it returns within a round trip of
// the last critical check passing; Consul errors are waited out.
func WaitNoneCritical(ctx context.Context, client *api.Client, opts BlockerOptions) error {
	if len(opts.Services) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	snaps := make(chan snapshot, len(opts.Services))
	for _, svc := range opts.Services {
		go watch(ctx, client, svc, "", snaps)
	}
	latest := make(map[string]snapshot, len(opts.Services))
	last := ""
	for {
		select {
		case s := <-snaps:
			latest[s.service] = s
		case <-ctx.Done():
			return ctx.Err()
		}
		if len(latest) < len(opts.Services) {
			continue
		}
		why := criticalElsewhere(latest, opts.Node)
		if why == "" {
			return nil
		}
		if why != last && opts.OnBlocked != nil {
			opts.OnBlocked(why)
		}
		last = why
	}
}

// criticalElsewhere names the first critical check of another node's
// instance, or the read error; "" when nothing blocks.
func criticalElsewhere(latest map[string]snapshot, node string) string {
	services := make([]string, 0, len(latest))
	for s := range latest {
		services = append(services, s)
	}
	sort.Strings(services)
	for _, svc := range services {
		s := latest[svc]
		if s.err != nil {
			return fmt.Sprintf("cannot read the health of %q: %v", svc, s.err)
		}
		for _, inst := range s.instances {
			for _, c := range inst.Checks {
				if c.Node != node && c.Status == api.HealthCritical {
					return fmt.Sprintf("blocked: %q on node %s has check %q critical: %s",
						svc, c.Node, c.Name, summarize(c.Output))
				}
			}
		}
	}
	return ""
}
