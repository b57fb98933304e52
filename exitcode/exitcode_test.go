package exitcode

import (
	"errors"
	"fmt"
	"testing"

	"ct-supervise/action"
	"ct-supervise/health"
	"ct-supervise/lockexec"
)

func TestOf(t *testing.T) {
	cases := []struct {
		name string
		res  lockexec.Result
		err  error
		want int
	}{
		{"command's own status", lockexec.Result{ExitCode: 3, Started: true}, nil, 3},
		{"success", lockexec.Result{}, nil, OK},
		{"check failed", lockexec.Result{ExitCode: -1}, fmt.Errorf("%w: nginx -t exited 1", action.ErrCheckFailed), CheckFailed},
		{"unhealthy after success", lockexec.Result{Started: true}, fmt.Errorf("%w after 2m: check web", health.ErrUnhealthy), Unhealthy},
		{"lock lost", lockexec.Result{}, lockexec.ErrLockLost, LockLost},
		{"not acquired", lockexec.Result{}, fmt.Errorf("x: %w", lockexec.ErrNotAcquired), NotAcquired},
		{"interrupted", lockexec.Result{}, lockexec.ErrInterrupted, Interrupted},
		{"bad options", lockexec.Result{}, lockexec.ErrInvalidOptions, Usage},
		{"other", lockexec.Result{}, errors.New("boom"), Internal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Of(tc.res, tc.err); got != tc.want {
				t.Fatalf("Of(%+v, %v) = %d, want %d", tc.res, tc.err, got, tc.want)
			}
		})
	}
	// The new codes collide with none of the others.
	seen := map[int]bool{}
	for _, c := range []int{Usage, ConsulUnreachable, Internal, NotAcquired, LockLost, PermissionDenied, Config,
		Timeout, NotExecutable, NotFound, Interrupted, CheckFailed, Unhealthy} {
		if seen[c] && c != Config {
			t.Errorf("exit code %d used twice", c)
		}
		seen[c] = true
	}
}
