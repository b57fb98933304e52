package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
)

// aclRootToken is the management token of the ACL-enabled agent.
const aclRootToken = "00000000-0000-4000-8000-00000000beef"

// readmePolicy is the ACL policy the README gives, taken from the README
// itself so that the test checks exactly what operators copy.
func readmePolicy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```hcl\n(# ct-supervise\\.hcl:[^\n]*\n.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatal("README.md has no ```hcl block starting with # ct-supervise.hcl:")
	}
	return string(m[1])
}

// aclNode starts an agent with ACLs on (default deny) and returns a node
// whose token has exactly the README's policy, with the token's secret.
func aclNode(t *testing.T) (*node, string) {
	t.Helper()
	needConsul(t)
	a, err := devconsul.Start(devconsul.Options{ExtraConfig: `acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens { initial_management = "` + aclRootToken + `" }
}`})
	if err != nil {
		devconsul.MissingOrFatal(t, err)
	}
	t.Cleanup(a.Stop)
	cfg := a.Config()
	cfg.Token = aclRootToken
	root, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	policy, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: "ct-supervise", Rules: readmePolicy(t)}, nil)
	if err != nil {
		t.Fatalf("creating the README's policy: %v", err)
	}
	token, _, err := root.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "acl-node")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, name: "acl-node", stateDir: dir}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			n.env = append(n.env, kv)
		}
	}
	n.env = append(n.env,
		"CONSUL_HTTP_ADDR="+a.Addr(),
		"CT_SUPERVISE_STATE_DIR="+dir,
		"GORACE=atexit_sleep_ms=0",
	)
	t.Cleanup(n.stopWorker)
	n.logOnFailure()
	return n, token.SecretID
}

// Every subcommand works on an agent with ACLs on (default deny) and a
// token holding exactly the README's policy. The token reaches no command
// (unless -pass-token) and no output or log.
func TestEverySubcommandWorksWithTheREADMEPolicy(t *testing.T) {
	n, secret := aclNode(t)
	envOut := func(name string) string { return filepath.Join(t.TempDir(), name) }

	// Without a token, default deny: the test can fail.
	if r := n.run("run", "-name=acl-denied", "true"); r.code == 0 {
		t.Fatal("run without a token succeeded: ACLs are not enforced, the test proves nothing")
	}

	base := n.env
	n.env = append(base, "CONSUL_HTTP_TOKEN="+secret)
	var outputs []string
	keep := func(r result) { outputs = append(outputs, r.stdout, r.stderr) }

	lockEnv, semEnv, passEnv := envOut("lock"), envOut("sem"), envOut("pass")
	keep(n.mustRun("run", "-name=acl-lock", "env > "+lockEnv))
	keep(n.mustRun("run", "-n=2", "-name=acl-sem", "-verbose", "env > "+semEnv))
	keep(n.mustRun("run", "-name=acl-pass", "-pass-token", "env > "+passEnv))

	queuedEnv := envOut("queued")
	keep(n.mustRun("register", "-n=2", "-name=nginx", "env > "+queuedEnv))
	keep(n.mustRun("exec", "-wait", "nginx"))
	keep(n.mustRun("worker")) // in the foreground: nothing queued, it exits

	// status reads holders and sessions with the same token, here from a
	// file (CONSUL_HTTP_TOKEN_FILE) and from -token-file.
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, env := range [][]string{{"CONSUL_HTTP_TOKEN=" + secret}, {"CONSUL_HTTP_TOKEN_FILE=" + tokenFile}} {
		n.env = append(append([]string{}, base...), env...)
		r := n.mustRun("status", "-json")
		keep(r)
		var s struct {
			ConsulError string `json:"consul_error"`
			Actions     []struct {
				Name       string          `json:"name"`
				Holders    json.RawMessage `json:"holders"`
				HoldersErr string          `json:"holders_error"`
			} `json:"actions"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
			t.Fatal(err)
		}
		if len(s.Actions) != 1 || s.Actions[0].HoldersErr != "" || string(s.Actions[0].Holders) != "[]" || s.ConsulError != "" {
			t.Fatalf("status with %s: %s", env[0][:strings.Index(env[0], "=")], r.stdout)
		}
	}
	n.env = base
	r := n.mustRun("status", "-token-file="+tokenFile, "nginx")
	keep(r)
	if !strings.Contains(r.stdout, "Holders:") || strings.Contains(r.stdout, "not read") {
		t.Fatalf("status -token-file: %s", r.stdout)
	}
	n.env = append(base, "CONSUL_HTTP_TOKEN_FILE="+tokenFile)
	keep(n.mustRun("forget", "nginx"))

	// The fleet's switches and view, for one action and for all.
	keep(n.mustRun("pause", "acl-lock", "-reason", "acl test"))
	keep(n.mustRun("rollout", "-json", "acl-lock"))
	keep(n.mustRun("resume", "acl-lock"))
	keep(n.mustRun("pause", "-all"))
	keep(n.mustRun("resume", "-all"))

	for _, f := range []string{lockEnv, semEnv, queuedEnv} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "CONSUL_HTTP_TOKEN") || strings.Contains(string(b), secret) {
			t.Errorf("the command's environment (%s) holds the Consul token", filepath.Base(f))
		}
	}
	if b, _ := os.ReadFile(passEnv); !strings.Contains(string(b), "CONSUL_HTTP_TOKEN="+secret) {
		t.Error("-pass-token did not pass the token")
	}
	log, _ := os.ReadFile(filepath.Join(n.stateDir, "worker.log"))
	state, _ := os.ReadFile(filepath.Join(n.stateDir, "state.json"))
	for _, s := range append(outputs, string(log), string(state)) {
		if strings.Contains(s, secret) {
			t.Fatalf("the token was printed or logged: %q", s)
		}
	}
}

// A token file that cannot be read is named, its contents never shown.
func TestTokenFileErrors(t *testing.T) {
	n, _ := aclNode(t)
	missing := filepath.Join(t.TempDir(), "missing")
	empty := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{{missing, "no such file"}, {empty, "is empty"}} {
		r := n.run("run", "-token-file="+tc.file, "-name=acl-file", "true")
		if r.code == 0 || !strings.Contains(r.stderr, tc.file) || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("run -token-file=%s: exit %d stderr %q", tc.file, r.code, r.stderr)
		}
	}
}
