package health

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/consul/api"
)

// ErrNoInstance means the local agent has no instance of a service to put
// into maintenance.
var ErrNoInstance = errors.New("no instance of the service on this node")

// EnableMaintenance puts every instance of service registered with the
// local agent into maintenance mode with reason, so that Consul's health
// answers (and every template rendering them) leave this node out. It
// returns the instances' IDs for DisableMaintenance and for the gate's
// IgnoreMaintenance.
func EnableMaintenance(ctx context.Context, client *api.Client, service, reason string) ([]string, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	services, err := client.Agent().ServicesWithFilterOpts(fmt.Sprintf("Service == %q", service), q)
	if err != nil {
		return nil, fmt.Errorf("listing the local instances of %q: %w", service, err)
	}
	if len(services) == 0 {
		return nil, fmt.Errorf("%w: %q", ErrNoInstance, service)
	}
	ids := make([]string, 0, len(services))
	for id := range services {
		if err := client.Agent().EnableServiceMaintenanceOpts(id, reason, q); err != nil {
			return ids, fmt.Errorf("putting %q (%s) into maintenance: %w", service, id, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// DisableMaintenance takes the instances out of maintenance mode. It tries
// every one, and returns the first error.
func DisableMaintenance(ctx context.Context, client *api.Client, ids []string) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	var first error
	for _, id := range ids {
		if err := client.Agent().DisableServiceMaintenanceOpts(id, q); err != nil && first == nil {
			first = fmt.Errorf("taking %s out of maintenance: %w", id, err)
		}
	}
	return first
}

// LocalNode is the node name of the agent client talks to.
func LocalNode(ctx context.Context, client *api.Client) (string, error) {
	var self struct{ Config struct{ NodeName string } }
	if _, err := client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("reading the local agent's node name: %w", err)
	}
	if self.Config.NodeName == "" {
		return "", errors.New("the local agent did not report its node name")
	}
	return self.Config.NodeName, nil
}
