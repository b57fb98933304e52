package lockexec

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/hashicorp/consul/api"
)

// statusCode is the HTTP status of an error the api built from Consul's
// answer, or 0.
func statusCode(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	var sep *api.StatusError
	if errors.As(err, &sep) {
		return sep.Code
	}
	return 0
}

// isTooManyRequests reports whether Consul turned us away for having too
// many connections or requests: that passes, so it is worth waiting out.
func isTooManyRequests(err error) bool {
	return statusCode(err) == http.StatusTooManyRequests
}

// isPermissionDenied reports whether Consul's ACLs refused the request.
// Some api calls keep only the text of the answer, so the text counts too.
func isPermissionDenied(err error) bool {
	if statusCode(err) == http.StatusForbidden {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "Unexpected response code: 403") || strings.Contains(msg, "Permission denied")
}

// isUnreachable reports whether err means Consul could not be reached or
// could not serve us at all, as opposed to refusing what we asked.
func isUnreachable(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// A reachable agent without servers or a leader cannot grant a session
	// or a lock either.
	msg := err.Error()
	return strings.Contains(msg, "No cluster leader") || strings.Contains(msg, "No known Consul servers")
}

// isTransient reports whether err is one that Consul gives while it
// recovers, and that a waiter should ride out with backoff: too many
// requests (429), a server-side failure (5xx: a leader election, "No
// cluster leader", an RPC to a server that refused the connection), or our
// own deadline on a request that a stalled agent did not answer. A refused
// connection to the local agent is not: nobody is there to wait for. An
// invalid session is not either; the renewer ends the wait then.
func isTransient(err error) bool {
	if isTooManyRequests(err) {
		return true
	}
	msg := err.Error()
	if strings.Contains(msg, "nvalid session") {
		return false
	}
	if code := statusCode(err); code >= 500 {
		return true
	}
	for _, s := range []string{"Unexpected response code: 5", "No cluster leader", "No known Consul servers", "rpc error"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// ClassifyConsulError wraps err, from any Consul call, with the sentinel
// its cause maps to (ErrPermissionDenied, ErrConsulUnreachable), so that
// every subcommand exits with the same code for the same cause. Other
// errors come back as they are.
func ClassifyConsulError(err error) error {
	switch {
	case err == nil:
		return nil
	case isPermissionDenied(err):
		return fmt.Errorf("%w: %v", ErrPermissionDenied, err)
	case isUnreachable(err), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", ErrConsulUnreachable, err)
	}
	return err
}
