package lockexec_test

import (
	"context"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"ct-supervise/lockexec"
)

// TestRunUnderIgnoredSignals runs commands while our own process ignores
// SIGHUP and SIGINT, as it does under nohup or as a shell's background job:
// the command must still get default dispositions, so that its shell can
// trap them and a forwarded signal has its effect. Not parallel: it changes
// the dispositions of the whole test process, and puts them back after.
func TestRunUnderIgnoredSignals(t *testing.T) {
	client := testClient(t)
	r := lockexec.New(client)
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT)
	t.Cleanup(func() { signal.Reset(syscall.SIGHUP, syscall.SIGINT) })

	t.Run("dispositions", func(t *testing.T) {
		var out syncBuffer
		opts := lockexec.Options{
			Prefix:  uniquePrefix(t),
			Command: []string{"grep", "^SigIgn:", "/proc/self/status"},
			Stdout:  &out,
			Logger:  testLogger(t),
		}
		res, err := r.Run(context.Background(), opts)
		if err != nil || res.ExitCode != 0 {
			t.Skipf("cannot read /proc/self/status: exit %d, %v", res.ExitCode, err)
		}
		assertNoneIgnored(t, out.String())
	})
	t.Run("Start", func(t *testing.T) {
		// Start alone, as a command run outside any lock would be.
		var out syncBuffer
		cmd := exec.Command("grep", "^SigIgn:", "/proc/self/status")
		cmd.Stdout = &out
		p, err := lockexec.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		<-p.Done()
		if p.ExitCode() != 0 {
			t.Skipf("cannot read /proc/self/status: exit %d", p.ExitCode())
		}
		assertNoneIgnored(t, out.String())
	})
	for _, tc := range signalCases {
		t.Run(tc.sig.String(), func(t *testing.T) {
			checkSignalForwarded(t, r, client, tc)
		})
	}
}

// assertNoneIgnored checks a SigIgn line of /proc/PID/status: none of the
// signals a command is told to stop with may be ignored.
func assertNoneIgnored(t *testing.T, line string) {
	t.Helper()
	fields := strings.Fields(line)
	if len(fields) == 0 {
		t.Fatalf("no SigIgn line in %q", line)
	}
	mask, err := strconv.ParseUint(fields[len(fields)-1], 16, 64)
	if err != nil {
		t.Fatalf("parsing %q: %v", line, err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGPIPE} {
		if mask&(1<<(uint(sig)-1)) != 0 {
			t.Errorf("the command started with %v ignored (SigIgn %016x)", sig, mask)
		}
	}
}
