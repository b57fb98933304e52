package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	fleetkv "ct-supervise/fleet"
	"ct-supervise/internal/devconsul"
)

// pause, resume and rollout against the package agent: what an operator
// types during an incident.
func TestPauseResumeRollout(t *testing.T) {
	n := newNode(t, "ops")
	client := consulClient(t)
	prefix := "ct-supervise/fleet-cli"
	t.Cleanup(func() {
		_, _ = client.KV().DeleteTree(prefix+fleetkv.Suffix+"/", nil)
		_, _ = client.KV().Delete(fleetkv.GlobalPauseKey, nil)
	})

	r := n.mustRun("pause", "fleet-cli", "-reason", "db migration") // flags after NAME, as operators type them
	if !strings.Contains(r.stdout, `paused "fleet-cli"`) {
		t.Fatalf("pause said %q", r.stdout)
	}
	// A node's failure halts it too; both show in the rollout view.
	f := fleetkv.New(client, prefix)
	if err := f.SetHalt(context.Background(), fleetkv.Halt{Node: "web-2", Reason: "exit 1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	sess, _, err := client.Session().Create(&api.SessionEntry{TTL: "30s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = client.Session().Destroy(sess, nil) })
	if err := f.Publish(context.Background(), sess, fleetkv.Record{Node: "web-1", Phase: "idle", OK: true,
		LastResult: "ok", Version: "v7", Updated: time.Now()}); err != nil {
		t.Fatal(err)
	}
	r = n.mustRun("rollout", "fleet-cli")
	for _, want := range []string{"web-1", "v7", "1 node: 1 done at v7", "halted: by web-2", "exit 1", "paused: by ", "db migration"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("rollout output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = n.mustRun("rollout", "-json", "fleet-cli")
	var view struct {
		Halt    *fleetkv.Halt  `json:"halt"`
		Pause   *fleetkv.Pause `json:"pause"`
		Summary string         `json:"summary"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &view); err != nil || view.Halt == nil || view.Pause == nil || view.Summary == "" {
		t.Fatalf("rollout -json = %s (%v)", r.stdout, err)
	}

	r = n.mustRun("resume", "fleet-cli")
	if !strings.Contains(r.stdout, "lifted: pause halt") {
		t.Fatalf("resume said %q", r.stdout)
	}
	if h, _ := f.Halt(context.Background()); h != nil {
		t.Fatalf("the halt is still there after resume: %+v", h)
	}
	// Known but neither paused nor halted: a no-op that says so.
	r = n.mustRun("resume", "fleet-cli")
	if !strings.Contains(r.stdout, "neither paused nor halted") {
		t.Fatalf("second resume said %q", r.stdout)
	}

	n.mustRun("pause", "-all", "-reason", "freeze")
	if p, _ := f.Pause(context.Background()); p == nil || !p.Global {
		t.Fatalf("pause -all did not set the global pause: %+v", p)
	}
	n.mustRun("resume", "-all")
	if p, _ := f.Pause(context.Background()); p != nil {
		t.Fatalf("resume -all left a pause: %+v", p)
	}
}

func TestFleetCommandsBadInput(t *testing.T) {
	n := newNode(t, "ops")
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	down := newNodeOn(t, "ops-down", fmt.Sprintf("127.0.0.1:%d", port))
	tests := []struct {
		name string
		on   *node
		args []string
		code int
		want string
	}{
		{"unknown name", n, []string{"resume", "no-such-action"}, 1, `no action "no-such-action": nothing at ct-supervise/no-such-action in Consul`},
		{"no name", n, []string{"pause"}, 64, "expected one action NAME, got 0 arguments"},
		{"name and -all", n, []string{"pause", "-all", "x"}, 64, "give either -all or a NAME, not both"},
		{"bad name", n, []string{"rollout", "a/b"}, 64, `-name "a/b" must start with a letter or digit`},
		{"Consul unreachable", down, []string{"pause", "web"}, 69, "consul unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.on.run(tt.args...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, tt.code, tt.want)
			}
			if first, _, _ := strings.Cut(r.stderr, "\n"); !strings.HasPrefix(first, "ct-supervise "+tt.args[0]+": ") {
				t.Fatalf("the error is not one line naming the subcommand: %q", r.stderr)
			}
		})
	}
}

// A token that may not write the fleet keys gets a one-line permission
// error and exit 77.
func TestFleetCommandsWeakToken(t *testing.T) {
	needConsul(t)
	const mgmt = "6f0c3f0e-0000-4000-8000-00000000f1ee"
	a := aclAgent(t, mgmt)
	admin, err := api.NewClient(&api.Config{Address: a.Addr(), Token: mgmt})
	if err != nil {
		t.Fatal(err)
	}
	policy, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "read-only",
		Rules: `key_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := newNodeOn(t, "ops", a.Addr())
	n.env = append(n.env, "CONSUL_HTTP_TOKEN="+tok.SecretID)
	r := n.run("pause", "web")
	if r.code != 77 || !strings.Contains(r.stderr, "permission denied") || strings.Count(r.stderr, "\n") != 1 {
		t.Fatalf("exit %d, stderr %q; want 77 and one permission-denied line", r.code, r.stderr)
	}
}
