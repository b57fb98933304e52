package lockexec_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/internal/devconsul"
	"ct-supervise/lockexec"
)

func TestRunPassesExitCodeAndOutput(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	cases := []struct {
		name    string
		limit   int
		command []string
		shell   bool
		stdin   string
		env     []string
		code    int
		stdout  string
	}{
		{name: "shell success", command: []string{"echo", "hello"}, shell: true, stdout: "hello\n"},
		{name: "shell exit status", command: []string{"echo out; exit 3"}, shell: true, code: 3, stdout: "out\n"},
		{name: "argv split on spaces", command: []string{"echo a   b"}, stdout: "a b\n"},
		{name: "argv used as is", command: []string{"printf", "%s|", "a b", "c"}, stdout: "a b|c|"},
		{name: "argv exit status", command: []string{"false"}, code: 1},
		{name: "stdin", command: []string{"cat"}, stdin: "from stdin", stdout: "from stdin"},
		{name: "no stdin", command: []string{"cat"}, stdout: ""},
		{name: "env", command: []string{"echo $LOCKEXEC_TEST"}, shell: true, env: []string{"LOCKEXEC_TEST=set"}, stdout: "set\n"},
		{name: "semaphore", limit: 3, command: []string{"echo", "slot"}, shell: true, stdout: "slot\n"},
		{name: "killed by signal", command: []string{"kill -USR1 $$"}, shell: true, code: 128 + int(syscall.SIGUSR1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			var stdout syncBuffer
			opts := lockexec.Options{
				Prefix:  prefix,
				Limit:   tc.limit,
				Command: tc.command,
				Shell:   tc.shell,
				Stdout:  &stdout,
				Env:     tc.env,
				Logger:  testLogger(t),
			}
			if tc.stdin != "" {
				opts.Stdin = strings.NewReader(tc.stdin)
			}
			res, err := r.Run(context.Background(), opts)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if !res.Started || res.ExitCode != tc.code {
				t.Errorf("Started=%v ExitCode=%d, want true, %d", res.Started, res.ExitCode, tc.code)
			}
			if got := stdout.String(); got != tc.stdout {
				t.Errorf("stdout = %q, want %q", got, tc.stdout)
			}
			if res.Session == "" {
				t.Error("Result.Session is empty")
			}
			assertClean(t, client, prefix)
		})
	}
}

// TestRunSessionSettings looks at the session and the lock key while the
// command runs.
func TestRunSessionSettings(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	cases := []struct {
		limit    int
		behavior string
	}{
		{1, api.SessionBehaviorRelease},
		{2, api.SessionBehaviorDelete},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("n=%d", tc.limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			dir := t.TempDir()
			opts := shellOpts(t, prefix, tc.limit,
				fmt.Sprintf(`touch %[1]s/started; while [ ! -e %[1]s/go ]; do sleep 0.05; done`, dir))
			opts.SessionName = "custom " + prefix
			opts.SessionTTL = 20 * time.Second
			opts.LockDelay = 20 * time.Second
			run := startRun(t, context.Background(), r, opts)
			run.waitStarted(t, dir+"/started")

			all, _, err := client.Session().List(nil)
			if err != nil {
				t.Fatal(err)
			}
			var s *api.SessionEntry
			for _, e := range all {
				if e.Name == opts.SessionName {
					s = e
				}
			}
			if s == nil {
				t.Fatalf("no session named %q", opts.SessionName)
			}
			if s.TTL != "20s" || s.LockDelay != 20*time.Second || s.Behavior != tc.behavior {
				t.Errorf("session TTL=%s LockDelay=%s Behavior=%s, want 20s, 20s, %s", s.TTL, s.LockDelay, s.Behavior, tc.behavior)
			}
			pair, _, err := client.KV().Get(prefix+"/"+lockexec.LockKeySuffix, nil)
			if err != nil || pair == nil {
				t.Fatalf("reading the lock key: %v, %v", pair, err)
			}
			switch {
			case tc.limit == 1 && (pair.Flags != api.LockFlagValue || pair.Session != s.ID):
				t.Errorf("lock key flags %#x session %q, want a lock held by %s", pair.Flags, pair.Session, s.ID)
			case tc.limit > 1 && (pair.Flags != api.SemaphoreFlagValue || !strings.Contains(string(pair.Value), s.ID)):
				t.Errorf("lock key flags %#x value %s, want a semaphore held by %s", pair.Flags, pair.Value, s.ID)
			}

			if err := os.WriteFile(dir+"/go", nil, 0o600); err != nil {
				t.Fatal(err)
			}
			res, err := run.wait(t, 15*time.Second)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Session != s.ID {
				t.Errorf("Result.Session = %q, want %q", res.Session, s.ID)
			}
			all, _, err = client.Session().List(nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range all {
				if e.ID == s.ID {
					t.Errorf("session %s left behind", s.ID)
				}
			}
			assertNoHolder(t, client, prefix)
		})
	}
}

// TestRunCommandCannotStart checks that a command that cannot be started
// gives the statuses a shell gives, and that the lock is given back.
func TestRunCommandCannotStart(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		command string
		wantErr error
		code    int
	}{
		{"missing path", "/nonexistent/ct-supervise-test-command", lockexec.ErrCommandNotFound, 127},
		{"not on PATH", "ct-supervise-test-no-such-command", lockexec.ErrCommandNotFound, 127},
		{"not executable", notExec, lockexec.ErrCommandNotExecutable, 126},
		{"a directory", dir, lockexec.ErrCommandNotExecutable, 126},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			res, err := lockexec.New(client).Run(context.Background(), lockexec.Options{
				Prefix:  prefix,
				Command: []string{tc.command},
				Logger:  testLogger(t),
			})
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.command) {
				t.Fatalf("Run: %v, want %v naming %s", err, tc.wantErr, tc.command)
			}
			if code := lockexec.ExitStatus(res, err); code != tc.code {
				t.Errorf("ExitStatus = %d, want %d", code, tc.code)
			}
			if res.Started || res.ExitCode != -1 {
				t.Errorf("Started=%v ExitCode=%d, want false, -1", res.Started, res.ExitCode)
			}
			assertClean(t, client, prefix)
		})
	}
}

// TestRunHoldersNeverExceedLimit is the invariant the tool exists for: many
// runs at once on one prefix, and never more than the limit of them running
// their command at the same time. Each command marks itself running in a
// shared directory and records how many it sees running; for a semaphore
// the test also demands real concurrency, so that the check could fail.
func TestRunHoldersNeverExceedLimit(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	const runs = 12

	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			dir := t.TempDir()
			script := fmt.Sprintf(`d=%s; touch "$d/run.$$"; ls "$d" | grep -c '^run\.' >> "$d/counts"; sleep 0.4; rm "$d/run.$$"`, dir)

			var wg sync.WaitGroup
			errs := make(chan error, runs)
			for i := 0; i < runs; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					opts := shellOpts(t, prefix, limit, script)
					opts.Logger = testLogger(t).Named(strconv.Itoa(i))
					res, err := r.Run(context.Background(), opts)
					if err == nil && res.ExitCode != 0 {
						err = fmt.Errorf("run %d exited %d", i, res.ExitCode)
					}
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Error(err)
				}
			}

			data, err := os.ReadFile(filepath.Join(dir, "counts"))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Fields(string(data))
			if len(lines) != runs {
				t.Fatalf("%d commands ran, want %d", len(lines), runs)
			}
			most := 0
			for _, l := range lines {
				n, err := strconv.Atoi(l)
				if err != nil {
					t.Fatal(err)
				}
				most = max(most, n)
			}
			t.Logf("n=%d: at most %d commands ran at once", limit, most)
			if most > limit {
				t.Errorf("%d commands ran at once with -n=%d", most, limit)
			}
			if limit > 1 && most < 2 {
				t.Errorf("with -n=%d the commands never overlapped: the semaphore is not letting holders in together", limit)
			}
			assertClean(t, client, prefix)
		})
	}
}

// TestRunHandsOffPromptly checks that a waiter gets the lock as soon as the
// holder's command ends: releasing before destroying the session means no
// lock-delay (15s by default) stands in the way. It is not parallel with
// the other tests so that a loaded machine does not blur the measurement.
func TestRunHandsOffPromptly(t *testing.T) {
	client := testClient(t)
	r := lockexec.New(client)

	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			dir := t.TempDir()

			// The first holders fill every slot.
			var firsts []*bgRun
			var firstStarts []time.Time
			for i := 0; i < limit; i++ {
				opts := shellOpts(t, prefix, limit, fmt.Sprintf("touch %s/first%d; sleep 1", dir, i))
				firstStarts = append(firstStarts, time.Now())
				firsts = append(firsts, startRun(t, context.Background(), r, opts))
				waitFor(t, "the first holder's command", 10*time.Second, func() bool {
					return fileExists(filepath.Join(dir, fmt.Sprintf("first%d", i)))
				})
			}

			secondStart := time.Now()
			second := startRun(t, context.Background(), r, shellOpts(t, prefix, limit, "true"))
			sres, err := second.wait(t, 30*time.Second)
			if err != nil {
				t.Fatalf("second Run: %v", err)
			}
			acquired := secondStart.Add(sres.Waited)

			// The earliest end of a first holder's command frees a slot.
			var firstEnd time.Time
			for i, f := range firsts {
				res, err := f.wait(t, 30*time.Second)
				if err != nil {
					t.Fatalf("first Run %d: %v", i, err)
				}
				end := firstStarts[i].Add(res.Waited + res.Ran)
				if firstEnd.IsZero() || end.Before(firstEnd) {
					firstEnd = end
				}
			}
			handOff := acquired.Sub(firstEnd)
			t.Logf("hand-off took %s", handOff)
			// Both ends are measured from our side, so allow some slack
			// below zero; above, anything near a lock-delay fails.
			if handOff < -200*time.Millisecond {
				t.Errorf("the waiter acquired %s before the holder's command ended", -handOff)
			}
			if handOff > 2*time.Second {
				t.Errorf("the waiter acquired %s after the holder's command ended, want well under 2s", handOff)
			}
			assertClean(t, client, prefix)
		})
	}
}

func TestRunTryExpires(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	for _, limit := range []int{1, 2} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			holdElsewhere(t, client, prefix, limit)
			dir := t.TempDir()

			opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
			opts.Try = 300 * time.Millisecond
			start := time.Now()
			res, err := r.Run(context.Background(), opts)
			took := time.Since(start)
			if !errors.Is(err, lockexec.ErrNotAcquired) {
				t.Fatalf("Run: %v, want ErrNotAcquired", err)
			}
			if res.Started || res.ExitCode != -1 || fileExists(dir+"/ran") {
				t.Errorf("the command ran: Started=%v ExitCode=%d", res.Started, res.ExitCode)
			}
			if took < opts.Try || took > 5*time.Second {
				t.Errorf("Run gave up after %s with -try %s", took, opts.Try)
			}
			assertNoSessions(t, client, prefix)
		})
	}
}

// TestRunTryAcquires checks that a -try that is long enough simply waits.
func TestRunTryAcquires(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	dir := t.TempDir()

	first := startRun(t, context.Background(), r, shellOpts(t, prefix, 1, "touch "+dir+"/first; sleep 0.5"))
	waitFor(t, "the first command", 10*time.Second, func() bool { return fileExists(dir + "/first") })
	opts := shellOpts(t, prefix, 1, "exit 4")
	opts.Try = 20 * time.Second
	res, err := r.Run(context.Background(), opts)
	if err != nil || res.ExitCode != 4 {
		t.Fatalf("Run: %v, exit code %d; want nil, 4", err, res.ExitCode)
	}
	if _, err := first.wait(t, 10*time.Second); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	assertClean(t, client, prefix)
}

// TestRunLockLost invalidates the session under a running command, as an
// operator or a failed health check would: the command must be stopped at
// once and Run must say the lock was lost.
func TestRunLockLost(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	for _, limit := range []int{1, 3} {
		t.Run(fmt.Sprintf("n=%d", limit), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			dir := t.TempDir()
			run := startRun(t, context.Background(), r, shellOpts(t, prefix, limit, markerScript(dir)))
			run.waitStarted(t, markerPath(dir, "started"))

			id := waitOurSession(t, client, prefix)
			if _, err := client.Session().Destroy(id, nil); err != nil {
				t.Fatalf("destroying the session: %v", err)
			}
			destroyed := time.Now()

			res, err := run.wait(t, 15*time.Second)
			if !errors.Is(err, lockexec.ErrLockLost) {
				t.Fatalf("Run: %v, want ErrLockLost", err)
			}
			if took := run.returned.Sub(destroyed); took > 5*time.Second {
				t.Errorf("Run took %s to notice the lost lock", took)
			}
			if !fileExists(markerPath(dir, "term")) {
				t.Error("the command did not get SIGTERM")
			}
			if !res.Started || res.ExitCode != 143 {
				t.Errorf("Started=%v ExitCode=%d, want true, 143", res.Started, res.ExitCode)
			}
			assertBackgroundGone(t, dir)
			assertClean(t, client, prefix)
		})
	}
}

// TestRunLockLostWhenConsulGoesAway stops the agent under a running
// command: once the monitor's retries are used up the lock counts as lost.
func TestRunLockLostWhenConsulGoesAway(t *testing.T) {
	t.Parallel()
	own, client := ownAgent(t)
	dir := t.TempDir()
	opts := shellOpts(t, uniquePrefix(t), 1, markerScript(dir))
	opts.MonitorRetries = 2
	opts.MonitorRetryTime = 100 * time.Millisecond
	opts.KillGrace = time.Second
	run := startRun(t, context.Background(), lockexec.New(client), opts)
	run.waitStarted(t, markerPath(dir, "started"))

	own.Stop()
	res, err := run.wait(t, 30*time.Second)
	if !errors.Is(err, lockexec.ErrLockLost) {
		t.Fatalf("Run: %v, want ErrLockLost", err)
	}
	if !fileExists(markerPath(dir, "term")) || res.ExitCode != 143 {
		t.Errorf("the command was not stopped with SIGTERM: ExitCode=%d", res.ExitCode)
	}
}

// TestRunConsulGoesAwayWhileWaiting stops the agent while a run waits for
// a lock held elsewhere: the wait fails as Consul being unreachable.
func TestRunConsulGoesAwayWhileWaiting(t *testing.T) {
	t.Parallel()
	own, client := ownAgent(t)
	prefix := uniquePrefix(t)
	holdElsewhere(t, client, prefix, 1)
	dir := t.TempDir()
	run := startRun(t, context.Background(), lockexec.New(client), shellOpts(t, prefix, 1, "touch "+dir+"/ran"))
	waitOurSession(t, client, prefix)

	own.Stop()
	res, err := run.wait(t, 30*time.Second)
	if !errors.Is(err, lockexec.ErrConsulUnreachable) {
		t.Fatalf("Run: %v, want ErrConsulUnreachable", err)
	}
	if res.Started || fileExists(dir+"/ran") {
		t.Error("the command ran")
	}
}

// signalCase is one signal sent to markerScript and what must follow.
type signalCase struct {
	sig     syscall.Signal
	marker  string
	code    int
	wantErr error
}

var signalCases = []signalCase{
	{syscall.SIGTERM, "term", 143, lockexec.ErrInterrupted},
	{syscall.SIGINT, "int", 130, lockexec.ErrInterrupted},
	{syscall.SIGHUP, "hup", 0, nil},
}

// TestRunForwardsSignals sends signals on Options.Signals while the command
// runs: they reach it, INT and TERM make Run report the interruption, and
// the lock is released either way.
func TestRunForwardsSignals(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	for _, tc := range signalCases {
		t.Run(tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			checkSignalForwarded(t, r, client, tc)
		})
	}
}

// checkSignalForwarded runs markerScript, sends it tc.sig through
// Options.Signals and checks what follows.
func checkSignalForwarded(t *testing.T, r *lockexec.Runner, client *api.Client, tc signalCase) {
	t.Helper()
	prefix := uniquePrefix(t)
	dir := t.TempDir()
	signals := make(chan os.Signal, 1)
	opts := shellOpts(t, prefix, 1, markerScript(dir))
	opts.Signals = signals
	run := startRun(t, context.Background(), r, opts)
	run.waitStarted(t, markerPath(dir, "started"))

	signals <- tc.sig
	res, err := run.wait(t, 15*time.Second)
	if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
		t.Fatalf("Run: %v, want %v", err, tc.wantErr)
	}
	if !fileExists(markerPath(dir, tc.marker)) {
		t.Errorf("the command did not get %v", tc.sig)
	}
	if res.ExitCode != tc.code {
		t.Errorf("ExitCode=%d, want %d", res.ExitCode, tc.code)
	}
	if tc.wantErr != nil {
		assertBackgroundGone(t, dir)
	}
	assertClean(t, client, prefix)
}

// TestRunInterruptedWhileWaiting stops a run that is still waiting for a
// lock held elsewhere, by signal and by context.
func TestRunInterruptedWhileWaiting(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	for _, limit := range []int{1, 2} {
		for _, how := range []string{"SIGINT", "SIGTERM", "context"} {
			t.Run(fmt.Sprintf("n=%d/%s", limit, how), func(t *testing.T) {
				t.Parallel()
				prefix := uniquePrefix(t)
				holdElsewhere(t, client, prefix, limit)
				dir := t.TempDir()

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				signals := make(chan os.Signal, 2)
				opts := shellOpts(t, prefix, limit, "touch "+dir+"/ran")
				opts.Signals = signals
				run := startRun(t, ctx, r, opts)
				waitOurSession(t, client, prefix)

				// A signal that does not ask us to stop is ignored.
				signals <- syscall.SIGHUP
				stopped := time.Now()
				switch how {
				case "SIGINT":
					signals <- syscall.SIGINT
				case "SIGTERM":
					signals <- syscall.SIGTERM
				default:
					cancel()
				}
				res, err := run.wait(t, 15*time.Second)
				if !errors.Is(err, lockexec.ErrInterrupted) {
					t.Fatalf("Run: %v, want ErrInterrupted", err)
				}
				if took := run.returned.Sub(stopped); took > 5*time.Second {
					t.Errorf("Run took %s to stop waiting", took)
				}
				if res.Started || res.ExitCode != -1 || fileExists(dir+"/ran") {
					t.Errorf("the command ran: Started=%v ExitCode=%d", res.Started, res.ExitCode)
				}
				assertNoSessions(t, client, prefix)
			})
		}
	}
}

func TestRunCancelledWhileRunning(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	prefix := uniquePrefix(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	run := startRun(t, ctx, lockexec.New(client), shellOpts(t, prefix, 1, markerScript(dir)))
	run.waitStarted(t, markerPath(dir, "started"))

	cancel()
	res, err := run.wait(t, 15*time.Second)
	if !errors.Is(err, lockexec.ErrInterrupted) {
		t.Fatalf("Run: %v, want ErrInterrupted", err)
	}
	if !fileExists(markerPath(dir, "term")) || !res.Started || res.ExitCode != 143 {
		t.Errorf("the command was not stopped with SIGTERM: Started=%v ExitCode=%d", res.Started, res.ExitCode)
	}
	assertBackgroundGone(t, dir)
	assertClean(t, client, prefix)
}

func TestRunCancelledBeforeStart(t *testing.T) {
	t.Parallel()
	srv, requests := countingServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := lockexec.New(clientFor(t, srv.Listener.Addr().String())).Run(ctx, lockexec.Options{
		Prefix:  "never",
		Command: []string{"true"},
	})
	if !errors.Is(err, lockexec.ErrInterrupted) {
		t.Fatalf("Run: %v, want ErrInterrupted", err)
	}
	if res.Started || res.ExitCode != -1 || res.Session != "" {
		t.Errorf("unexpected result %+v", res)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("Run made %d requests to Consul", n)
	}
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	cases := []struct {
		name    string
		command []string
		shell   bool
		code    int
	}{
		// Without a shell, sleep itself dies of the SIGTERM.
		{name: "terminated", command: []string{"sleep 30"}, code: 128 + int(syscall.SIGTERM)},
		// A command that ignores SIGTERM (and passes that on to its sleep)
		// is killed once KillGrace is over.
		{name: "killed", command: []string{"trap '' TERM; sleep 30"}, shell: true, code: 128 + int(syscall.SIGKILL)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			opts := lockexec.Options{
				Prefix:    prefix,
				Command:   tc.command,
				Shell:     tc.shell,
				Timeout:   500 * time.Millisecond,
				KillGrace: 300 * time.Millisecond,
				Logger:    testLogger(t),
			}
			start := time.Now()
			res, err := r.Run(context.Background(), opts)
			if !errors.Is(err, lockexec.ErrTimeout) {
				t.Fatalf("Run: %v, want ErrTimeout", err)
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Errorf("Run took %s with a 500ms timeout", took)
			}
			if !res.Started || res.ExitCode != tc.code {
				t.Errorf("Started=%v ExitCode=%d, want true, %d", res.Started, res.ExitCode, tc.code)
			}
			if res.Ran < opts.Timeout {
				t.Errorf("Ran=%s, shorter than the timeout", res.Ran)
			}
			assertClean(t, client, prefix)
		})
	}
}

// TestRunLimitMismatch uses a prefix with one limit while another holder
// uses another, in every combination of lock and semaphore.
func TestRunLimitMismatch(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)

	cases := []struct {
		held, asked int
		want        []string
	}{
		{1, 3, []string{"in use with -n=1 (a lock)", "this run asks -n=3"}},
		{2, 1, []string{"in use with -n=2", "this run asks -n=1 (a lock)"}},
		{2, 3, []string{"in use with -n=2", "this run asks -n=3"}},
		{3, 2, []string{"in use with -n=3", "this run asks -n=2"}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("held n=%d asked n=%d", tc.held, tc.asked), func(t *testing.T) {
			t.Parallel()
			prefix := uniquePrefix(t)
			if tc.held == 1 {
				holdElsewhere(t, client, prefix, 1)
			} else {
				// One slot is enough: the other side is in use, not full.
				holdOneSlot(t, client, prefix, tc.held)
			}
			dir := t.TempDir()
			res, err := r.Run(context.Background(), shellOpts(t, prefix, tc.asked, "touch "+dir+"/ran"))
			if !errors.Is(err, lockexec.ErrLimitMismatch) {
				t.Fatalf("Run: %v, want ErrLimitMismatch", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), strconv.Quote(prefix)) {
				t.Errorf("error %q does not name the prefix", err)
			}
			if res.Started || fileExists(dir+"/ran") {
				t.Error("the command ran")
			}
			assertNoSessions(t, client, prefix)
		})
	}

	// A key left behind by a holder that crashed still carries its limit.
	t.Run("stale lock key", func(t *testing.T) {
		t.Parallel()
		prefix := uniquePrefix(t)
		key := prefix + "/" + lockexec.LockKeySuffix
		if _, err := client.KV().Put(&api.KVPair{Key: key, Flags: api.LockFlagValue}, nil); err != nil {
			t.Fatal(err)
		}
		_, err := r.Run(context.Background(), shellOpts(t, prefix, 2, "true"))
		if !errors.Is(err, lockexec.ErrLimitMismatch) {
			t.Fatalf("Run: %v, want ErrLimitMismatch", err)
		}
		for _, w := range []string{"-n=1 (a lock)", "no holder", "-n=2", strconv.Quote(key)} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not say %q", err, w)
			}
		}
		assertNoSessions(t, client, prefix)
	})
}

// holdOneSlot holds one slot of a limit-n semaphore elsewhere until the
// test ends.
func holdOneSlot(t *testing.T, c *api.Client, prefix string, n int) {
	t.Helper()
	s, err := c.SemaphoreOpts(&api.SemaphoreOptions{Prefix: prefix, Limit: n, SessionName: "test holder"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(nil); err != nil {
		t.Fatalf("holding a semaphore slot elsewhere: %v", err)
	}
	t.Cleanup(func() { _ = s.Release() })
}

// TestRunAfterLimitChange checks that once a prefix is free again, a run
// may use it with another limit: the lock key is tidied away after use.
func TestRunAfterLimitChange(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	for _, limit := range []int{1, 3, 2, 1} {
		if _, err := r.Run(context.Background(), shellOpts(t, prefix, limit, "true")); err != nil {
			t.Fatalf("Run with -n=%d: %v", limit, err)
		}
	}
	assertClean(t, client, prefix)
}

func TestRunConsulUnreachable(t *testing.T) {
	t.Parallel()
	port, err := devconsul.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := time.Now()
	res, err := lockexec.New(clientFor(t, "127.0.0.1:"+strconv.Itoa(port))).Run(context.Background(), lockexec.Options{
		Prefix:  "unreachable",
		Command: []string{"touch " + dir + "/ran"},
		Shell:   true,
		Logger:  testLogger(t),
	})
	if !errors.Is(err, lockexec.ErrConsulUnreachable) {
		t.Fatalf("Run: %v, want ErrConsulUnreachable", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Run took %s to find Consul unreachable", took)
	}
	if res.Started || res.ExitCode != -1 || fileExists(dir+"/ran") {
		t.Errorf("the command ran: %+v", res)
	}
}

func TestRunInvalidOptions(t *testing.T) {
	t.Parallel()
	srv, requests := countingServer(t)
	r := lockexec.New(clientFor(t, srv.Listener.Addr().String()))
	valid := func() lockexec.Options {
		return lockexec.Options{Prefix: "p", Command: []string{"true"}}
	}
	cases := []struct {
		name   string
		modify func(*lockexec.Options)
	}{
		{"no prefix", func(o *lockexec.Options) { o.Prefix = "" }},
		{"absolute prefix", func(o *lockexec.Options) { o.Prefix = "/p" }},
		{"prefix ending in a slash", func(o *lockexec.Options) { o.Prefix = "p/" }},
		{"prefix with an empty segment", func(o *lockexec.Options) { o.Prefix = "a//b" }},
		{"prefix with a dot segment", func(o *lockexec.Options) { o.Prefix = "a/./b" }},
		{"prefix with a dot-dot segment", func(o *lockexec.Options) { o.Prefix = "a/../b" }},
		{"negative limit", func(o *lockexec.Options) { o.Limit = -1 }},
		{"no command", func(o *lockexec.Options) { o.Command = nil }},
		{"empty command", func(o *lockexec.Options) { o.Command = []string{""} }},
		{"blank command", func(o *lockexec.Options) { o.Command = []string{"  \t"} }},
		{"blank shell command", func(o *lockexec.Options) { o.Command, o.Shell = []string{" ", ""}, true }},
		{"empty argv[0]", func(o *lockexec.Options) { o.Command = []string{"", "x"} }},
		{"negative try", func(o *lockexec.Options) { o.Try = -time.Second }},
		{"negative monitor retries", func(o *lockexec.Options) { o.MonitorRetries = -1 }},
		{"negative monitor retry time", func(o *lockexec.Options) { o.MonitorRetryTime = -time.Second }},
		{"negative session TTL", func(o *lockexec.Options) { o.SessionTTL = -time.Second }},
		{"session TTL below Consul's minimum", func(o *lockexec.Options) { o.SessionTTL = 5 * time.Second }},
		{"session TTL above Consul's maximum", func(o *lockexec.Options) { o.SessionTTL = 25 * time.Hour }},
		{"negative lock delay", func(o *lockexec.Options) { o.LockDelay = -time.Second }},
		{"negative timeout", func(o *lockexec.Options) { o.Timeout = -time.Second }},
		{"negative kill grace", func(o *lockexec.Options) { o.KillGrace = -time.Second }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := valid()
			tc.modify(&opts)
			res, err := r.Run(context.Background(), opts)
			if !errors.Is(err, lockexec.ErrInvalidOptions) {
				t.Fatalf("Run: %v, want ErrInvalidOptions", err)
			}
			if res.Started || res.ExitCode != -1 || res.Session != "" {
				t.Errorf("unexpected result %+v", res)
			}
		})
	}
	t.Run("no client", func(t *testing.T) {
		_, err := lockexec.New(nil).Run(context.Background(), valid())
		if !errors.Is(err, lockexec.ErrInvalidOptions) {
			t.Fatalf("Run: %v, want ErrInvalidOptions", err)
		}
	})
	if n := requests.Load(); n != 0 {
		t.Errorf("invalid options still made %d requests to Consul", n)
	}
}

// TestRunLogs checks the lifecycle lines an operator relies on when
// running with debug logging.
func TestRunLogs(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	var buf syncBuffer
	opts := shellOpts(t, uniquePrefix(t), 1, "true")
	opts.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &buf})
	if _, err := lockexec.New(client).Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"session created", "waiting for the lock", "lock acquired", "command started",
		"command exited", "lock released", "session destroyed"} {
		if !strings.Contains(out, want) {
			t.Errorf("the log has no %q line:\n%s", want, out)
		}
	}
}

// countingServer is a loopback HTTP server standing in for Consul that
// answers nothing useful and counts the requests it gets.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n.Add(1)
		http.Error(w, "not Consul", http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// clientFor is a Consul client for addr.
func clientFor(t *testing.T, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = ""
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRunOnAcquired checks that the hook runs once, with the lock held,
// before the command, and not at all when the lock is never acquired.
func TestRunOnAcquired(t *testing.T) {
	t.Parallel()
	client := testClient(t)
	r := lockexec.New(client)
	prefix := uniquePrefix(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "acquired")

	var calls atomic.Int32
	opts := shellOpts(t, prefix, 1, "test -e "+marker)
	opts.OnAcquired = func() {
		calls.Add(1)
		pair, _, err := client.KV().Get(prefix+"/"+lockexec.LockKeySuffix, nil)
		if err != nil || pair == nil || pair.Session == "" {
			t.Errorf("OnAcquired called without the lock held: %v %v", pair, err)
		}
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			t.Error(err)
		}
	}
	res, err := r.Run(context.Background(), opts)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Run: exit %d, %v (a non-zero exit means the command started before the hook)", res.ExitCode, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnAcquired called %d times, want 1", n)
	}

	holdElsewhere(t, client, prefix, 1)
	opts.Try = 200 * time.Millisecond
	if _, err := r.Run(context.Background(), opts); !errors.Is(err, lockexec.ErrNotAcquired) {
		t.Fatalf("Run: %v, want ErrNotAcquired", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("OnAcquired called without the lock (%d calls)", n)
	}
}
