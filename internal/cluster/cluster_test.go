package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// newSession creates a session on agent a, as a process of that node would.
func newSession(t *testing.T, a *Agent) string {
	t.Helper()
	client, err := a.Client()
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := client.Session().Create(&api.SessionEntry{Name: "harness " + a.Name, TTL: "60s"}, nil)
	if err != nil {
		t.Fatalf("session on %s: %v", a.Name, err)
	}
	return id
}

// sessionGone waits until the servers no longer know session id.
func sessionGone(t *testing.T, c *Cluster, id string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		srv, err := c.ServerClient()
		if err == nil {
			s, _, err := srv.Session().Info(id, nil)
			if err == nil && s == nil {
				return time.Since(start)
			}
		}
		if time.Since(start) > timeout {
			t.Fatalf("session %s still exists after %s", id, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The harness does to one node what the fault tests need: a frozen agent's
// node is declared failed (its sessions go), a resumed one rejoins, and a
// killed agent restarts on the same address as the same node.
func TestOneServerFreezeResumeKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := ForTest(t, Options{Nodes: 2})
	if len(c.Servers) != 1 || len(c.Nodes) != 2 || c.Node("node2") != c.Nodes[1] {
		t.Fatalf("cluster of %d servers and %d nodes", len(c.Servers), len(c.Nodes))
	}
	if l, err := c.Leader(); err != nil || l != c.Servers[0] {
		t.Fatalf("leader %v (%v), want srv1", l, err)
	}
	n1 := c.Nodes[0]
	id := newSession(t, n1)
	if err := n1.Freeze(); err != nil {
		t.Fatal(err)
	}
	took := sessionGone(t, c, id, 60*time.Second)
	t.Logf("frozen node1's session invalidated after %s", took.Round(time.Millisecond))
	if err := n1.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(DefaultStartTimeout); err != nil {
		t.Fatalf("after resume: %v", err)
	}
	newSession(t, n1)

	n2 := c.Nodes[1]
	id = newSession(t, n2)
	addr := n2.Addr()
	n2.Kill()
	if n2.Running() || n2.PID() != 0 {
		t.Fatal("node2 still running after Kill")
	}
	took = sessionGone(t, c, id, 60*time.Second)
	t.Logf("killed node2's session invalidated after %s", took.Round(time.Millisecond))
	if err := n2.Restart(); err != nil {
		t.Fatal(err)
	}
	if n2.Addr() != addr {
		t.Fatalf("restarted on %s, was %s", n2.Addr(), addr)
	}
	newSession(t, n2)
}

// Three servers elect a new leader after the leader is killed, and the
// clients keep working through them.
func TestThreeServersSurviveLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	c := ForTest(t, Options{Servers: 3, Nodes: 1})
	old, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	old.Kill()
	leader, err := c.WaitLeader(old, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s killed; %s leads after %s", old.Name, leader.Name, time.Since(start).Round(time.Millisecond))
	// The client may still route a request or two to the dead server (a
	// 500 "connection refused"): what a contender must ride out.
	client, err := c.Nodes[0].Client()
	if err != nil {
		t.Fatal(err)
	}
	for failures := 0; ; failures++ {
		_, _, err := client.Session().Create(&api.SessionEntry{Name: "harness", TTL: "60s"}, nil)
		if err == nil {
			t.Logf("session created after %s and %d transient errors", time.Since(start).Round(time.Millisecond), failures)
			return
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("no session after %s: %v", time.Since(start), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestBadServerCount(t *testing.T) {
	if _, err := Start(Options{Servers: 2}); err != ErrServers {
		t.Fatalf("Start with 2 servers: %v, want ErrServers", err)
	}
}
