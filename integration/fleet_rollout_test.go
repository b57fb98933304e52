package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	fleetkv "ct-supervise/fleet"
	"ct-supervise/internal/shell"
)

// Fleet control through the worker: halts, pause, blockers and the rollout
// view, with every node's worker on the package agent under a node name of
// its own (CT_SUPERVISE_NODE).

// haltScript is the action of the halt tests: the first node to run it
// while FAILFILE exists becomes the failing node and exits 1 for as long
// as FAILFILE exists; every other run writes the ledger as ledgerAction's
// does.
const haltScript = `#!/bin/sh
ledger=$1 dir=$2
if [ -e "$dir/fail" ]; then
	mkdir "$dir/claimed" 2>/dev/null && echo "$CT_SUPERVISE_NODE" > "$dir/who"
	if [ "$(cat "$dir/who" 2>/dev/null)" = "$CT_SUPERVISE_NODE" ]; then
		echo "$CT_SUPERVISE_NODE: bad config" >&2
		exit 1
	fi
fi
seen=$(sed -n 's/^value=//p' "$CT_SUPERVISE_IT_DEST" 2>/dev/null | head -n 1)
echo "$CT_SUPERVISE_NODE start $(date +%s%N) ${seen:--}" >> "$ledger"
sleep 0.3
echo "$CT_SUPERVISE_NODE end $(date +%s%N)" >> "$ledger"
`

// End to end with real consul-template: the first node to fail halts the
// rollout; no other node starts while the halt stands; the failing node's
// own retry, once it succeeds, lifts the halt and the rest follow.
func TestConsulTemplateHaltOnFailure(t *testing.T) {
	client := consulClient(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "action.sh")
	if err := os.WriteFile(script, []byte(haltScript), 0o700); err != nil {
		t.Fatal(err)
	}
	ledger := filepath.Join(dir, "ledger")
	key := "it/ct-halt/upstream"
	name := "ct-halt"
	prefix := "ct-supervise/" + name
	t.Cleanup(func() { _, _ = client.KV().DeleteTree(prefix+fleetkv.Suffix+"/", nil) })
	putKV(t, key, "v1")
	tmpl := ctTemplate{
		name: "upstreams",
		body: fmt.Sprintf("{{ plugin \"ct-supervise\" \"register\" \"-n=1\" \"-name=%s\" \"-version=v1\" %q }}\nvalue={{ key %q }}\n",
			name, fmt.Sprintf("sh %s %s %s", shell.Quote(script), shell.Quote(ledger), shell.Quote(dir)), key),
		command: "ct-supervise exec",
	}
	f := &fleet{t: t, ledger: ledger}
	for i := 1; i <= 4; i++ {
		f.nodes = append(f.nodes, startConsulTemplate(t, fmt.Sprintf("node-%d", i), []ctTemplate{tmpl}, false))
	}
	initial := f.waitRoll(0, "v1", 90*time.Second)

	if err := os.WriteFile(filepath.Join(dir, "fail"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	putKV(t, key, "v2")
	fl := fleetkv.New(client, prefix)
	var halt *fleetkv.Halt
	waitFor(t, 60*time.Second, "a halt", func() bool {
		halt, _ = fl.Halt(context.Background())
		return halt != nil
	})
	who := strings.TrimSpace(readFile(t, filepath.Join(dir, "who")))
	if halt.Node != who || !strings.Contains(halt.Reason, "exited with status 1") {
		t.Fatalf("halt %+v, want one by %s for its exit status", halt, who)
	}
	// Some node that has not run v2 waits, and says why.
	var waiting *ctNode
	waitFor(t, 30*time.Second, "a node to wait on the halt", func() bool {
		for _, n := range f.nodes {
			if n.name == who {
				continue
			}
			if st := actionPhase(t, n.node, name); st.Phase == "halted" && strings.Contains(st.Detail, "halted by "+who) {
				waiting = n
				return true
			}
		}
		return false
	})
	time.Sleep(4 * time.Second) // the failing node retries meanwhile, and fails
	for _, r := range f.runs()[len(initial):] {
		if r.start >= halt.At.UnixNano() {
			t.Fatalf("%s started at %s while %s's halt stood (since %s):\n%s", r.node,
				time.Unix(0, r.start).Format("15:04:05.000"), who, halt.At.Format("15:04:05.000"), timeline(f.runs()))
		}
	}
	r := waiting.mustRun("status", name)
	if !strings.Contains(r.stdout, "halted by "+who) {
		t.Errorf("status of a waiting node does not say who halted:\n%s", r.stdout)
	}

	// The failing node is fixed: its next retry succeeds and lifts the halt.
	if err := os.Remove(filepath.Join(dir, "fail")); err != nil {
		t.Fatal(err)
	}
	rolled := f.waitRoll(len(initial), "v2", 90*time.Second)
	var fixed int64
	for _, r := range rolled {
		if r.node == who {
			fixed = r.start
		}
	}
	for _, r := range rolled {
		if r.node != who && r.start >= halt.At.UnixNano() && r.start < fixed {
			t.Fatalf("%s started before the failing node %s succeeded:\n%s", r.node, who, timeline(rolled))
		}
	}
	if h, _ := fl.Halt(context.Background()); h != nil {
		t.Fatalf("the halt stands after the failing node succeeded: %+v", h)
	}
}

// phaseOf is an action's phase in `status -json`.
type phaseOf struct {
	Phase  string
	Detail string
	State  string
}

// actionPhase reads the named action's phase from the node's status.
func actionPhase(t *testing.T, n *node, name string) phaseOf {
	t.Helper()
	r := n.run("status", "-json", name)
	var a struct {
		State       string `json:"state"`
		Phase       string `json:"phase"`
		PhaseDetail string `json:"phase_detail"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &a) != nil {
		return phaseOf{}
	}
	return phaseOf{Phase: a.Phase, Detail: a.PhaseDetail, State: a.State}
}

// declare registers an action on the node and queues it, as a template's
// render and command would.
func declare(t *testing.T, n *node, name string, args ...string) {
	t.Helper()
	n.mustRun(append([]string{"register", "-name=" + name}, args...)...)
	n.mustRun("exec", name)
}

// lastOK reports whether the node's last try of the action succeeded.
func lastOK(n *node, name string) bool {
	st := n.status()
	for _, a := range st["actions"].([]any) {
		m := a.(map[string]any)
		if m["name"] == name {
			last, _ := m["last"].(map[string]any)
			return last != nil && last["ok"] == true
		}
	}
	return false
}

// A halt that the failing node cannot lift (it gave up) holds the others
// until an operator resumes; with -on-failure=continue nothing is held and
// the failure shows in the rollout view.
func TestHaltResumeAndContinue(t *testing.T) {
	client := consulClient(t)
	for _, tc := range []struct {
		policy string
		halts  bool
	}{{"halt", true}, {"continue", false}} {
		t.Run(tc.policy, func(t *testing.T) {
			name := "fleet-" + tc.policy
			t.Cleanup(func() { _, _ = client.KV().DeleteTree("ct-supervise/"+name+fleetkv.Suffix+"/", nil) })
			bad, good := newNode(t, "node-1"), newNode(t, "node-2")
			bad.logOnFailure()
			good.logOnFailure()
			marker := filepath.Join(t.TempDir(), "ran")
			declare(t, bad, name, "-on-failure="+tc.policy, "-max-attempts=1", "-version=v2", "exit 1")
			waitFor(t, 30*time.Second, "node-1 to fail", func() bool {
				r := bad.mustRun("rollout", name)
				return strings.Contains(r.stdout, "1 failed (node-1)")
			})
			declare(t, good, name, "-on-failure="+tc.policy, "-max-attempts=1", "-version=v2", "touch "+marker)
			if !tc.halts {
				waitFor(t, 30*time.Second, "node-2 to run", func() bool { return fileExists(marker) })
				r := good.mustRun("rollout", name)
				if !strings.Contains(r.stdout, "1 failed (node-1)") || !strings.Contains(r.stdout, "halted: no") {
					t.Fatalf("rollout after a failure with continue:\n%s", r.stdout)
				}
				return
			}
			heldUntilResumed(t, good, name, "halted", "halted by node-1", marker)
		})
	}
}

// A pause stops new starts everywhere; what runs finishes; resume goes on.
func TestPauseStopsNewStarts(t *testing.T) {
	client := consulClient(t)
	name := "fleet-pause"
	t.Cleanup(func() { _, _ = client.KV().DeleteTree("ct-supervise/"+name+fleetkv.Suffix+"/", nil) })
	a, b := newNode(t, "node-1"), newNode(t, "node-2")
	dir := t.TempDir()
	started, finished, ranB := filepath.Join(dir, "started"), filepath.Join(dir, "finished"), filepath.Join(dir, "b")
	declare(t, a, name, fmt.Sprintf("touch %s; sleep 2; touch %s", started, finished))
	waitFor(t, 30*time.Second, "node-1's action to start", func() bool { return fileExists(started) })
	a.mustRun("pause", "-reason", "change freeze", name)
	declare(t, b, name, "touch "+ranB)
	waitFor(t, 30*time.Second, "node-1's action to finish despite the pause", func() bool { return fileExists(finished) })
	heldUntilResumed(t, b, name, "paused", "change freeze", ranB)
}

// heldUntilResumed checks that n's action name waits in phase (its detail
// mentioning why) without running (marker, which its command creates, stays
// absent), and that it runs once resumed.
func heldUntilResumed(t *testing.T, n *node, name, phase, why, marker string) {
	t.Helper()
	waitFor(t, 30*time.Second, n.name+" to wait, "+phase, func() bool {
		p := actionPhase(t, n, name)
		return p.Phase == phase && strings.Contains(p.Detail, why)
	})
	time.Sleep(2 * time.Second)
	if fileExists(marker) {
		t.Fatalf("%s ran while %s", n.name, phase)
	}
	n.mustRun("resume", name)
	waitFor(t, 30*time.Second, n.name+" to run after resume", func() bool { return fileExists(marker) })
}

// While an instance of a -unless-critical service elsewhere is critical,
// nothing starts; once it passes, the action runs.
func TestBlockerHoldsTheStart(t *testing.T) {
	client := consulClient(t)
	err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "blk-db-1", Name: "blk-db",
		Check: &api.AgentServiceCheck{CheckID: "blk-db-ttl", TTL: "10m", Status: api.HealthCritical}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Agent().ServiceDeregister("blk-db-1") })
	name := "fleet-blocker"
	t.Cleanup(func() { _, _ = client.KV().DeleteTree("ct-supervise/"+name+fleetkv.Suffix+"/", nil) })
	// node-1 is not the agent's node: the db instance is elsewhere.
	n := newNode(t, "node-1")
	ran := filepath.Join(t.TempDir(), "ran")
	declare(t, n, name, "-unless-critical=blk-db", "touch "+ran)
	waitFor(t, 30*time.Second, "the action to be blocked", func() bool {
		p := actionPhase(t, n, name)
		return p.Phase == "blocked" && strings.Contains(p.Detail, "blk-db")
	})
	time.Sleep(2 * time.Second)
	if fileExists(ran) {
		t.Fatal("the action ran while the blocker was critical")
	}
	if err := client.Agent().UpdateTTL("blk-db-ttl", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the action to run once the blocker passes", func() bool { return fileExists(ran) })
}

// rollout -json lists every node with its version and phase; an idle
// node whose worker exited is not gone; a node whose worker was killed is.
func TestRolloutJSONShowsGoneNodes(t *testing.T) {
	client := consulClient(t)
	name := "fleet-view"
	t.Cleanup(func() { _, _ = client.KV().DeleteTree("ct-supervise/"+name+fleetkv.Suffix+"/", nil) })
	// The killed worker leaves its lock session (no successor reclaims
	// it here) and maybe its records session: later tests count sessions.
	t.Cleanup(func() {
		all, _, _ := client.Session().List(nil)
		for _, s := range all {
			if s.Name == "ct-supervise "+name || s.Name == "ct-supervise worker node-3" {
				_, _ = client.Session().Destroy(s.ID, nil)
			}
		}
	})
	nodes := []*node{newNode(t, "node-1"), newNode(t, "node-2"), newNode(t, "node-3")}
	for _, n := range nodes[:2] {
		declare(t, n, name, "-version=v7", "true")
	}
	for _, n := range nodes[:2] {
		waitFor(t, 30*time.Second, n.name+" done and its worker gone", func() bool {
			return lastOK(n, name) && n.workerPID() == 0
		})
	}
	declare(t, nodes[2], name, "-version=v8", "sleep 30")
	view := func() map[string]fleetkv.Record {
		r := nodes[0].mustRun("rollout", "-json", name)
		var v struct {
			Nodes   []fleetkv.Record `json:"nodes"`
			Summary string           `json:"summary"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatalf("rollout -json: %v\n%s", err, r.stdout)
		}
		m := map[string]fleetkv.Record{}
		for _, rec := range v.Nodes {
			m[rec.Node] = rec
		}
		return m
	}
	waitFor(t, 30*time.Second, "node-3 running in the view", func() bool { return view()["node-3"].Phase == "running" })
	v := view()
	for _, n := range []string{"node-1", "node-2"} {
		if r := v[n]; r.Version != "v7" || r.Phase != "idle" || r.Gone || !r.OK {
			t.Fatalf("%s in the view: %+v, want idle at v7, not gone", n, r)
		}
	}
	if r := v["node-3"]; r.Version != "v8" || r.Gone {
		t.Fatalf("node-3 in the view: %+v", r)
	}
	pid := nodes[2].workerPID()
	if pid <= 0 {
		t.Fatal("node-3 has no worker")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "node-3 to read gone", func() bool { return view()["node-3"].Gone })
	if v := view(); v["node-1"].Gone || v["node-2"].Gone {
		t.Fatalf("idle nodes read gone: %+v", v)
	}
}
