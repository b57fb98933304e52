package lockexec_test

import (
	"context"
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
		fields := strings.Fields(out.String())
		mask, perr := strconv.ParseUint(fields[len(fields)-1], 16, 64)
		if perr != nil {
			t.Fatalf("parsing %q: %v", out.String(), perr)
		}
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGPIPE} {
			if mask&(1<<(uint(sig)-1)) != 0 {
				t.Errorf("the command started with %v ignored (SigIgn %016x)", sig, mask)
			}
		}
	})
	for _, tc := range signalCases {
		t.Run(tc.sig.String(), func(t *testing.T) {
			checkSignalForwarded(t, r, client, tc)
		})
	}
}
