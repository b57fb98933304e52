package lockexec_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/lockexec"
)

// helperEnv, when set, makes the test binary a helper process for
// TestReclaimAfterKilledRun: see TestHelperRunUntilKilled.
const helperEnv = "LOCKEXEC_TEST_HELPER"

// TestHelperRunUntilKilled is not a test: run by TestReclaimAfterKilledRun
// in a process of its own, it runs a long command under the lock at the
// prefix and limit in its environment, printing the session and the
// command's pid, until it is killed.
func TestHelperRunUntilKilled(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("a helper process, not a test")
	}
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = os.Getenv("CONSUL_HTTP_ADDR")
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	limit, _ := strconv.Atoi(os.Getenv("LOCKEXEC_TEST_LIMIT"))
	_, err = lockexec.New(client).Run(context.Background(), lockexec.Options{
		Prefix:    os.Getenv("LOCKEXEC_TEST_PREFIX"),
		Limit:     limit,
		Command:   []string{"sleep 600"},
		OnSession: func(id string) { fmt.Printf("session %s\n", id) },
		OnStarted: func(pid int) { fmt.Printf("pid %d\n", pid) },
	})
	t.Fatalf("Run returned: %v", err)
}

// TestReclaimAfterKilledRun kills a process in the middle of a run, as a
// worker killed by SIGKILL or the OOM killer: its command must die with it
// (the parent-death signal), and Reclaim must free the lock or slot at once,
// without the lock delay that destroying the session alone would cost.
func TestReclaimAfterKilledRun(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			if limit > 1 {
				// Fill the other slots, so that the dead run's slot is the
				// one the next run needs.
				holdUntil(t, client, prefix, limit, limit-1)
			}
			session, pid := killedRun(t, prefix, limit)
			waitFor(t, "the killed run's command to die with it", 10*time.Second, func() bool {
				return processGone(strconv.Itoa(pid))
			})

			next := startRun(t, context.Background(), r, shellOpts(t, prefix, limit, "true"))
			time.Sleep(200 * time.Millisecond)
			select {
			case <-next.done:
				t.Fatalf("the next run did not wait for the killed run's lock: %v", next.err)
			default:
			}
			start := time.Now()
			if err := r.Reclaim(context.Background(), prefix, limit, session); err != nil {
				t.Fatalf("Reclaim: %v", err)
			}
			if _, err := next.wait(t, 30*time.Second); err != nil {
				t.Fatalf("the next run: %v", err)
			}
			took := time.Since(start)
			t.Logf("the next run got the lock %s after Reclaim", took)
			if took > 5*time.Second {
				t.Errorf("the next run got the lock only %s after Reclaim", took)
			}
			if s, _, err := client.Session().Info(session, nil); err != nil || s != nil {
				t.Errorf("the killed run's session is still there: %+v, %v", s, err)
			}
			// Nothing left to give back is not an error.
			if err := r.Reclaim(context.Background(), prefix, limit, session); err != nil {
				t.Errorf("Reclaim of a session already reclaimed: %v", err)
			}
			pairs, _, err := client.KV().Keys(prefix+"/", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range pairs {
				if strings.HasSuffix(k, session) {
					t.Errorf("the killed run's contender key %s is left", k)
				}
			}
		})
	}
}

// killedRun runs TestHelperRunUntilKilled in a process of its own, waits for
// its command, then SIGKILLs it, and returns its session and command pid.
func killedRun(t *testing.T, prefix string, limit int) (session string, pid int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRunUntilKilled$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1", "CONSUL_HTTP_ADDR="+agent.Addr(),
		"LOCKEXEC_TEST_PREFIX="+prefix, "LOCKEXEC_TEST_LIMIT="+strconv.Itoa(limit))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := bufio.NewScanner(out)
	deadline := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	var seen []string
	for (session == "" || pid == 0) && lines.Scan() {
		seen = append(seen, lines.Text())
		f := strings.Fields(lines.Text())
		switch {
		case len(f) == 2 && f[0] == "session":
			session = f[1]
		case len(f) == 2 && f[0] == "pid":
			pid, _ = strconv.Atoi(f[1])
		}
	}
	if session == "" || pid == 0 {
		t.Fatalf("the helper did not report its session and command (session %q, pid %d):\n%s",
			session, pid, strings.Join(seen, "\n"))
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = bufio.NewReader(out).WriteTo(discard{}) }()
	return session, pid
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestReclaimRefusesBadInput checks Reclaim's own validation.
func TestReclaimRefusesBadInput(t *testing.T) {
	t.Parallel()
	r := lockexec.New(testClient(t))
	for _, tc := range []struct {
		prefix, session string
		limit           int
	}{
		{"", "s", 1}, {"p/", "s", 1}, {"p", "", 1}, {"p", "s", -1},
	} {
		if err := r.Reclaim(context.Background(), tc.prefix, tc.limit, tc.session); !errors.Is(err, lockexec.ErrInvalidOptions) {
			t.Errorf("Reclaim(%q, %d, %q) = %v, want ErrInvalidOptions", tc.prefix, tc.limit, tc.session, err)
		}
	}
}
