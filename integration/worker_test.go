package integration

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// actionStates returns each action's state from `status -json`.
func (n *node) actionStates() map[string]string {
	n.t.Helper()
	states := map[string]string{}
	for _, a := range n.status()["actions"].([]any) {
		m := a.(map[string]any)
		states[m["name"].(string)] = m["state"].(string)
	}
	return states
}

// The measurement of the issue: with a's lock held elsewhere, b runs at
// once, and `exec -wait b` waits for b only.
func TestIndependentActionDoesNotWait(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	markA, markB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	n.mustRun("register", "-name=a", "-prefix=hol/a", "echo ran >> "+markA)
	n.mustRun("register", "-name=b", "-prefix=hol/b", "echo ran >> "+markB)
	release := holdLock(t, "hol/a")

	queued := time.Now()
	n.mustRun("exec", "a", "b")
	waitFor(t, 20*time.Second, "b to run while a waits", func() bool { return len(lines(markB)) == 1 })
	took := time.Since(queued)
	t.Logf("b ran %s after exec a b, a's lock being held elsewhere (target: within 1s)", took.Round(time.Millisecond))
	// Generous for a loaded 2-core machine; one action at a time made b
	// wait for as long as a's lock was held (here: until the test ends).
	if took > 10*time.Second {
		t.Errorf("b ran %s after exec, want within a few seconds", took)
	}
	if got := n.actionStates(); got["a"] != "waiting" || got["b"] != "idle" {
		t.Errorf("states = %v, want a waiting and b idle", got)
	}

	// exec -wait NAME waits for the named action only.
	r := n.run("exec", "-wait", "-wait-timeout=20s", "b")
	if r.code != 0 || r.took > 10*time.Second {
		t.Fatalf("exec -wait b with a blocked: exit %d after %s (%s), want 0 promptly", r.code, r.took, r.stderr)
	}
	if len(lines(markA)) != 0 {
		t.Fatal("a ran while its lock was held elsewhere")
	}
	release()
	waitFor(t, 20*time.Second, "a to run once its lock is free", func() bool { return len(lines(markA)) == 1 })
	if got := len(lines(markB)); got != 2 {
		t.Fatalf("b ran %d times, want 2", got)
	}
}

// Five actions, two of them blocked elsewhere: the other three run at once,
// and the two when their locks free up.
func TestBlockedActionsHoldUpNoOthers(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	names := []string{"a1", "a2", "a3", "a4", "a5"}
	for _, name := range names {
		n.mustRun("register", "-name="+name, "-prefix=five/"+name, "echo ran >> "+filepath.Join(dir, name))
	}
	releases := []func(){holdLock(t, "five/a2"), holdLock(t, "five/a4")}
	n.mustRun("exec")
	ran := func(name string) bool { return len(lines(filepath.Join(dir, name))) == 1 }
	waitFor(t, 20*time.Second, "a1, a3 and a5 to run", func() bool { return ran("a1") && ran("a3") && ran("a5") })
	if ran("a2") || ran("a4") {
		t.Fatal("a blocked action ran")
	}
	var states map[string]string
	waitFor(t, 20*time.Second, "a1, a3 and a5 to be idle", func() bool {
		states = n.actionStates()
		return states["a1"] == "idle" && states["a3"] == "idle" && states["a5"] == "idle"
	})
	if states["a2"] != "waiting" || states["a4"] != "waiting" {
		t.Errorf("states = %v, want a2 and a4 waiting for their locks", states)
	}
	for _, release := range releases {
		release()
	}
	waitFor(t, 20*time.Second, "a2 and a4 to run once free", func() bool { return ran("a2") && ran("a4") })
	waitFor(t, 20*time.Second, "the worker to exit", func() bool { return n.workerPID() == 0 })
}

// 20 actions, 10 requests each, all at once, each request a new
// declaration: every action runs between 1 and 10 times and last runs its
// latest declaration, and state.json is valid whenever it is read.
func TestManyActionsManyRequests(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	const actions, requests = 20, 10

	stop := make(chan struct{})
	var reads int
	readerDone := make(chan error, 1)
	go func() {
		path := filepath.Join(n.stateDir, "state.json")
		for {
			select {
			case <-stop:
				readerDone <- nil
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err == nil {
				var v map[string]any
				if err := json.Unmarshal(b, &v); err != nil {
					readerDone <- fmt.Errorf("state.json invalid after %d reads: %v", reads, err)
					return
				}
				reads++
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	var wg sync.WaitGroup
	for i := 0; i < actions; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("s%02d", i)
			out := filepath.Join(dir, name)
			for v := 1; v <= requests; v++ {
				r := n.run("register", "-name="+name, "-prefix=stress/"+name, fmt.Sprintf("sleep 0.0%d; echo v%d >> %s", rand.IntN(10), v, out))
				if r.code != 0 {
					t.Errorf("register %s v%d: exit %d %s", name, v, r.code, r.stderr)
				}
				if r := n.run("exec", name); r.code != 0 {
					t.Errorf("exec %s: exit %d %s", name, r.code, r.stderr)
				}
			}
		}(i)
	}
	wg.Wait()
	waitFor(t, 120*time.Second, "the queue to drain", func() bool { return n.workerPID() == 0 })
	close(stop)
	if err := <-readerDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("state.json read and valid %d times", reads)
	for i := 0; i < actions; i++ {
		name := fmt.Sprintf("s%02d", i)
		runs := lines(filepath.Join(dir, name))
		if len(runs) < 1 || len(runs) > requests {
			t.Errorf("%s ran %d times, want between 1 and %d", name, len(runs), requests)
			continue
		}
		if last := runs[len(runs)-1]; last != fmt.Sprintf("v%d", requests) {
			t.Errorf("%s last ran %q, want its latest declaration v%d (runs %v)", name, last, requests, runs)
		}
	}
}

// startForegroundWorker starts `worker -keep-running ARGS...` as a service
// would and waits until it holds the state directory.
func (n *node) startForegroundWorker(args ...string) (*exec.Cmd, chan error) {
	n.t.Helper()
	cmd := exec.Command(binary, append([]string{"worker", "-keep-running"}, args...)...)
	cmd.Env = n.env
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	n.t.Cleanup(func() { _ = cmd.Process.Kill() })
	waitFor(n.t, 10*time.Second, "the worker to take the state directory", func() bool { return n.workerPID() == cmd.Process.Pid })
	return cmd, exited
}

// SIGTERM lets a running command finish within -stop-grace; past it the
// command is stopped and the action stays queued. Either way the lock is
// given back.
func TestWorkerStopGrace(t *testing.T) {
	needConsul(t)
	client, err := agent.Client()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, grace, sleep string
		finished           bool
	}{
		{"finishes within the grace", "20s", "2", true},
		{"stopped past the grace", "500ms", "60", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, "node1")
			n.logOnFailure()
			ledger := filepath.Join(t.TempDir(), "ledger")
			prefix := "grace/" + strconv.FormatInt(time.Now().UnixNano(), 36)
			n.mustRun("register", "-name=g", "-prefix="+prefix,
				fmt.Sprintf("echo start >> %s; sleep %s; echo end >> %s", ledger, tc.sleep, ledger))
			w, exited := n.startForegroundWorker("-stop-grace=" + tc.grace)
			n.mustRun("exec")
			waitFor(t, 20*time.Second, "the command to start", func() bool { return len(lines(ledger)) == 1 })
			if err := w.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("worker on SIGTERM: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the worker did not stop within 30s of SIGTERM")
			}
			got := lines(ledger)
			if ended := len(got) == 2; ended != tc.finished {
				t.Fatalf("ledger %v: command finished = %v, want %v", got, ended, tc.finished)
			}
			want := "idle"
			if !tc.finished {
				want = "queued"
			}
			if st := n.actionStates()["g"]; st != want {
				t.Errorf("state after the stop = %q, want %q", st, want)
			}
			if p, _, err := client.KV().Get(prefix+"/.lock", nil); err != nil || (p != nil && p.Session != "") {
				t.Errorf("the lock is still held after the worker stopped: %+v %v", p, err)
			}
		})
	}
}

// groupRunning reports whether any process of group pgid has not exited
// (zombies waiting for init to reap them do not count).
func groupRunning(pgid int) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" {
			return true
		}
	}
	return false
}

// A worker killed mid-action (SIGKILL): the next worker stops the command it
// left running and frees the lock within seconds, then runs the action
// again.
func TestWorkerKilledMidActionIsReclaimedFast(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	dir := t.TempDir()
	ledger, quick := filepath.Join(dir, "ledger"), filepath.Join(dir, "quick")
	// The first run sleeps long; the rerun, once quick exists, does not.
	n.mustRun("register", "-name=killed",
		fmt.Sprintf("echo $$ >> %s; [ -e %s ] || sleep 120", ledger, quick))
	n.mustRun("exec")
	waitFor(t, 20*time.Second, "the action to start", func() bool { return len(lines(ledger)) == 1 })
	orphan, err := strconv.Atoi(lines(ledger)[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-orphan, syscall.SIGKILL) })
	// The worker records the command's pid just after starting it: kill
	// it only once it has (see TestRecoverLeavesUnnamedCommandsLockAlone
	// for a worker killed before).
	waitFor(t, 10*time.Second, "the worker to record the command's pid", func() bool {
		var st struct {
			Actions map[string]struct {
				PID int `json:"pid"`
			} `json:"actions"`
		}
		b, _ := os.ReadFile(filepath.Join(n.stateDir, "state.json"))
		return json.Unmarshal(b, &st) == nil && st.Actions["killed"].PID == orphan
	})
	pid := n.workerPID()
	if pid <= 0 { // never kill(-1)
		t.Fatalf("no worker pid (%d)", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the worker to die", func() bool { return n.workerPID() == 0 })
	// The parent-death signal kills the command's first process with the
	// worker; the sleep it started lives on in its process group.
	if !groupRunning(orphan) {
		t.Fatal("nothing of the command outlived its worker; this test needs something to")
	}
	if err := os.WriteFile(quick, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	started := time.Now()
	n.mustRun("exec")
	waitFor(t, 30*time.Second, "the interrupted action to run again", func() bool { return len(lines(ledger)) == 2 })
	took := time.Since(started)
	t.Logf("from the next worker's start to the rerun: %s (target for the lock: 5s)", took.Round(time.Millisecond))
	if groupRunning(orphan) {
		t.Fatalf("what the dead worker's command left (process group %d) still runs beside the rerun", orphan)
	}
	// The target is 5s; the slack is for a loaded machine. Waiting for
	// the session TTL and lock-delay took about 45s.
	if took > 12*time.Second {
		t.Errorf("the rerun started %s after the next worker, want within seconds", took)
	}
	waitFor(t, 20*time.Second, "the rerun to finish", func() bool { return n.workerPID() == 0 })
	if st := n.actionStates()["killed"]; st != "idle" {
		t.Fatalf("after the rerun: %s, want idle", st)
	}
}

// A worker that cannot start (a CA file that does not exist) says why in
// its log and in status; exec -wait fails with 78 naming the file, without
// starting workers in a loop.
func TestWorkerStartFailureIsReported(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	n.env = append(n.env, "CONSUL_CACERT=/nonexistent/ca.pem")
	n.mustRun("register", "-name=ca", "true")
	r := n.mustRun("exec")
	logPath := filepath.Join(n.stateDir, "worker.log")
	waitFor(t, 10*time.Second, "the worker to log why it cannot start", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "/nonexistent/ca.pem")
	})
	st := n.status()
	f, _ := st["worker_failure"].(map[string]any)
	if msg, _ := f["message"].(string); !strings.Contains(msg, "/nonexistent/ca.pem") || f["exit_code"] != float64(78) {
		t.Fatalf("status worker_failure = %v, want the CA file named and exit code 78 (exec said %q)", st["worker_failure"], r.stderr)
	}
	if text := n.mustRun("status").stdout; !strings.Contains(text, "failed to start") {
		t.Errorf("status does not say the worker failed to start:\n%s", text)
	}

	r = n.run("exec", "-wait", "-wait-timeout=20s")
	if r.code != 78 || !strings.Contains(r.stderr, "/nonexistent/ca.pem") {
		t.Fatalf("exec -wait: exit %d stderr %q, want 78 naming the CA file", r.code, r.stderr)
	}
	time.Sleep(time.Second)
	if starts := strings.Count(readFile(t, logPath), "worker cannot start"); starts > 2 {
		t.Fatalf("%d workers were started and failed; exec must back off", starts)
	}
}

// aclToken is the management token of the ACL-enabled agent.
const aclToken = "3f2c6a0e-6b1a-4c55-9a55-0c1f2d3e4b5a"

// startACLAgent starts a Consul agent of the test's own with ACLs on and
// everything denied to the anonymous token.
func startACLAgent(t *testing.T) (*devconsul.Agent, *api.Client) {
	t.Helper()
	needConsul(t)
	a, err := devconsul.Start(devconsul.Options{ExtraConfig: fmt.Sprintf(
		`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, aclToken, aclToken)})
	if err != nil {
		t.Fatalf("starting an ACL agent: %v", err)
	}
	t.Cleanup(a.Stop)
	cfg := a.Config()
	cfg.Token = aclToken
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Sessions need this node in the catalog.
	waitFor(t, 20*time.Second, "the node to be registered", func() bool {
		node, _, err := client.Catalog().Node("devconsul", nil)
		return err == nil && node != nil
	})
	return a, client
}

// withoutConsulEnv returns env without any CONSUL_* variable.
func withoutConsulEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "CONSUL_") {
			out = append(out, kv)
		}
	}
	return out
}

// consul-template configured through HCL only (consul { address, token }),
// with no CONSUL_* in its environment and ACLs on: a worker that register
// starts, which gets consul-template's own environment, reaches Consul
// with the settings consul-template gives its commands. The token never
// shows in state.json, status or the worker's arguments.
func TestWorkerUsesConsulTemplateSettings(t *testing.T) {
	needConsulTemplate(t)
	acl, client := startACLAgent(t)
	n := newNode(t, "acl")
	n.logOnFailure()
	n.env = withoutConsulEnv(n.env)
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")

	// The key changes trigger renders whose output does not change: the
	// plugin runs, the command does not.
	tmpl := fmt.Sprintf(`{{ with keyOrDefault "ctl/x" "" }}{{ end }}{{ plugin "ct-supervise" "register" "-name=acl" "-prefix=acl/p" "echo ran >> %s" }}ok
`, marker)
	src, dest, cfgPath := filepath.Join(dir, "t.ctmpl"), filepath.Join(dir, "t.out"), filepath.Join(dir, "ct.hcl")
	cfg := fmt.Sprintf("log_level = \"debug\"\nkill_signal = \"SIGTERM\"\nconsul {\n  address = %q\n  token = %q\n}\ntemplate {\n  source = %q\n  destination = %q\n  command = \"ct-supervise exec\"\n}\n",
		acl.Addr(), aclToken, src, dest)
	for path, body := range map[string]string{src: tmpl, cfgPath: cfg} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ct := exec.Command("consul-template", "-config="+cfgPath)
	ct.Env = append(withoutConsulEnv(n.env), "PATH="+filepath.Dir(binary)+string(os.PathListSeparator)+os.Getenv("PATH"))
	var ctLog strings.Builder
	ct.Stdout, ct.Stderr = &ctLog, &ctLog
	ct.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := ct.Start(); err != nil {
		t.Fatal(err)
	}
	ctDone := make(chan struct{})
	go func() { _ = ct.Wait(); close(ctDone) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-ct.Process.Pid, syscall.SIGTERM)
		select {
		case <-ctDone:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-ct.Process.Pid, syscall.SIGKILL)
			<-ctDone
		}
		if t.Failed() {
			t.Logf("consul-template log:\n%s", tail(ctLog.String(), ctLogTail))
		}
	})

	// The first render: exec (a command) records the settings and its
	// worker runs the action.
	waitFor(t, 30*time.Second, "the first render's action to run", func() bool { return len(lines(marker)) == 1 })
	waitFor(t, 20*time.Second, "the worker to exit", func() bool { return n.workerPID() == 0 })

	// Orphan a request: queued by hand (no CONSUL_* here: nothing is
	// recorded over consul-template's settings), its worker killed while
	// it waits for a lock held elsewhere.
	holder, err := client.LockOpts(&api.LockOptions{Key: "acl/p/.lock", SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Lock(nil); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			_ = holder.Unlock()
			_ = holder.Destroy()
		}
	}
	t.Cleanup(release)
	n.mustRun("exec", "acl")
	waitFor(t, 20*time.Second, "the worker to wait for the lock", func() bool { return n.actionStates()["acl"] == "waiting" })
	dead := n.workerPID()
	if dead <= 0 {
		t.Fatalf("no worker pid (%d)", dead)
	}
	if err := syscall.Kill(dead, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the worker to die", func() bool { return n.workerPID() == 0 })

	// A render that changes nothing: only register runs, and it starts
	// the worker with consul-template's own environment.
	if _, err := client.KV().Put(&api.KVPair{Key: "ctl/x", Value: []byte("1")}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "register to start a worker", func() bool {
		pid := n.workerPID()
		return pid > 0 && pid != dead
	})
	worker := n.workerPID()
	release()
	waitFor(t, 30*time.Second, "the action to run with consul-template's settings", func() bool { return len(lines(marker)) == 2 })

	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", worker))
	for what, text := range map[string]string{
		"state.json":        readFile(t, filepath.Join(n.stateDir, "state.json")),
		"status":            n.mustRun("status").stdout,
		"status -json":      n.mustRun("status", "-json").stdout,
		"the worker's argv": string(cmdline),
		"the worker's log":  readFile(t, filepath.Join(n.stateDir, "worker.log")),
	} {
		if strings.Contains(text, aclToken) {
			t.Errorf("the token shows in %s", what)
		}
	}
	fi, err := os.Stat(filepath.Join(n.stateDir, "consul-settings.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the recorded settings: %v %v, want mode 0600", fi, err)
	}
}

// SIGTERM stops every track: an action waiting for its lock at once, a
// running one after the stop grace. Both stay queued, no lock is held and
// no session is left.
func TestWorkerStopStopsEveryTrack(t *testing.T) {
	needConsul(t)
	client, err := agent.Client()
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, "node1")
	n.logOnFailure()
	ledger := filepath.Join(t.TempDir(), "ledger")
	base := "everytrack/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	n.mustRun("register", "-name=blocked", "-prefix="+base+"/blocked", "echo blocked >> "+ledger)
	n.mustRun("register", "-name=long", "-prefix="+base+"/long", fmt.Sprintf("echo long >> %s; sleep 60", ledger))
	holdLock(t, base+"/blocked")
	w, exited := n.startForegroundWorker("-stop-grace=500ms")
	n.mustRun("exec")
	waitFor(t, 20*time.Second, "long to run and blocked to wait", func() bool {
		st := n.actionStates()
		return st["long"] == "running" && st["blocked"] == "waiting"
	})
	if err := w.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("worker on SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not stop within 30s of SIGTERM")
	}
	if got := n.actionStates(); got["long"] != "queued" || got["blocked"] != "queued" {
		t.Errorf("states after the stop = %v, want both queued", got)
	}
	if got := lines(ledger); len(got) != 1 || got[0] != "long" {
		t.Errorf("ledger %v, want only long's start", got)
	}
	sessions, _, err := client.Session().List(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sessions {
		if s.Name == "ct-supervise long" || s.Name == "ct-supervise blocked" {
			t.Errorf("session %s (%s) left behind", s.ID, s.Name)
		}
	}
	if p, _, err := client.KV().Get(base+"/long/.lock", nil); err != nil || (p != nil && p.Session != "") {
		t.Errorf("long's lock is still held: %+v %v", p, err)
	}
}

// A halted action (its rollout stopped by another node's failure) waits
// on its own track: the node's other actions run as if it were not there,
// and it runs once the halt is lifted.
func TestHaltedActionHoldsUpNoOthers(t *testing.T) {
	n := newNode(t, "node1")
	n.logOnFailure()
	client := consulClient(t)
	dir := t.TempDir()
	markA, markB := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	n.mustRun("register", "-name=a", "-prefix=halted/a", "echo ran >> "+markA)
	n.mustRun("register", "-name=b", "-prefix=halted/b", "echo ran >> "+markB)
	halt, err := json.Marshal(map[string]any{"node": "web-2", "reason": "exit 1", "at": time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = client.KV().DeleteTree("halted/a.fleet/", nil) })
	if _, err := client.KV().Put(&api.KVPair{Key: "halted/a.fleet/halt", Value: halt}, nil); err != nil {
		t.Fatal(err)
	}

	n.mustRun("exec", "a", "b")
	waitFor(t, 20*time.Second, "b to run while a is halted", func() bool { return len(lines(markB)) == 1 })
	waitFor(t, 20*time.Second, "a to show as halted", func() bool { return n.actionStates()["a"] == "halted" })
	if len(lines(markA)) != 0 {
		t.Fatal("a ran while its rollout was halted")
	}
	n.mustRun("resume", "-prefix=halted/a", "a")
	waitFor(t, 20*time.Second, "a to run once resumed", func() bool { return len(lines(markA)) == 1 })
}
