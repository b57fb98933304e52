package lockexec_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

// aclConfig turns ACLs on, denying by default, with a management token.
const (
	aclRootToken = "6f1c3b0e-0000-4000-8000-00000000c0de"
	aclConfig    = `acl { enabled = true, default_policy = "deny", tokens { initial_management = "` + aclRootToken + `" } }`
)

// TestRunPermissionDenied runs against an agent with ACLs: a token that may
// not create sessions, and one that may but cannot write the lock's key.
// Both are a 403, exit 77, with a message naming what was refused.
func TestRunPermissionDenied(t *testing.T) {
	t.Parallel()
	a := aclAgent(t)
	token := aclToken(t, a, "sessions-only", `session_prefix "" { policy = "write" } key_prefix "" { policy = "read" }`)

	cases := []struct {
		name  string
		token string
		names string // what the message must name
	}{
		{"no session write", "", "ct-supervise denied/lock"},
		{"no key write", token, "denied/lock"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := lockexec.New(tokenClient(t, a, tc.token)).Run(context.Background(), lockexec.Options{
				Prefix:  "denied/lock",
				Command: []string{"true"},
				Logger:  testLogger(t),
			})
			if !errors.Is(err, lockexec.ErrPermissionDenied) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("Run: %v, want ErrPermissionDenied naming %q", err, tc.names)
			}
			if code := lockexec.ExitStatus(res, err); code != 77 {
				t.Errorf("ExitStatus = %d, want 77", code)
			}
			t.Logf("error: %v", err)
			if res.Started {
				t.Error("the command ran")
			}
		})
	}
}

// TestHoldersPermissionDenied reads the holders with a token that may not
// read the lock's key: the error must say so, not call Consul unreachable.
func TestHoldersPermissionDenied(t *testing.T) {
	t.Parallel()
	a := aclAgent(t)
	_, err := lockexec.New(tokenClient(t, a, "")).Holders("denied/lock", nil)
	if !errors.Is(err, lockexec.ErrPermissionDenied) || errors.Is(err, lockexec.ErrConsulUnreachable) ||
		!strings.Contains(err.Error(), "denied/lock/.lock") {
		t.Fatalf("Holders: %v, want ErrPermissionDenied naming the key", err)
	}
}

// aclAgent starts an agent of its own with ACLs on (default deny) for the
// test, and stops it when the test ends.
func aclAgent(t *testing.T) *devconsul.Agent {
	t.Helper()
	if agent == nil {
		t.Skip("skipping: no consul binary (see devconsul.ErrNoBinary)")
	}
	a, err := devconsul.Start(devconsul.Options{ExtraConfig: aclConfig})
	if err != nil {
		t.Fatalf("starting consul with ACLs: %v", err)
	}
	t.Cleanup(a.Stop)
	return a
}

// aclToken creates on a a policy called name with rules, and a token with
// it, and returns the token's secret.
func aclToken(t *testing.T, a *devconsul.Agent, name, rules string) string {
	t.Helper()
	root := tokenClient(t, a, aclRootToken)
	policy, _, err := root.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("creating a policy: %v", err)
	}
	token, _, err := root.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatalf("creating a token: %v", err)
	}
	return token.SecretID
}

// tokenClient is a client for a using token.
func tokenClient(t *testing.T, a *devconsul.Agent, token string) *api.Client {
	t.Helper()
	cfg := a.Config()
	cfg.Token = token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestLockQueueNotWritable: a token that may write the lock key but not the
// queue under it (a policy narrower than the README's, as one written for
// `consul lock`) still gets the lock once it is free: the waiter waits
// without the queue, as every waiter once did, and never stalls.
func TestLockQueueNotWritable(t *testing.T) {
	t.Parallel()
	a := aclAgent(t)
	const prefix = "narrow/lock"
	token := aclToken(t, a, "lock-key-only", `session_prefix "" { policy = "write" } key_prefix "" { policy = "read" }
key "`+prefix+`/.lock" { policy = "write" }`)
	root := tokenClient(t, a, aclRootToken)
	held, err := root.LockOpts(&api.LockOptions{Key: prefix + "/" + lockexec.LockKeySuffix, SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.Lock(nil); err != nil {
		t.Fatalf("holding the lock: %v", err)
	}
	dir := t.TempDir()
	opts := shellOpts(t, prefix, 1, "touch "+dir+"/ran")
	run := startRun(t, context.Background(), lockexec.New(tokenClient(t, a, token)), opts)
	time.Sleep(time.Second) // it waits, having failed to queue
	if err := held.Unlock(); err != nil {
		t.Fatal(err)
	}
	if res, err := run.wait(t, 30*time.Second); err != nil || res.ExitCode != 0 {
		t.Fatalf("Run with a token that may not queue: %v, exit %d", err, res.ExitCode)
	}
	if !fileExists(dir + "/ran") {
		t.Error("the command did not run")
	}
}
