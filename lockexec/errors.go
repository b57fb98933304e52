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

// isAgentError reports whether err is about our connection to the agent
// rather than an answer from it.
func isAgentError(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr)
}

// answered reports whether err is Consul's answer (an HTTP status other
// than success), so that the request was decided and not applied, as
// opposed to a request that got no answer and may have gone through.
func answered(err error) bool {
	return statusCode(err) != 0 || strings.Contains(err.Error(), "Unexpected response code")
}

// isTimeout reports whether the connection to the agent timed out.
func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
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

// leaderTrouble are the words of Consul's answers while its servers have
// no leader or cannot be reached from the agent: nothing was done.
// (A refused connection in an answer is the agent's to a server.)
var leaderTrouble = []string{"No cluster leader", "No known Consul servers", "leadership lost", "connection refused"}

// isLeaderTrouble reports whether Consul turned the request away because
// of its servers' state (or for too many requests), without acting on it.
func isLeaderTrouble(err error) bool {
	if isAgentError(err) {
		return false
	}
	if isTooManyRequests(err) {
		return true
	}
	msg := err.Error()
	for _, s := range leaderTrouble {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// isTransient reports whether err is one that Consul gives while it
// recovers, and that a waiter should ride out with backoff: too many
// requests (429), a server-side failure (5xx: a leader election, "No
// cluster leader", an RPC to a server that refused the connection), or our
// own deadline on a request that a stalled agent did not answer. A refused
// connection to the local agent is not: nobody is there to wait for. An
// invalid session is not either; the renewer ends the wait then.
func isTransient(err error) bool {
	if isAgentError(err) {
		return errors.Is(err, context.DeadlineExceeded) || isTimeout(err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "nvalid session"):
		return false
	case isLeaderTrouble(err), statusCode(err) >= 500, strings.Contains(msg, "Unexpected response code: 5"):
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// IsTurnedAway reports whether err is Consul's answer that it cannot serve
// us for a moment: a 429 (too many requests or connections), a 5xx such as
// a leader election. Worth waiting out with backoff. An agent that does not
// answer at all is not included: that is Consul unreachable.
func IsTurnedAway(err error) bool {
	return err != nil && answered(err) && isTransient(err)
}

// consulError wraps err from Consul, met while doing what, in the sentinel
// that applies: ErrPermissionDenied for a 403, ErrConsulUnreachable when
// Consul could not serve us.
func consulError(what string, err error) error {
	switch {
	case isPermissionDenied(err):
		return fmt.Errorf("%w: %s: %v", ErrPermissionDenied, what, err)
	case isUnreachable(err) || isTransient(err):
		return fmt.Errorf("%w: %s: %v", ErrConsulUnreachable, what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ClassifyConsulError wraps err, from any Consul call, with the sentinel
// its cause maps to (ErrPermissionDenied, ErrConsulUnreachable), so that
// every subcommand exits with the same code for the same cause. Other
// errors come back as they are.
func ClassifyConsulError(err error) error {
	switch {
	case err == nil, errors.Is(err, ErrPermissionDenied), errors.Is(err, ErrConsulUnreachable):
		return err
	case isPermissionDenied(err):
		return fmt.Errorf("%w: %v", ErrPermissionDenied, err)
	case isUnreachable(err) || isTransient(err):
		return fmt.Errorf("%w: %v", ErrConsulUnreachable, err)
	}
	return err
}
