package lockexec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"testing"

	"github.com/hashicorp/consul/api"
)

// TestErrorClasses checks how errors from Consul's api are classed: what a
// waiter rides out, what counts as unreachable, what is a 403.
func TestErrorClasses(t *testing.T) {
	refused := &url.Error{Op: "Get", URL: "http://127.0.0.1:8500/v1/kv/x",
		Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}}
	timedOut := &url.Error{Op: "Get", URL: "http://127.0.0.1:8500/v1/kv/x", Err: context.DeadlineExceeded}
	status := func(code int, body string) error {
		return fmt.Errorf("reading: %w", api.StatusError{Code: code, Body: body})
	}
	cases := []struct {
		name                               string
		err                                error
		transient, leader, unreach, denied bool
	}{
		{"no leader", status(500, "No cluster leader"), true, true, true, false},
		{"server refused", status(500, "rpc error making call: dial tcp 127.0.0.1:8300: connect: connection refused"), true, true, false, false},
		{"text only", errors.New("Unexpected response code: 500 (rpc error making call: No cluster leader)"), true, true, true, false},
		{"other 500", status(500, "something broke"), true, false, false, false},
		{"too many", status(429, "too many"), true, true, false, false},
		{"invalid session", errors.New("Unexpected response code: 500 (rpc error making call: invalid session \"x\")"), false, false, false, false},
		{"agent refused", refused, false, false, true, false},
		{"agent timed out", timedOut, true, false, true, false},
		{"forbidden", status(403, "Permission denied: token lacks permission"), false, false, false, true},
		{"forbidden text", errors.New("Unexpected response code: 403 (ACL not found)"), false, false, false, true},
		{"not found", status(404, "nope"), false, false, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := isTransient(tc.err); got != tc.transient {
				t.Errorf("isTransient = %v, want %v", got, tc.transient)
			}
			if got := isLeaderTrouble(tc.err); got != tc.leader {
				t.Errorf("isLeaderTrouble = %v, want %v", got, tc.leader)
			}
			if got := isUnreachable(tc.err); got != tc.unreach {
				t.Errorf("isUnreachable = %v, want %v", got, tc.unreach)
			}
			if got := isPermissionDenied(tc.err); got != tc.denied {
				t.Errorf("isPermissionDenied = %v, want %v", got, tc.denied)
			}
		})
	}
}
