package health

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// registerElsewhere puts an instance of service on another (external)
// node, with one check in status.
func registerElsewhere(t *testing.T, c *api.Client, node, service, status string) {
	t.Helper()
	_, err := c.Catalog().Register(&api.CatalogRegistration{
		Node: node, Address: "127.0.0.2",
		Service: &api.AgentService{ID: service + "-1", Service: service},
		Check: &api.AgentCheck{Node: node, CheckID: service + "-check", Name: service + " check",
			Status: status, ServiceID: service + "-1", Output: "replica " + status},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil) })
}

func TestWaitNoneCriticalElsewhere(t *testing.T) {
	c := client(t)
	registerElsewhere(t, c, "replica-2", "db", api.HealthCritical)
	// Our own instance being critical never blocks us.
	own := &api.AgentServiceRegistration{ID: "db-own", Name: "db",
		Check: &api.AgentServiceCheck{CheckID: "db-own-ttl", TTL: "30s", Status: api.HealthCritical}}
	if err := c.Agent().ServiceRegister(own); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(own.ID) })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	blocked := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- WaitNoneCritical(ctx, c, BlockerOptions{Services: []string{"db"}, Node: "devconsul",
			OnBlocked: func(why string) { blocked <- why }})
	}()
	select {
	case why := <-blocked:
		if !strings.Contains(why, `"db" on node replica-2 has check "db check" critical: replica critical`) {
			t.Fatalf("blocked for %q", why)
		}
	case err := <-done:
		t.Fatalf("WaitNoneCritical returned %v while a replica is critical", err)
	}
	registerElsewhere(t, c, "replica-2", "db", api.HealthPassing)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitNoneCritical = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitNoneCritical did not return once the replica passed")
	}
}
