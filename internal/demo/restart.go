package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/shell"
)

// The two rolling-restart scenarios: a safe restart, where each node's
// service is down for a while after its restart returns and the health
// gate keeps the next node waiting; and a bad config, which the first node's
// -check refuses, halting the rollout there.

const (
	// safeNodes is the size of the safe-restart fleet.
	safeNodes = 3
	// serviceDownFor is how long a "restart" leaves a node's service down
	// after the restart command has returned.
	serviceDownFor = 2 * time.Second
	// serviceCheckInterval is the Consul HTTP check's interval.
	serviceCheckInterval = "500ms"
	// restartKey and badKey are the KV keys the two fleets render.
	restartKey = "demo/app-config"
	badKey     = "demo/nginx-config"
)

// appService is one node's "service": an HTTP server with a Consul check,
// down for serviceDownFor after each time its restart file is written.
type appService struct {
	node, name string
	restarts   string // one unix-nanosecond line per restart
	srv        *http.Server
}

func (s *appService) serve(w http.ResponseWriter, _ *http.Request) {
	if last, ok := s.lastRestart(); ok && time.Since(last) < serviceDownFor {
		http.Error(w, "restarting", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *appService) downs() []time.Time {
	b, _ := os.ReadFile(s.restarts)
	var out []time.Time
	for _, l := range strings.Fields(string(b)) {
		if ns, err := strconv.ParseInt(l, 10, 64); err == nil {
			out = append(out, time.Unix(0, ns))
		}
	}
	return out
}

func (s *appService) lastRestart() (time.Time, bool) {
	d := s.downs()
	if len(d) == 0 {
		return time.Time{}, false
	}
	return d[len(d)-1], true
}

// startServices starts one service per node and registers it with the
// agent. stop deregisters and closes them.
func (d *demo) startServices(count int) (services []*appService, stop func(), err error) {
	stop = func() {
		for _, s := range services {
			_ = d.client.Agent().ServiceDeregister(s.name)
			_ = s.srv.Close()
		}
	}
	for i := 1; i <= count; i++ {
		node := fmt.Sprintf("node-%d", i)
		s := &appService{node: node, name: "demo-app-" + node, restarts: filepath.Join(d.dir, "restarts-"+node)}
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			return services, stop, lerr
		}
		s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = s.srv.Serve(ln) }()
		services = append(services, s)
		err = d.client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: s.name, Name: s.name,
			Port: ln.Addr().(*net.TCPAddr).Port, Address: "127.0.0.1",
			Check: &api.AgentServiceCheck{Name: "http", HTTP: "http://" + ln.Addr().String() + "/",
				Interval: serviceCheckInterval, Timeout: "1s"}})
		if err != nil {
			return services, stop, fmt.Errorf("registering %s: %w", s.name, err)
		}
	}
	return services, stop, nil
}

// newScenarioFleet writes script (a stand-in command, on the nodes' PATH)
// and starts count nodes on tmpl in a directory of their own.
func (d *demo) newScenarioFleet(subdir string, scripts map[string]string, count int, tmpl string, env func(string) []string) (*fleet, error) {
	// The last scenario's nodes go first: their workers would hold the
	// tools' files and the agent's attention.
	if d.fleet != nil {
		d.fleet.stop(d.out)
		d.fleet = nil
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(d.dir, "bin", name), []byte(body), 0o700); err != nil {
			return nil, fmt.Errorf("writing %s: %w", name, err)
		}
	}
	// The reload script writes the roll scenario's ledger: follow it from
	// here on.
	f := &fleet{dir: d.dir, bin: d.bin, consulAddr: d.agent.Addr(), subdir: subdir, nodeEnv: env,
		ledger: &ledger{path: d.reloadLedger}}
	if err := f.ledger.poll(); err != nil {
		return nil, err
	}
	d.fleet = f
	return f, f.startNodes(count, tmpl)
}

// safeRestart is the safe-restart scenario. Its nodes share the agent, so
// they keep its node name, and each waits on its own service.
func (d *demo) safeRestart(ctx context.Context) error {
	services, stopServices, err := d.startServices(safeNodes)
	defer stopServices()
	if err != nil {
		return err
	}
	script := fmt.Sprintf("#!/bin/sh\n# The demo's \"systemctl restart app\": it returns at once; the service comes back %s later.\n"+
		"date +%%s%%N >> %s/restarts-$CT_SUPERVISE_DEMO_NODE\n", serviceDownFor, shell.Quote(d.dir))
	call := `{{ plugin "ct-supervise" "register" "-n=1" "-name=demo-restart" (printf "-wait-healthy=demo-app-%s" (env "CT_SUPERVISE_DEMO_NODE")) "-health-timeout=1m" "restart-app" }}`
	tmpl := call + "\nconfig={{ key \"" + restartKey + "\" }}\n"
	d.printf("\n== safe rolling restart: %d nodes, -n=1, each service down %s after its restart returns ==\n  %s\n",
		safeNodes, serviceDownFor, call)
	if err := d.put(restartKey, "v1"); err != nil {
		return err
	}
	if _, err := d.newScenarioFleet("safe", map[string]string{"restart-app": script}, safeNodes, tmpl, nil); err != nil {
		return err
	}
	// The first render restarts every node once; then the change is shown.
	if err := d.waitServices(ctx, services, 1); err != nil {
		return fmt.Errorf("initial render: %w", err)
	}
	d.printf("initial render: every node restarted once\nchanging %s: v1 -> v2 ...\n", restartKey)
	changed := time.Now()
	if err := d.put(restartKey, "v2"); err != nil {
		return err
	}
	return d.followServices(ctx, services, changed)
}

// waitServices waits until every service was restarted want times and is
// back up, and no worker runs.
func (d *demo) waitServices(ctx context.Context, services []*appService, want int) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		done := true
		for _, s := range services {
			last, ok := s.lastRestart()
			done = done && ok && len(s.downs()) >= want && time.Since(last) > serviceDownFor
		}
		for _, n := range d.fleet.nodes {
			done = done && n.workerPID() == 0
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the services did not all restart within 2m")
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// followServices prints each service going down and coming back after
// changed, until every one has, and the verdict.
func (d *demo) followServices(ctx context.Context, services []*appService, changed time.Time) error {
	type change struct {
		at   time.Time
		node string
		down bool
	}
	printed := map[string]bool{}
	var intervals [][2]time.Time
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var all []change
		intervals = intervals[:0]
		for _, s := range services {
			for _, at := range s.downs() {
				if at.Before(changed) {
					continue
				}
				intervals = append(intervals, [2]time.Time{at, at.Add(serviceDownFor)})
				all = append(all, change{at, s.node, true})
				if up := at.Add(serviceDownFor); time.Now().After(up) {
					all = append(all, change{up, s.node, false})
				}
			}
		}
		sort.Slice(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
		for _, c := range all {
			key := fmt.Sprintf("%s %t %d", c.node, c.down, c.at.UnixNano())
			if printed[key] {
				continue
			}
			printed[key] = true
			what := "service UP again"
			if c.down {
				what = "restarted: service DOWN"
			}
			d.printf("  +%.2fs  %-7s %s   (down now: %d)\n", c.at.Sub(changed).Seconds(), c.node, what, downAt(intervals, c.at))
		}
		if len(all) == 2*len(services) && d.idle() {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("not every node restarted within 2m")
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(50 * time.Millisecond):
		}
	}
	peak := 0
	for _, iv := range intervals {
		peak = max(peak, downAt(intervals, iv[0]))
	}
	if peak > 1 {
		d.printf("FAILED: %d services were down at once, the limit is 1\n", peak)
		return fmt.Errorf("%d services were down at once with -n=1 and -wait-healthy", peak)
	}
	d.printf("all %d nodes restarted; never more than %d service down at once (-n=1 with -wait-healthy)\n", len(services), peak)
	return nil
}

// downAt counts the intervals covering t.
func downAt(intervals [][2]time.Time, t time.Time) int {
	n := 0
	for _, iv := range intervals {
		if !t.Before(iv[0]) && t.Before(iv[1]) {
			n++
		}
	}
	return n
}

// idle reports whether no worker of the current fleet runs.
func (d *demo) idle() bool {
	for _, n := range d.fleet.nodes {
		if n.workerPID() != 0 {
			return false
		}
	}
	return true
}

// badConfig is the bad-config scenario: the nodes have names of their own
// (CT_SUPERVISE_NODE); the first to reload the bad config fails and halts
// the rollout; the others wait, and never reload it.
func (d *demo) badConfig(ctx context.Context) error {
	const nodes = 3
	reload := "#!/bin/sh\n# The demo's \"nginx -s reload\": it fails on a config with \"}}\" in it.\n" +
		"if grep -q '}}' \"$CT_SUPERVISE_DEMO_DEST\"; then echo \"nginx: [emerg] unexpected \\\"}\\\" in $CT_SUPERVISE_DEMO_DEST\" >&2; exit 1; fi\n" +
		"exec reload-app\n"
	call := `{{ plugin "ct-supervise" "register" "-n=1" "-name=demo-nginx" "-on-failure=halt" "reload-nginx" }}`
	tmpl := call + "\nupstream {{ key \"" + badKey + "\" }}\n"
	d.printf("\n== bad config: %d nodes, -n=1, -on-failure=halt ==\n  %s\n", nodes, call)
	if err := d.put(badKey, "app { server 10.0.0.1 }"); err != nil {
		return err
	}
	env := func(name string) []string {
		return []string{"CT_SUPERVISE_NODE=" + name,
			"CT_SUPERVISE_DEMO_DEST=" + filepath.Join(d.dir, "bad", name, "upstreams.conf")}
	}
	f, err := d.newScenarioFleet("bad", map[string]string{"reload-nginx": reload}, nodes, tmpl, env)
	if err != nil {
		return err
	}
	if _, err := f.waitRoll(ctx, f.ledger.len(), 2*time.Minute, nil); err != nil {
		return fmt.Errorf("initial render: %w", err)
	}
	d.printf("initial render: every node reloaded the good config\nwriting a bad config to %s ...\n", badKey)
	mark := f.ledger.len()
	changed := time.Now()
	if err := d.put(badKey, "app { server 10.0.0.1 }}"); err != nil {
		return err
	}
	return d.followHalt(ctx, f, mark, changed)
}

// followHalt prints each node's phase from the rollout view until the
// halt has stood for a while, and the verdict.
func (d *demo) followHalt(ctx context.Context, f *fleet, mark int, changed time.Time) error {
	last := map[string]string{}
	var haltedAt time.Time
	deadline := time.Now().Add(2 * time.Minute)
	for {
		view, err := d.rollout(ctx, "demo-nginx")
		if err != nil {
			return err
		}
		for _, n := range view.Nodes {
			p := n.Phase
			if n.LastResult != "" && !n.OK && p != "halted" {
				p += ": " + n.LastResult
			}
			if last[n.Node] != p {
				last[n.Node] = p
				d.printf("  +%.2fs  %-7s %s\n", time.Since(changed).Seconds(), n.Node, p)
			}
		}
		if view.Halt != nil && haltedAt.IsZero() {
			haltedAt = time.Now()
			d.printf("  +%.2fs  HALT by %s: %s\n", time.Since(changed).Seconds(), view.Halt.Node, view.Halt.Reason)
		}
		if !haltedAt.IsZero() && time.Since(haltedAt) > 3*time.Second {
			if err := f.ledger.poll(); err != nil {
				return err
			}
			if reloaded := len(f.ledger.since(mark)); reloaded > 0 {
				d.printf("FAILED: %d reloads ran after the halt\n", reloaded/2)
				return errors.New("nodes reloaded while the rollout was halted")
			}
			d.printf("rollout halted at the first node (%s): the other nodes never reloaded the bad config; "+
				"fix it, or run 'ct-supervise resume demo-nginx'\n", view.Halt.Node)
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the bad config did not halt the rollout within 2m")
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rolloutView is what the demo reads of `rollout -json`.
type rolloutView struct {
	Nodes []struct {
		Node       string `json:"node"`
		Phase      string `json:"phase"`
		LastResult string `json:"last_result"`
		OK         bool   `json:"ok"`
	} `json:"nodes"`
	Halt *struct {
		Node   string `json:"node"`
		Reason string `json:"reason"`
	} `json:"halt"`
}

func (d *demo) rollout(ctx context.Context, name string) (rolloutView, error) {
	var v rolloutView
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, "rollout", "-json", name)
	cmd.Env = append(cleanEnv(), "CONSUL_HTTP_ADDR="+d.agent.Addr())
	out, err := cmd.Output()
	if err != nil {
		return v, fmt.Errorf("ct-supervise rollout: %w", err)
	}
	return v, json.Unmarshal(out, &v)
}
