package integration

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// End-to-end tests with real consul-template processes: what the README
// promises operators about templates that declare an action with
// `{{ plugin "ct-supervise" "register" ... }}` and trigger it with
// `command = "ct-supervise exec"`.

// putKV writes a key to the package's Consul agent.
func putKV(t *testing.T, key, value string) {
	t.Helper()
	client := consulClient(t)
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("putting %s: %v", key, err)
	}
}

// rollTemplate declares the action with flags and renders the value the
// ledger action records.
func rollTemplate(name string, limit int, key string) func(string) ctTemplate {
	return func(action string) ctTemplate {
		return ctTemplate{
			name: "upstreams",
			body: fmt.Sprintf("{{ plugin \"ct-supervise\" \"register\" \"-n=%d\" \"-name=%s\" %q }}\nvalue={{ key %q }}\n",
				limit, name, action, key),
			command: "ct-supervise exec",
		}
	}
}

// checkLimit fails the test if more than limit runs overlapped.
func checkLimit(t *testing.T, what string, runs []ledgerRun, limit int) int {
	t.Helper()
	peak := maxConcurrency(runs)
	if peak > limit {
		t.Errorf("%s: %d runs at once, the limit is %d:\n%s", what, peak, limit, timeline(runs))
	}
	return peak
}

// TestConsulTemplateRollOneChange: one KV change reaches every node, and
// every node runs the action exactly once for it, never more than n at a
// time. The first render at start-up is a change too (the destination did
// not exist), so the test lets that initial roll finish, checking it by
// the same rules, and then counts only the runs after the change.
func TestConsulTemplateRollOneChange(t *testing.T) {
	cases := []struct {
		name   string
		limit  int
		nodes  int
		action string // seconds each run takes
	}{
		{"n=1", 1, 8, "0.3"},
		// Runs long enough that nodes rendering together must overlap, so
		// that the semaphore has something to limit.
		{"n=3", 3, 8, "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("ct-roll-n%d", tc.limit)
			key := "it/" + name + "/upstream"
			putKV(t, key, "v1")
			f := startFleet(t, tc.nodes, tc.action, rollTemplate(name, tc.limit, key))

			start := time.Now()
			initial := f.waitRoll(0, "v1", 90*time.Second)
			t.Logf("initial roll: %d runs in %s, at most %d at once", len(initial), time.Since(start).Round(time.Millisecond), maxConcurrency(initial))
			checkOncePerNode(t, "initial roll", f, initial, "v1")
			checkLimit(t, "initial roll", initial, tc.limit)

			mark := len(initial)
			start = time.Now()
			putKV(t, key, "v2")
			after := f.waitRoll(mark, "v2", 90*time.Second)
			// Anything still to come would be a run too many: give it a
			// moment to show up.
			time.Sleep(time.Second)
			after = f.runs()[mark:]
			peak := maxConcurrency(after)
			t.Logf("roll of the change: %d runs in %s, at most %d at once\n%s", len(after), time.Since(start).Round(time.Millisecond), peak, timeline(after))

			checkOncePerNode(t, "after the change", f, after, "v2")
			checkLimit(t, "after the change", after, tc.limit)
			checkLimit(t, "whole ledger", f.runs(), tc.limit)
			if tc.limit > 1 && peak < 2 {
				t.Errorf("runs never overlapped with -n=%d: the nodes were serialized, not limited:\n%s", tc.limit, timeline(after))
			}
			for _, n := range f.nodes {
				if got := n.readDest("upstreams"); !strings.Contains(got, "value=v2\n") {
					t.Errorf("%s rendered %q, want value=v2", n.name, got)
				}
			}
			f.allRunning()
		})
	}
}

// checkOncePerNode fails the test unless every node of f ran exactly once
// in runs, to completion, with value rendered.
func checkOncePerNode(t *testing.T, what string, f *fleet, runs []ledgerRun, value string) {
	t.Helper()
	by := runsByNode(runs)
	for _, n := range f.nodes {
		rs := by[n.name]
		if len(rs) != 1 {
			t.Errorf("%s: %s ran %d times, want exactly once:\n%s", what, n.name, len(rs), timeline(runs))
			continue
		}
		if rs[0].end == 0 || rs[0].seen != value {
			t.Errorf("%s: %s's run (ended: %t) saw %q, want a finished run that saw %q", what, n.name, rs[0].end != 0, rs[0].seen, value)
		}
	}
	if len(by) != len(f.nodes) {
		t.Errorf("%s: runs from %d nodes, the fleet has %d:\n%s", what, len(by), len(f.nodes), timeline(runs))
	}
}

// TestConsulTemplateBurstCoalesces: ten KV changes within a second. Every
// node renders the last value and runs the action at least once after the
// burst and at most twice (a run under way, then one for everything queued
// during it), its last run seeing the last value, never more than n at once.
func TestConsulTemplateBurstCoalesces(t *testing.T) {
	const (
		name  = "ct-burst"
		key   = "it/" + name + "/upstream"
		limit = 2
		nodes = 6
		// A run outlasts the burst and the renders that trail it, so a run
		// started by the first change is still going when the last one is
		// rendered: two runs at most.
		actionSeconds = "1.5"
		changes       = 10
		gap           = 50 * time.Millisecond
	)
	putKV(t, key, "b0")
	f := startFleet(t, nodes, actionSeconds, rollTemplate(name, limit, key))
	initial := f.waitRoll(0, "b0", 90*time.Second)
	checkOncePerNode(t, "initial roll", f, initial, "b0")

	mark := len(initial)
	start := time.Now()
	for i := 1; i <= changes; i++ {
		putKV(t, key, fmt.Sprintf("b%d", i))
		if i < changes {
			time.Sleep(gap)
		}
	}
	burst := time.Since(start)
	if burst > time.Second {
		t.Logf("warning: the burst took %s, more than the second it is meant to fit in", burst)
	}
	final := fmt.Sprintf("b%d", changes)
	f.waitRoll(mark, final, 90*time.Second)
	time.Sleep(time.Second)
	after := f.runs()[mark:]
	t.Logf("%d changes in %s, then %d runs:\n%s", changes, burst.Round(time.Millisecond), len(after), timeline(after))

	by := runsByNode(after)
	for _, n := range f.nodes {
		rs := by[n.name]
		switch {
		case len(rs) == 0:
			t.Errorf("%s never ran the action after the burst", n.name)
		case len(rs) > 2:
			t.Errorf("%s ran the action %d times for one burst, want at most 2 (requests must coalesce)", n.name, len(rs))
		case rs[len(rs)-1].seen != final || rs[len(rs)-1].end == 0:
			t.Errorf("%s's last run saw %q, want a finished run that saw the final %q", n.name, rs[len(rs)-1].seen, final)
		}
		if len(rs) == 2 && rs[0].seen == final {
			// Within the contract, but a reload more than needed: the
			// request that queued it came while the first run still
			// waited for the lock, and that run rendered nothing older.
			t.Logf("%s ran twice though its first run already saw %q", n.name, final)
		}
		if got := n.readDest("upstreams"); got != "\nvalue="+final+"\n" {
			t.Errorf("%s rendered %q, want the final value %q", n.name, got, final)
		}
	}
	checkLimit(t, "after the burst", after, limit)
	checkLimit(t, "whole ledger", f.runs(), limit)
	f.allRunning()
}

// TestConsulTemplateRegisterLeavesOutputUnchanged: a template with the
// plugin call renders byte for byte what the same template without it
// renders, wherever the call sits. Both versions render in one
// consul-template -once run.
func TestConsulTemplateRegisterLeavesOutputUnchanged(t *testing.T) {
	const (
		key    = "it/ct-identical/upstream"
		folder = "it/ct-identical/servers"
		decl   = "it/ct-identical/decl"
		policy = "it/ct-identical/policy"
	)
	putKV(t, key, "10.0.0.1:8080")
	putKV(t, folder+"/a", "10.0.1.1")
	putKV(t, folder+"/b", "10.0.1.2")
	putKV(t, decl, `{"name": "ident-json", "command": "true", "n": "2"}`)
	putKV(t, policy, `{"n": "2", "try": "1m"}`)

	// @P@ marks where the plugin call goes; the plain version drops it.
	cases := []struct {
		name string
		body string
		call string
	}{
		{"own-line", "# managed\n@P@\nserver {{ key \"" + key + "\" }};\n",
			`{{ plugin "ct-supervise" "register" "-name=ident-line" "-n=2" "true" }}`},
		{"first", "@P@upstream {{ key \"" + key + "\" }}\n",
			`{{ plugin "ct-supervise" "register" "-name=ident-first" "true" }}`},
		{"mid-line", "server {{ key \"" + key + "\" }};@P@ # end\n",
			`{{ plugin "ct-supervise" "register" "-name=ident-mid" "-try=10m" "nginx -s reload" }}`},
		{"last-no-newline", "server {{ key \"" + key + "\" }};\n@P@",
			`{{ plugin "ct-supervise" "register" "-name=ident-last" "true" }}`},
		{"in-range", "{{ range ls \"" + folder + "\" }}{{ .Key }} {{ .Value }}@P@\n{{ end }}",
			`{{ plugin "ct-supervise" "register" "-name=ident-range" "true" }}`},
		{"from-kv", "@P@\nserver {{ key \"" + key + "\" }};\n",
			`{{ plugin "ct-supervise" "register" "-allow-data-commands" (printf "-json=%s" (key "` + decl + `")) }}`},
		{"policy-from-kv", "@P@\nupstream {{ key \"" + key + "\" }};\n",
			`{{ plugin "ct-supervise" "register" "-name=ident-policy" (printf "-policy=%s" (key "` + policy + `")) "true" }}`},
	}
	var tmpls []ctTemplate
	for _, tc := range cases {
		tmpls = append(tmpls,
			ctTemplate{name: tc.name + "-with", body: strings.ReplaceAll(tc.body, "@P@", tc.call)},
			ctTemplate{name: tc.name + "-plain", body: strings.ReplaceAll(tc.body, "@P@", "")})
	}
	p := startConsulTemplate(t, "node-1", tmpls, true)
	if code, exited := p.wait(60 * time.Second); !exited || code != 0 {
		t.Fatalf("consul-template -once: exited %t, status %d", exited, code)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			with, plain := p.readDest(tc.name+"-with"), p.readDest(tc.name+"-plain")
			if !strings.Contains(plain, "10.0.") {
				t.Fatalf("the plain template rendered %q: no data", plain)
			}
			if with != plain {
				t.Errorf("the plugin call changed the rendered file:\nwith:  %q\nplain: %q", with, plain)
			}
		})
	}
	// The calls did register: the test would otherwise pass on a plugin
	// that never ran.
	declared := map[string]bool{}
	for _, a := range p.status()["actions"].([]any) {
		declared[a.(map[string]any)["name"].(string)] = true
	}
	for _, want := range []string{"ident-line", "ident-first", "ident-mid", "ident-last", "ident-range", "ident-json", "ident-policy"} {
		if !declared[want] {
			t.Errorf("action %q was not registered; declared: %v", want, declared)
		}
	}
}

// TestConsulTemplateNotDelayedByLockWait: while an action waits for a lock
// held elsewhere, another template of the same consul-template process still
// renders at once, and consul-template outlives its 30s command timeout.
func TestConsulTemplateNotDelayedByLockWait(t *testing.T) {
	t.Parallel()
	const (
		name     = "ct-held"
		key      = "it/" + name + "/upstream"
		otherKey = "it/" + name + "/unrelated"
		hold     = 30 * time.Second
		// What "not delayed" means here: generous for a loaded CI machine,
		// and far below the hold.
		renderBound = 2 * time.Second
	)
	putKV(t, key, "a1")
	putKV(t, otherKey, "x1")
	act := ledgerAction(t, "0")
	p := startConsulTemplate(t, "node-1", []ctTemplate{
		rollTemplate(name, 1, key)(act.command),
		{name: "unrelated", body: fmt.Sprintf("other={{ key %q }}\n", otherKey)},
	}, false)
	f := &fleet{t: t, nodes: []*ctNode{p}, ledger: act.ledger}
	f.waitRoll(0, "a1", 60*time.Second)
	if got := p.readDest("unrelated"); got != "other=x1\n" {
		t.Fatalf("unrelated template rendered %q", got)
	}

	release := holdLock(t, "ct-supervise/"+name)
	held := time.Now()
	putKV(t, key, "a2")
	waitFor(t, 10*time.Second, "the first template to render a2", func() bool {
		return strings.Contains(p.readDest("upstreams"), "value=a2")
	})
	// exec has returned (consul-template went on) and left a worker
	// waiting for the lock.
	waitFor(t, 10*time.Second, "a worker waiting for the lock", func() bool { return p.busy() })

	changed := time.Now()
	putKV(t, otherKey, "x2")
	waitFor(t, renderBound, "the unrelated template to render x2 while the action waits for the lock", func() bool {
		return p.readDest("unrelated") == "other=x2\n"
	})
	t.Logf("unrelated template rendered %s after its change, the action's lock held elsewhere", time.Since(changed).Round(time.Millisecond))

	time.Sleep(time.Until(held.Add(hold)))
	if !p.running() {
		code, _ := p.wait(0)
		t.Fatalf("consul-template exited (status %d) while the action waited for the lock", code)
	}
	if strings.Contains(p.log(), "did not exit within time limit") {
		t.Fatal("consul-template timed out a command while the action waited for the lock")
	}
	if got := len(f.runs()); got != 1 {
		t.Fatalf("%d runs while the lock was held elsewhere, want only the initial one:\n%s", got, timeline(f.runs()))
	}

	release()
	f.waitRoll(1, "a2", 30*time.Second)
}

// TestConsulTemplateDeclarationFromKV: a declaration read from a KV key
// (issue 6), whole with -json (and -allow-data-commands, since it carries
// the command) or as -policy for the template's command (issue 14). Before
// the key exists consul-template waits for it and stays up; a good JSON
// value declares the action, which the post-render exec runs; a bad one is
// reported by `status` and leaves the last good declaration in force for
// the next change. Both forms of the post-render command must get there:
// `exec` alone, as a one-template process would use it, and `exec NAME`.
func TestConsulTemplateDeclarationFromKV(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string // the action's name, and the subtest's
		command string
		policy  bool // -policy with the command in the template, or -json
	}{
		{"ct-fromkv", "ct-supervise exec", false},
		{"ct-fromkv-named", "ct-supervise exec ct-fromkv-named", true},
	}
	for _, tc := range cases {
		t.Run(tc.command, func(t *testing.T) {
			t.Parallel()
			testDeclarationFromKV(t, tc.name, tc.command, tc.policy)
		})
	}
}

func testDeclarationFromKV(t *testing.T, name, command string, policy bool) {
	declKey := "it/" + name + "/decl"
	valueKey := "it/" + name + "/upstream"
	putKV(t, valueKey, "r1")
	act := ledgerAction(t, "0.2")
	call := fmt.Sprintf(`{{ plugin "ct-supervise" "register" "-allow-data-commands" (printf "-json=%%s" (key %q)) }}`, declKey)
	good, err := json.Marshal(map[string]any{"name": name, "command": act.command, "n": 2})
	if policy {
		call = fmt.Sprintf(`{{ plugin "ct-supervise" "register" "-name=%s" (printf "-policy=%%s" (key %q)) %q }}`, name, declKey, act.command)
		good, err = json.Marshal(map[string]any{"n": 2})
	}
	if err != nil {
		t.Fatal(err)
	}
	p := startConsulTemplate(t, "node-1", []ctTemplate{{
		name:    "upstreams",
		body:    fmt.Sprintf("%s\nvalue={{ key %q }}\n", call, valueKey),
		command: command,
	}}, false)
	f := &fleet{t: t, nodes: []*ctNode{p}, ledger: act.ledger}

	// Missing data: nothing to render yet, and nothing to fail on.
	time.Sleep(3 * time.Second)
	if !p.running() {
		code, _ := p.wait(0)
		t.Fatalf("consul-template exited (status %d) while the declaration's key did not exist", code)
	}
	if got := p.readDest("upstreams"); got != "" {
		t.Fatalf("rendered %q before the declaration existed", got)
	}

	putKV(t, declKey, string(good))
	f.waitRoll(0, "r1", 60*time.Second)
	if n := actionOf(t, p, name)["n"]; n != float64(2) {
		t.Fatalf("the action runs with n=%v, want the data's 2", n)
	}

	// A typo in the data: the render goes on, status says what is wrong.
	bad := strings.Replace(string(good), `"n":2`, `"n":2,"tyr":"10m"`, 1)
	if policy {
		bad = `{"n":2,"tyr":"10m"}`
	}
	if bad == string(good) {
		t.Fatalf("could not make a bad declaration out of %s", good)
	}
	putKV(t, declKey, bad)
	var rejected string
	waitFor(t, 20*time.Second, "status to show the rejected declaration", func() bool {
		rej, _ := p.status()["rejected"].(map[string]any)
		e, _ := rej[name].(map[string]any)
		rejected, _ = e["message"].(string)
		return rejected != ""
	})
	if !strings.Contains(rejected, `"tyr"`) {
		t.Errorf("status reports %q for the rejected declaration, want it to name the key \"tyr\"", rejected)
	}
	if !p.running() {
		t.Fatal("consul-template exited over a bad declaration in KV")
	}

	// The last good declaration stays in force: the next change that
	// re-renders the file runs it.
	putKV(t, valueKey, "r2")
	waitFor(t, 10*time.Second, "the template to render r2", func() bool {
		return strings.Contains(p.readDest("upstreams"), "value=r2")
	})
	// A run of 0.2s on a free lock: 15s is ample.
	deadline := time.Now().Add(15 * time.Second)
	for !(len(f.runs()) == 2 && f.runs()[1].end != 0 && !p.busy()) {
		if time.Now().After(deadline) {
			t.Fatalf("the last good declaration did not run for the change after a rejected one "+
				"(consul-template ran %q after rendering r2):\n%s\nstatus -json:\n%s",
				command, timeline(f.runs()), p.mustRun("status", "-json").stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := f.runs()[1]; r.seen != "r2" {
		t.Errorf("the run after the change saw %q, want r2", r.seen)
	}
	if !p.running() {
		t.Error("consul-template exited")
	}
}

// TestConsulTemplateReportsBadDeclarations: declarations that are code (flags
// in the template), or data under -strict, fail the render: consul-template
// exits non-zero and its output names the problem (issues 6, 14 and 15).
func TestConsulTemplateReportsBadDeclarations(t *testing.T) {
	t.Parallel()
	const strictKey = "it/ct-strict/decl"
	putKV(t, strictKey, `{"name": "ct-strict", "command": "true", "tyr": "10m"}`)
	cases := []struct {
		name string
		call string
		want []string
	}{
		{"misspelled flag", `{{ plugin "ct-supervise" "register" "-nme=x" "true" }}`,
			// The template text is in consul-template's message too: the
			// flag must be named by ct-supervise's own line.
			[]string{"ct-supervise register: flag provided but not defined: -nme"}},
		{"strict bad data", `{{ plugin "ct-supervise" "register" "-strict" "-allow-data-commands" (printf "-json=%s" (key "` + strictKey + `")) }}`,
			[]string{`unknown key "tyr"`}},
		{"flags without a command", `{{ plugin "ct-supervise" "register" "-strict" "-n=2" "-name=nginx" }}`,
			[]string{"ct-supervise register: invalid declaration: missing command after -n -name"}},
		{"policy as a separate argument", `{{ plugin "ct-supervise" "register" "-name=nginx" "-policy" (key "` + strictKey + `") "true" }}`,
			[]string{"ct-supervise register: write -policy and its value as one argument"}},
		{"boolean flag trap", `{{ plugin "ct-supervise" "register" "-shell" "false" "echo x" }}`,
			[]string{"ct-supervise register: -shell false: a boolean flag takes its value after"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startConsulTemplate(t, "node-1", []ctTemplate{{
				name:    "bad",
				body:    tc.call + "\nserver 10.0.0.1;\n",
				command: "ct-supervise exec",
			}}, false)
			code, exited := p.wait(60 * time.Second)
			if !exited {
				t.Fatal("consul-template still runs 60s after a render that should have failed")
			}
			if code == 0 {
				t.Fatal("consul-template exited 0, want a failure")
			}
			out := p.log()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("consul-template's output does not contain %q:\n%s", w, tail(out, ctLogTail))
				}
			}
			if got := p.readDest("bad"); got != "" {
				t.Errorf("rendered %q despite the failure", got)
			}
		})
	}
}

// actionOf returns the named action of the node's `status -json`, nil if
// it is not declared.
func actionOf(t *testing.T, p *ctNode, name string) map[string]any {
	t.Helper()
	actions, _ := p.status()["actions"].([]any)
	for _, a := range actions {
		if m, _ := a.(map[string]any); m["name"] == name {
			return m
		}
	}
	return nil
}

// rejectedOf returns the message `status -json` shows for a rejected
// declaration of name, "" if none.
func rejectedOf(t *testing.T, p *ctNode, name string) string {
	t.Helper()
	rej, _ := p.status()["rejected"].(map[string]any)
	e, _ := rej[name].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

// TestConsulTemplateDataIsNeverCode: KV data reaches register only through
// -policy=VALUE and -json=VALUE, written as one argument with printf, and
// whatever the value, absent, good or hostile, it is never read as a flag
// or a command (issue 14). Missing, the policy is a no-op: the template's
// values. Present, it is merged on. Malformed or hostile (`-bogus` made
// consul-template exit, `-output=INJECTED` was written into the file,
// `id` and `null` were registered as commands), the render goes on with the
// last good declaration and status shows the rejection. A whole declaration
// with a command is refused without -allow-data-commands.
func TestConsulTemplateDataIsNeverCode(t *testing.T) {
	t.Parallel()
	const (
		policyKey = "it/ct-data/policy"
		jsonKey   = "it/ct-data/json"
		revKey    = "it/ct-data/rev"
	)
	putKV(t, revKey, "0")
	p := startConsulTemplate(t, "node-1", []ctTemplate{
		{name: "policy", body: `{{ plugin "ct-supervise" "register" "-name=ct-data" "-n=3" "-try=1m" (printf "-policy=%s" (key "` + policyKey + `")) "true" -}}` +
			"\nrev={{ key \"" + revKey + "\" }}\n"},
		{name: "json", body: `{{ plugin "ct-supervise" "register" (printf "-json=%s" (key "` + jsonKey + `")) -}}` +
			"\nrev={{ key \"" + revKey + "\" }}\n"},
	}, false)

	// Absent: consul-template waits for the keys and stays up; the policy
	// template's first pass declared the template's own values.
	waitFor(t, 20*time.Second, "the template's own declaration", func() bool { return actionOf(t, p, "ct-data") != nil })
	time.Sleep(2 * time.Second)
	if !p.running() {
		code, _ := p.wait(0)
		t.Fatalf("consul-template exited (status %d) while the data was absent", code)
	}
	if a := actionOf(t, p, "ct-data"); a["n"] != float64(3) || a["try"] != "1m0s" {
		t.Fatalf("with the policy absent the action is %v, want the template's n=3, try=1m", a)
	}
	if got := p.readDest("policy") + p.readDest("json"); got != "" {
		t.Fatalf("rendered %q before the data existed", got)
	}

	// Present: merged onto the template's command.
	rev := 0
	put := func(policy, whole string) {
		t.Helper()
		putKV(t, policyKey, policy)
		putKV(t, jsonKey, whole)
		rev++
		putKV(t, revKey, strconv.Itoa(rev))
		want := fmt.Sprintf("rev=%d\n", rev)
		waitFor(t, 20*time.Second, "both templates to render "+want, func() bool {
			return p.readDest("policy") == want && p.readDest("json") == want
		})
	}
	put(`{"n": 2, "command_timeout": "30s"}`, `{"name": "ct-data-json", "n": 2}`)
	good := actionOf(t, p, "ct-data")
	if good["n"] != float64(2) || good["try"] != "1m0s" || good["command_timeout"] != "30s" {
		t.Fatalf("with the policy present the action is %v, want n=2 and command_timeout=30s from it, try=1m from the template", good)
	}
	if cmd, _ := good["command"].([]any); len(cmd) != 1 || cmd[0] != "true" {
		t.Fatalf("the action's command is %v, want the template's", good["command"])
	}
	if msg := rejectedOf(t, p, "ct-data-json"); !strings.Contains(msg, "missing command") {
		t.Errorf("a whole declaration without a command: status shows %q, want the rejection", msg)
	}

	// Malformed or hostile values, in both keys.
	for _, v := range []string{"-bogus", "-output=INJECTED", "id", "null", `{"n":`, `{"name": "ct-data-json", "command": "id"}`} {
		put(v, v)
		if !p.running() {
			code, _ := p.wait(0)
			t.Fatalf("consul-template exited (status %d) over the value %q", code, v)
		}
		if a := actionOf(t, p, "ct-data"); a["n"] != float64(2) || a["command_timeout"] != "30s" {
			t.Errorf("value %q: the action is %v, want the last good declaration kept", v, a)
		}
		if msg := rejectedOf(t, p, "ct-data"); msg == "" {
			t.Errorf("value %q: status shows no rejection of the policy", v)
		}
		for _, a := range p.status()["actions"].([]any) {
			m := a.(map[string]any)
			if cmd, _ := m["command"].([]any); m["name"] != "ct-data" && len(cmd) > 0 {
				t.Fatalf("value %q registered the command %v as %q", v, cmd, m["name"])
			}
		}
	}
	if msg := rejectedOf(t, p, "ct-data-json"); !strings.Contains(msg, "-allow-data-commands") {
		t.Errorf("a whole declaration with a command: status shows %q, want the rejection naming -allow-data-commands", msg)
	}
	if strings.Contains(p.readDest("policy")+p.readDest("json"), "INJECTED") {
		t.Fatal("data reached the rendered file")
	}
}

// TestConsulTemplatePolicyKeptAcrossRestart: consul-template's first
// render pass after a start runs before it has fetched any key, so every
// start passes an empty -policy= first. That pass must keep the policy
// stored by the last run rather than fall back to the template's values,
// or a bad policy present at the restart would "keep" those instead of the
// last good merged declaration (issue 14).
func TestConsulTemplatePolicyKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	const policyKey = "it/ct-restart/policy"
	tmpl := []ctTemplate{{
		name: "restart",
		body: `{{ plugin "ct-supervise" "register" "-name=ct-restart" "-n=3" (printf "-policy=%s" (key "` + policyKey + `")) "true" -}}` +
			"\npolicy={{ key \"" + policyKey + "\" }}\n",
	}}
	n := newNode(t, "node-1")
	once := func(policy string) *ctNode {
		t.Helper()
		putKV(t, policyKey, policy)
		p := startConsulTemplateOn(t, n, tmpl, true)
		if code, exited := p.wait(60 * time.Second); !exited || code != 0 {
			t.Fatalf("consul-template -once with the policy %s: exited %t, status %d", policy, exited, code)
		}
		if got, want := p.readDest("restart"), "policy="+policy+"\n"; got != want {
			t.Fatalf("rendered %q, want %q", got, want)
		}
		return p
	}

	p := once(`{"n": 2}`)
	if a := actionOf(t, p, "ct-restart"); a["n"] != float64(2) {
		t.Fatalf("after the first run the action is %v, want n=2 from the policy", a)
	}
	p = once(`{"n": 0}`)
	if a := actionOf(t, p, "ct-restart"); a["n"] != float64(2) {
		t.Fatalf("after a restart with a bad policy the action is %v, want the last good n=2 (not the template's 3)", a)
	}
	if msg := rejectedOf(t, p, "ct-restart"); !strings.Contains(msg, "-n must be at least 1") {
		t.Fatalf("status shows %q for the bad policy, want its rejection", msg)
	}
}

// TestLedgerChecker makes sure the ledger checks can fail: the assertions
// above are only as good as parseLedger and maxConcurrency.
func TestLedgerChecker(t *testing.T) {
	cases := []struct {
		name    string
		ledger  []string
		wantErr string
		runs    int
		peak    int
	}{
		{"serial", []string{"a start 10 v1", "a end 20", "b start 20 v1", "b end 30"}, "", 2, 1},
		{"overlap of three", []string{
			"a start 10 v1", "b start 11 v1", "c start 12 v1", "a end 13", "d start 14 v1",
			"b end 15", "c end 16", "d end 17",
		}, "", 4, 3},
		{"unfinished run counts", []string{"a start 10 v1", "b start 30 v2", "b end 40"}, "", 2, 2},
		{"same node twice in a row", []string{"a start 10 v1", "a end 20", "a start 30 v2", "a end 40"}, "", 2, 1},
		{"interleaved lines of one node", []string{"a start 10 v1", "a start 11 v1"}, "still going", 0, 0},
		{"end without start", []string{"a end 10"}, "never started", 0, 0},
		{"end before start", []string{"a start 10 v1", "a end 5"}, "ends before it starts", 0, 0},
		{"bad timestamp", []string{"a start %N v1"}, "bad timestamp", 0, 0},
		{"short line", []string{"a start"}, "want", 0, 0},
		{"unknown event", []string{"a begin 10"}, "neither", 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runs, err := parseLedger(tc.ledger)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(runs) != tc.runs {
				t.Errorf("%d runs, want %d", len(runs), tc.runs)
			}
			if got := maxConcurrency(runs); got != tc.peak {
				t.Errorf("max concurrency %d, want %d", got, tc.peak)
			}
		})
	}
}
