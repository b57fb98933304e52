package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// benchHCL is the agent configuration the benchmark adds to devconsul's.
//
// The telemetry block keeps cumulative request counters: without a
// Prometheus retention, /v1/agent/metrics only shows the last finished 10s
// in-memory interval, which cannot be diffed across a run of arbitrary
// length; consul_api_http_count in the Prometheus format is cumulative.
//
// The connection limit stands in for a fleet: there every node talks to
// its own local agent, here 200 contenders share one agent from one IP,
// and each keeps two or three connections open (blocking query, session
// renewal, lock monitor), past the default of 200 per client IP (Consul
// answers 429 beyond it).
const benchHCL = `telemetry {
  prometheus_retention_time = "24h"
  disable_hostname          = true
}
limits {
  http_max_conns_per_client = 4096
}
`

// startAgent starts a dev agent through devconsul with the settings above.
func startAgent(dir, consulBin string) (*devconsul.Agent, error) {
	return devconsul.Start(devconsul.Options{
		Binary:      consulBin,
		ExtraConfig: benchHCL,
		LogFile:     filepath.Join(dir, "consul-agent.log"),
	})
}

// procCPUSeconds is the user+system CPU time of a process so far, from
// /proc/PID/stat; 0 if unavailable.
func procCPUSeconds(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it do not.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	// After the name: state is field 3, utime 14 and stime 15 (1-based).
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	const clkTck = 100 // USER_HZ on Linux
	return (ut + st) / clkTck
}

// countingTransport counts the benchmark's own requests to the agent, so
// they can be taken out of the agent's request counters.
type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.base.RoundTrip(r)
}

// newClient returns a client for the agent that counts its requests in n.
func newClient(a *devconsul.Agent, n *atomic.Int64) (*api.Client, error) {
	cfg := a.Config()
	cfg.HttpClient = &http.Client{Transport: countingTransport{
		base: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second},
		n:    n,
	}}
	return api.NewClient(cfg)
}

// httpCounts reads the agent's cumulative HTTP request counters
// (consul_api_http_count, one per method and path) keyed "METHOD path".
// The metrics endpoint's own requests are left out.
func httpCounts(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/agent/metrics?format=prometheus", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading agent metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading agent metrics: %s", resp.Status)
	}
	counts := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "consul_api_http_count{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		lm := parseLabels(labels)
		if lm["path"] == "v1_agent_metrics" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		counts[lm["method"]+" "+lm["path"]] += v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return counts, nil
}

// parseLabels parses `a="x",b="y"` (label values here never hold quotes
// or commas).
func parseLabels(s string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok {
			m[k] = strings.Trim(v, `"`)
		}
	}
	return m
}

// diffCounts returns after - before per key, and the total.
func diffCounts(before, after map[string]float64) (map[string]float64, float64) {
	d := map[string]float64{}
	total := 0.0
	for k, v := range after {
		if x := v - before[k]; x > 0 {
			d[k] = x
			total += x
		}
	}
	return d, total
}

// countSessions counts the agent's sessions with the given name.
func countSessions(c *api.Client, name string) (int, error) {
	list, _, err := c.Session().List(nil)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range list {
		if s.Name == name {
			n++
		}
	}
	return n, nil
}

// hold takes the lock (limit 1) or every slot of the semaphore (limit > 1)
// at prefix from the benchmark itself, as "another node" would, and
// returns the function that gives it all back. The keys are the ones both
// `consul lock` and ct-supervise use: <prefix>/.lock.
//
// A semaphore's slots are freed in one write (the holders are taken out of
// the lock key with a single CAS) so that all of them open at the same
// instant, as when a whole wave of holders ends together; releasing them
// one by one would stagger the first wave by the benchmark's own requests.
func hold(c *api.Client, prefix string, limit int) (release func() error, err error) {
	if limit <= 1 {
		l, err := c.LockOpts(&api.LockOptions{Key: prefix + "/.lock", SessionName: "bench holder", SessionTTL: "60s"})
		if err != nil {
			return nil, err
		}
		if _, err := l.Lock(nil); err != nil {
			return nil, fmt.Errorf("holding %s: %w", prefix, err)
		}
		return l.Unlock, nil
	}
	var (
		sems     []*api.Semaphore
		sessions = map[string]bool{}
	)
	cleanup := func() error {
		var first error
		for _, s := range sems {
			// Once out of the lock key this only deletes our contender key.
			if err := s.Release(); err != nil && first == nil {
				first = err
			}
		}
		for id := range sessions {
			if _, err := c.Session().Destroy(id, nil); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for range limit {
		id, _, err := c.Session().Create(&api.SessionEntry{Name: "bench holder", TTL: "60s", Behavior: api.SessionBehaviorDelete}, nil)
		if err != nil {
			_ = cleanup()
			return nil, err
		}
		sessions[id] = true
		s, err := c.SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: limit, Session: id})
		if err != nil {
			_ = cleanup()
			return nil, err
		}
		if _, err := s.Acquire(nil); err != nil {
			_ = cleanup()
			return nil, fmt.Errorf("holding a slot of %s: %w", prefix, err)
		}
		sems = append(sems, s)
	}
	return func() error {
		if err := dropHolders(c, prefix+"/.lock", sessions); err != nil {
			_ = cleanup()
			return err
		}
		return cleanup()
	}, nil
}

// dropHolders removes the given sessions from a semaphore's lock key in a
// single check-and-set write, retrying if someone else wrote in between.
func dropHolders(c *api.Client, key string, sessions map[string]bool) error {
	for {
		pair, _, err := c.KV().Get(key, nil)
		if err != nil {
			return err
		}
		if pair == nil {
			return nil
		}
		// The layout api.Semaphore writes; its type is not exported.
		var v struct {
			Limit   int
			Holders map[string]bool
		}
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			return fmt.Errorf("decoding %s: %w", key, err)
		}
		for id := range sessions {
			delete(v.Holders, id)
		}
		if pair.Value, err = json.Marshal(v); err != nil {
			return err
		}
		ok, _, err := c.KV().CAS(pair, nil)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}
