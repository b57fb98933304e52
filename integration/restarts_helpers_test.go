package integration

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/shell"
)

// This file is the safe-restart harness: small HTTP services that the test
// controls, registered with the package's Consul agent with real HTTP
// checks, and a ledger of when each was down.

// restartDownFor is how long a "restart" leaves a service down: the
// restart command returns at once, the service comes back in the
// background, as `systemctl restart` does.
const restartDownFor = 3 * time.Second

// testService is one HTTP service with a Consul HTTP check. Its "restart"
// is a command that appends the time to its restart file; the service
// answers 503 for restartDownFor after the last time written there.
type testService struct {
	t        *testing.T
	name, id string
	restarts string // the restart file: one start time (unix ns) per line
	srv      *http.Server
	output   string // body of a failing answer
	broken   bool   // always fail
}

// newTestService starts the service and registers it with the agent, with
// an HTTP check of the given interval; both go when the test ends. broken
// services always answer 500 with output as body.
func newTestService(t *testing.T, name string, interval time.Duration, broken bool, output string) *testService {
	t.Helper()
	client := consulClient(t)
	s := &testService{t: t, name: name, id: name + "-1", restarts: filepath.Join(t.TempDir(), "restarts"),
		broken: broken, output: output}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(func() { _ = s.srv.Close() })
	err = client.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: s.id, Name: name, Port: ln.Addr().(*net.TCPAddr).Port, Address: "127.0.0.1",
		Check: &api.AgentServiceCheck{
			Name: "http", HTTP: "http://" + ln.Addr().String() + "/health",
			Interval: interval.String(), Timeout: "1s",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Agent().ServiceDeregister(s.id) })
	return s
}

func (s *testService) serve(w http.ResponseWriter, _ *http.Request) {
	if s.broken {
		http.Error(w, s.output, http.StatusInternalServerError)
		return
	}
	if start, ok := s.lastRestart(); ok && time.Since(start) < restartDownFor {
		http.Error(w, "restarting", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// restartCommand is the service's restart: it returns at once.
func (s *testService) restartCommand() string {
	return "date +%s%N >> " + shell.Quote(s.restarts)
}

// downs returns the intervals the service was down, one per restart.
func (s *testService) downs() [][2]int64 {
	var out [][2]int64
	for _, l := range lines(s.restarts) {
		ns, err := strconv.ParseInt(strings.TrimSpace(l), 10, 64)
		if err == nil {
			out = append(out, [2]int64{ns, ns + restartDownFor.Nanoseconds()})
		}
	}
	return out
}

func (s *testService) lastRestart() (time.Time, bool) {
	d := s.downs()
	if len(d) == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, d[len(d)-1][0]), true
}

// waitPassing waits until Consul reports the service's check passing.
func (s *testService) waitPassing() {
	s.t.Helper()
	client := consulClient(s.t)
	waitFor(s.t, 30*time.Second, s.name+" passing", func() bool {
		checks, _, err := client.Health().Checks(s.name, nil)
		return err == nil && len(checks) > 0 && checks.AggregatedStatus() == api.HealthPassing
	})
}

// maxDown is the most services down at one instant.
func maxDown(services []*testService) int {
	var all [][2]int64
	for _, s := range services {
		all = append(all, s.downs()...)
	}
	return maxOverlap(all)
}

// maxOverlap is the most [start, end) intervals covering one instant.
func maxOverlap(iv [][2]int64) int {
	peak := 0
	for _, a := range iv {
		n := 0
		for _, b := range iv {
			if b[0] <= a[0] && a[0] < b[1] {
				n++
			}
		}
		peak = max(peak, n)
	}
	return peak
}

// downTimeline describes each service's down intervals, for failures.
func downTimeline(services []*testService) string {
	var b strings.Builder
	for _, s := range services {
		for _, d := range s.downs() {
			fmt.Fprintf(&b, "  %s down %s .. %s\n", s.name, time.Unix(0, d[0]).Format("15:04:05.000"), time.Unix(0, d[1]).Format("15:04:05.000"))
		}
	}
	return b.String()
}

// agentNode is the package agent's node name: the node of services
// registered with it.
func agentNode(t *testing.T) string {
	t.Helper()
	name, err := consulClient(t).Agent().NodeName()
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// runAll runs ct-supervise on every node at once with the args each gets,
// and returns the results in node order.
func runAll(nodes []*node, args func(i int) []string) []result {
	out := make([]result, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = n.run(args(i)...)
		}()
	}
	wg.Wait()
	return out
}

// lockSessions lists the sessions named after an action.
func lockSessions(t *testing.T, name string) []string {
	t.Helper()
	all, _, err := consulClient(t).Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range all {
		if s.Name == "ct-supervise "+name {
			out = append(out, s.ID)
		}
	}
	return out
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// sessionsDuring runs fn while watching for a session named after the
// action, and reports whether one was seen.
func sessionsDuring(t *testing.T, name string, fn func()) bool {
	t.Helper()
	client := consulClient(t)
	done := make(chan struct{})
	seen := make(chan bool, 1)
	go func() {
		found := false
		defer func() { seen <- found }()
		for {
			all, _, err := client.Session().List(nil)
			for _, s := range all {
				found = found || (err == nil && s.Name == "ct-supervise "+name)
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	fn()
	close(done)
	return <-seen
}
