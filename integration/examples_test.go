package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// The examples in ../examples are what operators copy, so each is run here
// as shipped: its consul-template configuration and templates, with paths
// moved under a temporary root, rendered by real consul-template against a
// Consul agent. The programs the examples call (nginx, haproxy, systemctl)
// are stand-ins that record each call in a ledger. Each test checks what
// the example's paragraph in examples/README.md says it does.

// examplesDir holds the examples as shipped.
const examplesDir = "../examples"

// exampleTimeout bounds each wait for an example to render and run its
// action: seconds on an idle machine, generous for a loaded one.
const exampleTimeout = 60 * time.Second

// exampleTests names the test that runs each example. An example directory
// missing here fails TestExamplesAreTested: every shipped example runs.
var exampleTests = map[string]string{
	"nginx":          "TestExampleNginx",
	"haproxy":        "TestExampleHAProxy",
	"systemd-app":    "TestExampleSystemdApp",
	"consul-kv":      "TestExampleConsulKV",
	"worker-service": "TestExampleWorkerService",
	"acl":            "TestExampleACL",
}

// standIns are the programs the examples' commands call. Each is replaced
// by a script that appends its name and arguments to $EXAMPLE_LEDGER, and
// exits 1 when that exact call is a line of $EXAMPLE_LEDGER.fail.
var standIns = []string{"nginx", "haproxy", "systemctl"}

const standInScript = `#!/bin/sh
call="$(basename "$0") $*"
echo "$call" >> "$EXAMPLE_LEDGER"
if [ -f "$EXAMPLE_LEDGER.fail" ] && grep -qxF -- "$call" "$EXAMPLE_LEDGER.fail"; then
  echo "stand-in: $call fails as told" >&2
  exit 1
fi
`

func TestExamplesAreTested(t *testing.T) {
	entries, err := os.ReadDir(examplesDir)
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
			if exampleTests[e.Name()] == "" {
				t.Errorf("examples/%s has no test: add it to exampleTests and write one", e.Name())
			}
		}
	}
	readme, err := os.ReadFile(filepath.Join(examplesDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range exampleTests {
		if !slices.Contains(dirs, name) {
			t.Errorf("exampleTests names examples/%s, which does not exist", name)
		}
		if !strings.Contains(string(readme), "("+name+"/)") {
			t.Errorf("examples/README.md has no paragraph linking %s/", name)
		}
	}
}

// exampleHost is one machine set up from the examples: a temporary root
// standing in for /, the stand-ins, their ledger, and its own state
// directory (CT_SUPERVISE_STATE_DIR).
type exampleHost struct {
	*node
	root   string
	ledger string
	addr   string // the Consul address that replaces 127.0.0.1:8500
}

func newExampleHost(t *testing.T, name, addr string) *exampleHost {
	t.Helper()
	n := newNode(t, name)
	n.logOnFailure()
	h := &exampleHost{node: n, root: t.TempDir(), addr: addr}
	h.ledger = filepath.Join(h.root, "ledger")
	bin := filepath.Join(h.root, "stand-ins")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range standIns {
		if err := os.WriteFile(filepath.Join(bin, s), []byte(standInScript), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The node's environment, for consul-template, the worker and every
	// ct-supervise the test runs itself.
	n.env = append(n.env,
		"CONSUL_HTTP_ADDR="+addr,
		"EXAMPLE_LEDGER="+h.ledger,
		"PATH="+strings.Join([]string{bin, filepath.Dir(binary), os.Getenv("PATH")}, string(os.PathListSeparator)),
	)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stand-in calls on %s:\n%s", name, strings.Join(lines(h.ledger), "\n"))
		}
	})
	return h
}

// rewrite points an example's text at this host: /etc under the root, the
// Consul agent under test, and the ct-supervise under test.
func (h *exampleHost) rewrite(s string) string {
	return strings.NewReplacer(
		"/etc/", h.root+"/etc/",
		"127.0.0.1:8500", h.addr,
		"/usr/local/bin/ct-supervise", binary,
	).Replace(s)
}

// path is where an absolute path of an example lies on this host.
func (h *exampleHost) path(p string) string { return h.rewrite(p) }

var sourceLine = regexp.MustCompile(`(?m)^\s*source\s*=\s*"([^"]+)"`)

// install copies an example's consul-template.hcl, and every template it
// names as a source, to where the example says they go, rewritten; it
// returns the configuration's path.
func (h *exampleHost) install(example string) string {
	h.t.Helper()
	cfg := h.rewrite(readExample(h.t, example, "consul-template.hcl"))
	sources := sourceLine.FindAllStringSubmatch(cfg, -1)
	if len(sources) == 0 {
		h.t.Fatalf("examples/%s/consul-template.hcl names no template source", example)
	}
	for _, m := range sources {
		body := readExample(h.t, example, filepath.Base(m[1]))
		writeFile(h.t, m[1], h.rewrite(body))
	}
	cfgPath := filepath.Join(h.root, "etc", "consul-template.d", example+".hcl")
	writeFile(h.t, cfgPath, cfg)
	return cfgPath
}

func readExample(t *testing.T, example, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, example, file))
	if err != nil {
		t.Fatalf("example %s: %v", example, err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startCT runs consul-template on the configuration files, with -once if
// once, and stops it when the test ends. A second configuration of the
// test's own adds debug logging and makes SIGTERM stop it.
func (h *exampleHost) startCT(once bool, env []string, configs ...string) *ctNode {
	h.t.Helper()
	needConsulTemplate(h.t)
	testCfg := filepath.Join(h.root, "test.hcl")
	writeFile(h.t, testCfg, "log_level = \"debug\"\nkill_signal = \"SIGTERM\"\n")
	args := []string{"-config=" + testCfg}
	for _, c := range configs {
		args = append(args, "-config="+c)
	}
	if once {
		args = append(args, "-once")
	}
	p := &ctNode{node: h.node, dir: h.root, logPath: filepath.Join(h.root, "consul-template.log"), done: make(chan struct{})}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		h.t.Fatal(err)
	}
	defer logFile.Close()
	p.cmd = exec.Command("consul-template", args...)
	p.cmd.Env = append(slices.Clone(h.env), env...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		h.t.Fatalf("starting consul-template: %v", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	h.t.Cleanup(func() {
		p.stop()
		if h.t.Failed() {
			h.t.Logf("consul-template log of %s:\n%s", h.name, tail(p.log(), ctLogTail))
		}
	})
	return p
}

// exampleAction is an action as `status -json` shows it.
type exampleAction struct {
	Name        string   `json:"name"`
	State       string   `json:"state"`
	Command     []string `json:"command"`
	Limit       int      `json:"n"`
	Try         string   `json:"try"`
	Timeout     string   `json:"command_timeout"`
	MaxAttempts int      `json:"max_attempts"`
	Last        *struct {
		OK       bool   `json:"ok"`
		ExitCode int    `json:"exit_code"`
		Error    string `json:"error"`
	} `json:"last"`
	HoldersErr string `json:"holders_error"`
}

type exampleStatus struct {
	WorkerPID int             `json:"worker_pid"`
	Actions   []exampleAction `json:"actions"`
	Rejected  map[string]struct {
		Message string `json:"message"`
	} `json:"rejected"`
}

// status is `ct-supervise status -json` on this host.
func (h *exampleHost) status() exampleStatus {
	h.t.Helper()
	cmd := exec.Command(binary, "status", "-json")
	cmd.Env = h.env
	out, err := cmd.Output()
	if err != nil {
		h.t.Fatalf("status -json: %v", err)
	}
	var st exampleStatus
	if err := json.Unmarshal(out, &st); err != nil {
		h.t.Fatalf("status -json: %v\n%s", err, out)
	}
	return st
}

// action is the named action in status, the zero action if there is none.
func (h *exampleHost) action(name string) exampleAction {
	for _, a := range h.status().Actions {
		if a.Name == name {
			return a
		}
	}
	return exampleAction{}
}

// waitResult waits until the named action has a result and nothing of it
// is queued or running, and returns it.
func (h *exampleHost) waitResult(name string) exampleAction {
	h.t.Helper()
	var a exampleAction
	waitFor(h.t, exampleTimeout, "action "+name+" to finish a run", func() bool {
		a = h.action(name)
		return a.Last != nil && !slices.Contains([]string{"pending", "queued", "waiting", "running"}, a.State)
	})
	return a
}

// checkCalls fails the test unless the stand-ins recorded exactly want.
func (h *exampleHost) checkCalls(want ...string) {
	h.t.Helper()
	if got := lines(h.ledger); !slices.Equal(got, want) {
		h.t.Errorf("stand-in calls:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// checkDeclared fails the test unless the action is declared with the
// given limit, -try and -command-timeout (zero: none).
func checkDeclared(t *testing.T, a exampleAction, limit int, try, timeout time.Duration) {
	t.Helper()
	if a.Limit != limit {
		t.Errorf("%s: n = %d, want %d", a.Name, a.Limit, limit)
	}
	for _, d := range []struct {
		flag string
		got  string
		want time.Duration
	}{{"-try", a.Try, try}, {"-command-timeout", a.Timeout, timeout}} {
		got, err := time.ParseDuration(d.got)
		if d.got == "" {
			got, err = 0, nil
		}
		if err != nil || got != d.want {
			t.Errorf("%s: %s = %q, want %s", a.Name, d.flag, d.got, d.want)
		}
	}
}

// checkRendered fails the test unless the rendered file contains each of
// want, and starts with the template's first line of output: register
// prints nothing.
func checkRendered(t *testing.T, path, firstLine string, want ...string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("rendered file: %v", err)
	}
	got := string(b)
	if !strings.HasPrefix(got, firstLine+"\n") {
		t.Errorf("%s starts %q, want %q: the declaration must leave no trace in the output", path, strings.SplitN(got, "\n", 2)[0], firstLine)
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", path, w, got)
		}
	}
	return got
}

// registerApp registers two instances of the service "app", the one the
// proxy examples render, and waits until the catalog shows both.
func registerApp(t *testing.T, client *api.Client) {
	t.Helper()
	for i := 1; i <= 2; i++ {
		id := fmt.Sprintf("app-%d", i)
		reg := &api.AgentServiceRegistration{ID: id, Name: "app", Address: fmt.Sprintf("10.0.0.%d", i), Port: 8080}
		if err := client.Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("registering %s: %v", id, err)
		}
		t.Cleanup(func() { _ = client.Agent().ServiceDeregister(id) })
	}
	waitFor(t, exampleTimeout, "two instances of app in the catalog", func() bool {
		entries, _, err := client.Health().Service("app", "", true, nil)
		return err == nil && len(entries) == 2
	})
}

// packageClient is a client of the package's agent.
func packageClient(t *testing.T) *api.Client {
	t.Helper()
	needConsul(t)
	client, err := agent.Client()
	if err != nil {
		t.Fatal(err)
	}
	return client
}

const renderedHeader = "# Rendered by consul-template from the Consul catalog: do not edit."

// TestExampleNginx: the catalog's instances of app rendered as nginx
// upstreams; `nginx -t`, then `nginx -s reload`, under a lock of 2; a
// configuration nginx -t rejects is never loaded.
func TestExampleNginx(t *testing.T) {
	client := packageClient(t)
	registerApp(t, client)
	for _, tc := range []struct {
		name  string
		fail  string // the stand-in call that fails
		calls []string
		ok    bool
	}{
		{"reloads", "", []string{"nginx -t", "nginx -s reload"}, true},
		{"nginx -t fails", "nginx -t", []string{"nginx -t"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newExampleHost(t, "web-1", agent.Addr())
			if tc.fail != "" {
				writeFile(t, h.ledger+".fail", tc.fail+"\n")
			}
			p := h.startCT(true, nil, h.install("nginx"))
			if code, exited := p.wait(exampleTimeout); !exited || code != 0 {
				t.Fatalf("consul-template -once: exited %v, status %d; want a render and exit 0", exited, code)
			}
			checkRendered(t, h.path("/etc/nginx/conf.d/upstreams.conf"), renderedHeader,
				"upstream app {\n  server 10.0.0.1:8080;\n  server 10.0.0.2:8080;\n}\n")
			a := h.waitResult("nginx")
			checkDeclared(t, a, 2, 10*time.Minute, 0)
			if a.Last.OK != tc.ok {
				t.Errorf("last result ok = %v (%+v), want %v", a.Last.OK, *a.Last, tc.ok)
			}
			if !tc.ok && a.State != "retrying" {
				t.Errorf("state %q after a failed nginx -t, want retrying", a.State)
			}
			h.checkCalls(tc.calls...)
		})
	}
}

// TestExampleHAProxy: haproxy's configuration rendered from the catalog,
// checked with `haproxy -c` and reloaded through systemd, one node at a
// time; a file haproxy -c refuses is never reloaded.
func TestExampleHAProxy(t *testing.T) {
	client := packageClient(t)
	registerApp(t, client)
	for _, tc := range []struct {
		name  string
		fail  bool // haproxy -c refuses the file
		calls int  // how many of the calls below are made
		ok    bool
	}{
		{"reloads", false, 2, true},
		{"haproxy -c fails", true, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newExampleHost(t, "lb-1", agent.Addr())
			cfg := h.path("/etc/haproxy/haproxy.cfg")
			calls := []string{"haproxy -c -q -f " + cfg, "systemctl reload haproxy.service"}
			if tc.fail {
				writeFile(t, h.ledger+".fail", calls[0]+"\n")
			}
			p := h.startCT(true, nil, h.install("haproxy"))
			if code, exited := p.wait(exampleTimeout); !exited || code != 0 {
				t.Fatalf("consul-template -once: exited %v, status %d; want a render and exit 0", exited, code)
			}
			checkRendered(t, cfg, renderedHeader,
				"backend app\n  balance roundrobin\n  server app-1 10.0.0.1:8080 check\n  server app-2 10.0.0.2:8080 check\n")
			a := h.waitResult("haproxy")
			checkDeclared(t, a, 1, 10*time.Minute, 0)
			if a.Last.OK != tc.ok {
				t.Errorf("last result ok = %v (%+v), want %v", a.Last.OK, *a.Last, tc.ok)
			}
			h.checkCalls(calls[:tc.calls]...)
		})
	}
}

// TestExampleSystemdApp: myapp's environment file rendered from KV, mode
// 0600, and myapp restarted through systemd one node at a time, a restart
// stuck for 2 minutes killed.
func TestExampleSystemdApp(t *testing.T) {
	client := packageClient(t)
	const key = "config/myapp/database_url"
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte("postgres://db.service.consul/myapp")}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = client.KV().Delete(key, nil) })

	h := newExampleHost(t, "app-1", agent.Addr())
	p := h.startCT(true, nil, h.install("systemd-app"))
	if code, exited := p.wait(exampleTimeout); !exited || code != 0 {
		t.Fatalf("consul-template -once: exited %v, status %d; want a render and exit 0", exited, code)
	}
	env := h.path("/etc/myapp/myapp.env")
	checkRendered(t, env, "# Rendered by consul-template from Consul KV: do not edit.",
		"DATABASE_URL=postgres://db.service.consul/myapp\n", "LOG_LEVEL=info\n")
	if fi, err := os.Stat(env); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, mode %v; want 0600 (it may hold credentials)", env, err, fi.Mode())
	}
	dropIn := readExample(t, "systemd-app", "myapp.service.d/consul-template.conf")
	if !strings.Contains(dropIn, "EnvironmentFile=/etc/myapp/myapp.env\n") {
		t.Errorf("myapp's drop-in does not read the rendered file:\n%s", dropIn)
	}
	a := h.waitResult("myapp")
	checkDeclared(t, a, 1, 30*time.Minute, 2*time.Minute)
	if !a.Last.OK {
		t.Errorf("last result %+v, want ok", *a.Last)
	}
	h.checkCalls("systemctl restart myapp.service")
}

// TestExampleConsulKV: the policy read from KV, merged over the template's
// command and defaults. Until the key exists nothing renders; then the
// action runs with the key's n and the template's -try; a bad value, or one
// that tries to set the command, keeps the last good declaration while
// consul-template keeps running and status shows the rejection; a new
// value changes the policy.
func TestExampleConsulKV(t *testing.T) {
	client := packageClient(t)
	registerApp(t, client)
	const key = "ops/supervise/nginx"
	t.Cleanup(func() { _, _ = client.KV().Delete(key, nil) })
	put := func(v string) {
		t.Helper()
		if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	h := newExampleHost(t, "web-1", agent.Addr())
	p := h.startCT(false, nil, h.install("consul-kv"))
	dest := h.path("/etc/nginx/conf.d/upstreams.conf")

	// Missing data: consul-template waits, nothing renders, nothing fails.
	time.Sleep(2 * time.Second)
	if _, err := os.Stat(dest); !os.IsNotExist(err) || !p.running() {
		t.Fatalf("before the key exists: rendered file %v, consul-template running %v; want no file and running", err, p.running())
	}

	policy := readExample(t, "consul-kv", "nginx.json")
	if !strings.Contains(policy, `"n": 2,`) {
		t.Fatalf("examples/consul-kv/nginx.json no longer sets \"n\": 2, which this test edits:\n%s", policy)
	}
	put(policy) // consul kv put ops/supervise/nginx @nginx.json
	a := h.waitResult("nginx")
	checkRendered(t, dest, renderedHeader, "  server 10.0.0.1:8080;\n")
	checkDeclared(t, a, 2, 10*time.Minute, 0)
	if !a.Last.OK || a.MaxAttempts != 5 {
		t.Errorf("last result %+v, max_attempts %d; want ok and 5", *a.Last, a.MaxAttempts)
	}
	h.checkCalls("nginx -t", "nginx -s reload")
	command := a.Command

	// Bad data, and data that tries to choose the command: the render goes
	// on, the last good declaration stays, status says what is wrong.
	for _, bad := range []struct{ value, names string }{
		{strings.Replace(policy, `"n": 2,`, `"n": "two",`, 1), ""}, // the first rejection: any message
		{`{"n": 2, "command": "id"}`, "command"},
	} {
		put(bad.value)
		waitFor(t, exampleTimeout, "status to show the rejection of "+bad.value, func() bool {
			msg := h.status().Rejected["nginx"].Message
			return msg != "" && strings.Contains(msg, bad.names)
		})
		if !p.running() {
			t.Fatalf("consul-template exited over the value %s in KV", bad.value)
		}
		if a := h.action("nginx"); a.Limit != 2 || !slices.Equal(a.Command, command) {
			t.Errorf("after the value %s: n = %d, command %q; want the last good 2 and %q", bad.value, a.Limit, a.Command, command)
		}
	}

	// A new policy, without touching the template.
	put(strings.Replace(policy, `"n": 2,`, `"n": 3,`, 1))
	waitFor(t, exampleTimeout, "the declaration to follow the new value", func() bool {
		return h.action("nginx").Limit == 3
	})
}

// TestExampleWorkerService: the worker run as the unit file says; exec
// finds it running and starts none; the service worker runs the reload and
// keeps running; the unit's KillSignal stops it cleanly.
func TestExampleWorkerService(t *testing.T) {
	client := packageClient(t)
	registerApp(t, client)
	h := newExampleHost(t, "web-1", agent.Addr())

	unit := h.rewrite(readExample(t, "worker-service", "ct-supervise-worker.service"))
	unitPath := filepath.Join(h.root, "ct-supervise-worker.service")
	writeFile(t, unitPath, unit)
	verifyUnit(t, unitPath)
	execStart := unitValues(unit, "ExecStart")
	if len(execStart) != 1 {
		t.Fatalf("want one ExecStart, got %q", execStart)
	}
	args := strings.Fields(execStart[0])
	if args[0] != binary {
		t.Fatalf("ExecStart runs %s, want /usr/local/bin/ct-supervise", args[0])
	}
	if ks := unitValues(unit, "KillSignal"); !slices.Equal(ks, []string{"SIGTERM"}) {
		t.Fatalf("KillSignal %q: this test stops the worker with SIGTERM", ks)
	}

	svc := exec.Command(args[0], args[1:]...)
	svc.Env = append(slices.Clone(h.env), unitValues(unit, "Environment")...)
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	var svcErr error
	svcDone := make(chan struct{})
	go func() { svcErr = svc.Wait(); close(svcDone) }()
	t.Cleanup(func() {
		select {
		case <-svcDone:
		default:
			_ = syscall.Kill(-svc.Process.Pid, syscall.SIGKILL)
			<-svcDone
		}
	})
	waitFor(t, exampleTimeout, "the service worker to take the state directory", func() bool {
		return h.workerPID() == svc.Process.Pid
	})

	p := h.startCT(true, nil, h.install("nginx"))
	if code, exited := p.wait(exampleTimeout); !exited || code != 0 {
		t.Fatalf("consul-template -once: exited %v, status %d; want a render and exit 0", exited, code)
	}
	a := h.waitResult("nginx")
	if !a.Last.OK {
		t.Errorf("last result %+v, want ok", *a.Last)
	}
	h.checkCalls("nginx -t", "nginx -s reload")
	if pid := h.workerPID(); pid != svc.Process.Pid {
		t.Errorf("worker pid %d after the reload, want the service's %d still running it", pid, svc.Process.Pid)
	}

	// systemctl stop: KillSignal, then TimeoutStopSec (30s) before SIGKILL.
	if err := svc.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-svcDone:
		if svcErr != nil {
			t.Errorf("the service worker exited with %v on SIGTERM, want status 0", svcErr)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the service worker did not stop within TimeoutStopSec=30 of SIGTERM")
	}
}

// unitValues returns the values of a systemd unit's key, in order.
func unitValues(unit, key string) []string {
	var vs []string
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// verifyUnit runs `systemd-analyze verify` on the unit where systemd is
// installed; any complaint (an unknown key, a bad value) fails the test.
func verifyUnit(t *testing.T, path string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Logf("systemd-analyze not installed: the unit file's syntax is not verified")
		return
	}
	out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestExampleACL: on an agent that denies by default, a token with exactly
// the example's two policies runs the nginx example end to end; without
// the ct-supervise policy nothing can be locked.
func TestExampleACL(t *testing.T) {
	const mgmt = "11111111-2222-3333-4444-555555555555"
	ac := aclAgent(t, mgmt)
	cfg := ac.Config()
	cfg.Token = mgmt
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	token := func(policies ...string) string {
		t.Helper()
		var links []*api.ACLTokenPolicyLink
		for _, p := range policies {
			rules := readExample(t, "acl", p+".hcl")
			pol, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: p, Rules: rules}, nil)
			if err != nil && !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("creating policy %s from examples/acl/%s.hcl: %v", p, p, err)
			}
			if pol == nil {
				pol, _, err = client.ACL().PolicyReadByName(p, nil)
				if err != nil {
					t.Fatal(err)
				}
			}
			links = append(links, &api.ACLTokenPolicyLink{ID: pol.ID})
		}
		tok, _, err := client.ACL().TokenCreate(&api.ACLToken{Policies: links}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tok.SecretID
	}
	full := token("ct-supervise", "templates")
	templatesOnly := token("templates")
	registerApp(t, client)

	h := newExampleHost(t, "web-1", ac.Addr())
	p := h.startCT(true, []string{"CONSUL_HTTP_TOKEN=" + full}, h.install("nginx"))
	if code, exited := p.wait(exampleTimeout); !exited || code != 0 {
		t.Fatalf("consul-template -once: exited %v, status %d; want a render and exit 0", exited, code)
	}
	checkRendered(t, h.path("/etc/nginx/conf.d/upstreams.conf"), renderedHeader, "  server 10.0.0.2:8080;\n")
	h.env = append(h.env, "CONSUL_HTTP_TOKEN="+full) // status reads the holders with it
	a := h.waitResult("nginx")
	if !a.Last.OK || a.HoldersErr != "" {
		t.Errorf("with the example's policies: last result %+v, holders error %q; want ok and none", *a.Last, a.HoldersErr)
	}
	h.checkCalls("nginx -t", "nginx -s reload")

	// The same run, a lock and a semaphore, with and without ct-supervise.hcl.
	for _, limit := range []string{"1", "2"} {
		if r := h.run("run", "-n", limit, "-name", "acl-check", "-token", full, "true"); r.code != 0 {
			t.Errorf("run -n %s with the example's policies: exit %d: %s", limit, r.code, r.stderr)
		}
		if r := h.run("run", "-n", limit, "-name", "acl-check", "-token", templatesOnly, "true"); r.code == 0 {
			t.Errorf("run -n %s without the ct-supervise policy succeeded: the agent does not enforce ACLs, and this test proves nothing", limit)
		}
	}
}

// aclAgent starts a dev agent that denies by default, with mgmt as its
// management (and agent) token, and stops it when the test ends.
func aclAgent(t *testing.T, mgmt string) *devconsul.Agent {
	t.Helper()
	needConsul(t)
	a, err := devconsul.Start(devconsul.Options{ExtraConfig: fmt.Sprintf(
		`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, mgmt, mgmt)})
	if err != nil {
		t.Fatalf("starting an ACL-enabled consul agent: %v", err)
	}
	t.Cleanup(a.Stop)
	// Sessions need the node in the catalog, which only the management
	// token can see.
	cfg := a.Config()
	cfg.Token = mgmt
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, exampleTimeout, "the ACL agent's node in the catalog", func() bool {
		n, _, err := client.Catalog().Node("devconsul", nil)
		return err == nil && n != nil
	})
	return a
}
