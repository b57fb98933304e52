// Package cluster runs a real multi-node Consul cluster on loopback: one or
// three servers plus one client agent per simulated node. A dev agent is
// one server that is also the only node, so every simulated node would
// share one failure domain; node failures (a frozen or killed agent, a
// node the servers declare failed, sessions invalidated through
// serfHealth) need an agent of their own per node. The fault tests use it
// to freeze, resume, kill and restart those agents, and to kill servers.
package cluster

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// Defaults used when the matching Options field is zero.
const (
	// DefaultStartTimeout bounds the wait for the whole cluster to be
	// ready, and for one agent to be ready again after a restart. A
	// cluster of one server and three clients is ready in about five
	// seconds on an idle machine; a loaded 2-core machine needs far more.
	DefaultStartTimeout = 90 * time.Second

	// DefaultNodes is the number of client agents.
	DefaultNodes = 3
)

// probeTimeout bounds each request the harness makes while polling: a
// frozen agent accepts connections but never answers.
const probeTimeout = 3 * time.Second

// pollInterval is the pause between two readiness probes.
const pollInterval = 200 * time.Millisecond

// ErrServers is returned for a server count other than 1 or 3.
var ErrServers = errors.New("cluster: servers must be 1 (one dev-mode server) or 3")

// Options configures a cluster. The zero value is one server and
// DefaultNodes client agents.
type Options struct {
	// Binary is the consul executable. Empty means $CONSUL_BIN, then
	// "consul" on PATH, as devconsul resolves it.
	Binary string

	// Servers is 1 (zero means 1) for one dev-mode server, which keeps its
	// state in memory and elects itself at once, or 3 for three servers
	// that elect a leader among themselves and survive losing one.
	Servers int

	// Nodes is the number of client agents, named node1 to nodeN. Zero
	// means DefaultNodes.
	Nodes int

	// Dir holds the agents' data directories, configurations and logs.
	// Empty means a new temporary directory, removed by Stop.
	Dir string

	// StartTimeout bounds the wait for readiness. Zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration

	// ExtraConfig is more configuration, in HCL, for every agent. Empty
	// adds nothing.
	ExtraConfig string
}

// Cluster is a running set of servers and client agents.
type Cluster struct {
	// Servers are the server agents, srv1 to srvN.
	Servers []*Agent
	// Nodes are the client agents, node1 to nodeN: one per simulated
	// machine. Processes of a node talk to its agent (Addr).
	Nodes []*Agent

	opts    Options
	dir     string
	ownsDir bool
}

// Start launches the cluster and waits until every agent is ready: every
// client knows the leader and the catalog lists every agent as healthy.
// On error nothing is left running.
func Start(opts Options) (c *Cluster, err error) {
	if opts.Servers == 0 {
		opts.Servers = 1
	}
	if opts.Servers != 1 && opts.Servers != 3 {
		return nil, ErrServers
	}
	if opts.Nodes == 0 {
		opts.Nodes = DefaultNodes
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	if opts.Binary, err = devconsul.FindBinary(opts.Binary); err != nil {
		return nil, err
	}
	c = &Cluster{opts: opts, dir: opts.Dir}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "ct-supervise-cluster-"); err != nil {
			return nil, err
		}
		c.ownsDir = true
	}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	for i := 1; i <= opts.Servers; i++ {
		if err := c.addAgent(fmt.Sprintf("srv%d", i), true); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Nodes; i++ {
		if err := c.addAgent(fmt.Sprintf("node%d", i), false); err != nil {
			return nil, err
		}
	}
	for _, a := range c.all() {
		if err := a.start(); err != nil {
			return nil, err
		}
	}
	if err := c.WaitReady(opts.StartTimeout); err != nil {
		return nil, err
	}
	return c, nil
}

// addAgent picks the ports of one agent and prepares its directories. The
// servers' serf ports must be known before any agent starts: every agent
// joins them.
func (c *Cluster) addAgent(name string, server bool) error {
	a := &Agent{Name: name, Server: server, cluster: c}
	for _, p := range []*int{&a.HTTPPort, &a.SerfLANPort, &a.SerfWANPort, &a.ServerPort} {
		port, err := devconsul.FreePort()
		if err != nil {
			return err
		}
		*p = port
	}
	a.dir = filepath.Join(c.dir, name)
	if err := os.MkdirAll(filepath.Join(a.dir, "data"), 0o700); err != nil {
		return err
	}
	if server {
		c.Servers = append(c.Servers, a)
	} else {
		c.Nodes = append(c.Nodes, a)
	}
	return nil
}

// all is every agent, servers first.
func (c *Cluster) all() []*Agent { return append(slices.Clone(c.Servers), c.Nodes...) }

// Stop kills every agent (frozen ones included) and removes the cluster's
// directory if Start created it. It is safe to call more than once.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, a := range c.all() {
		wg.Add(1)
		go func() { defer wg.Done(); a.Kill() }()
	}
	wg.Wait()
	if c.ownsDir {
		_ = os.RemoveAll(c.dir)
	}
}

// Node returns the client agent of the given name, nil if there is none.
func (c *Cluster) Node(name string) *Agent {
	for _, a := range c.all() {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// WaitReady waits until every running, unfrozen client knows a leader and
// the catalog, read from a server, lists every running agent with a
// passing serfHealth check.
func (c *Cluster) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = c.ready(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not ready after %s: %w", timeout, last)
		}
		time.Sleep(pollInterval)
	}
}

// ready reports the first reason the cluster is not ready, nil if it is.
func (c *Cluster) ready() error {
	for _, a := range c.all() {
		if err := a.exited(); err != nil && a.Running() {
			return err
		}
	}
	srv, err := c.ServerClient()
	if err != nil {
		return err
	}
	for _, a := range c.all() {
		if !a.Running() || a.Frozen() {
			continue
		}
		if leader, err := a.probe().Status().Leader(); err != nil || leader == "" {
			return fmt.Errorf("%s knows no leader (%v)", a.Name, err)
		}
		checks, _, err := srv.Health().Node(a.Name, nil)
		if err != nil {
			return fmt.Errorf("health of %s: %w", a.Name, err)
		}
		if !serfHealthy(checks) {
			return fmt.Errorf("%s is not a healthy member yet", a.Name)
		}
	}
	return nil
}

// serfHealthy reports whether checks include a passing serfHealth, the
// check every session depends on.
func serfHealthy(checks api.HealthChecks) bool {
	for _, hc := range checks {
		if hc.CheckID == "serfHealth" {
			return hc.Status == api.HealthPassing
		}
	}
	return false
}

// ServerClient returns a client for the first server that is running, not
// frozen, and answers; the tests read sessions and KV through it, which
// does not depend on any node's agent. Its requests have no deadline.
func (c *Cluster) ServerClient() (*api.Client, error) {
	var errs []error
	for _, a := range c.Servers {
		if !a.Running() || a.Frozen() {
			continue
		}
		if _, err := a.probe().Status().Leader(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.Name, err))
			continue
		}
		return a.Client()
	}
	if len(errs) == 0 {
		return nil, errors.New("no server is running")
	}
	return nil, errors.Join(errs...)
}

// Leader returns the server that is the raft leader, as the running
// servers report it.
func (c *Cluster) Leader() (*Agent, error) {
	for _, a := range c.Servers {
		if !a.Running() || a.Frozen() {
			continue
		}
		addr, err := a.probe().Status().Leader()
		if err != nil || addr == "" {
			continue
		}
		for _, s := range c.Servers {
			if strings.HasSuffix(addr, fmt.Sprintf(":%d", s.ServerPort)) {
				return s, nil
			}
		}
		return nil, fmt.Errorf("the leader %s is none of the cluster's servers", addr)
	}
	return nil, errors.New("no running server knows a leader")
}

// WaitLeader waits until the running servers agree on a leader other than
// not (nil for any) and returns it: after the leader is killed, the next
// election.
func (c *Cluster) WaitLeader(not *Agent, timeout time.Duration) (*Agent, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.Leader()
		if err == nil && l != not && l.Running() {
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no new leader after %s (last: %v)", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// Logs returns the tail (up to max bytes) of every agent's log, for a
// failing test to print.
func (c *Cluster) Logs(max int) string {
	var b strings.Builder
	for _, a := range c.all() {
		data, _ := os.ReadFile(a.LogPath())
		if len(data) > max {
			data = data[len(data)-max:]
		}
		fmt.Fprintf(&b, "--- consul agent %s (%s) ---\n%s\n", a.Name, a.Addr(), data)
	}
	return b.String()
}

// probeClient is a client for addr whose every request has a deadline.
func probeClient(addr string) *api.Client {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = ""
	cfg.HttpClient = &http.Client{Timeout: probeTimeout}
	client, err := api.NewClient(cfg)
	if err != nil {
		// NewClient fails only on TLS settings, and we set none.
		panic(err)
	}
	return client
}
