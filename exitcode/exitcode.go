// Package exitcode maps the outcome of an action onto the status
// ct-supervise exits with (run) or records for it (the worker, shown by
// status). It is the one place where errors become exit codes: lockexec
// knows the lock's errors, the action pipeline adds its own (a failed
// pre-flight check, a service that did not become healthy), and both the
// CLI and the worker ask here.
package exitcode

import (
	"errors"

	"ct-supervise/action"
	"ct-supervise/health"
	"ct-supervise/lockexec"
)

// Exit statuses other than the command's own. They sit in the sysexits(3)
// range, which reload commands rarely use, so that scripts can tell "the
// command failed" from "ct-supervise could not run it safely". The lock's
// are lockexec's, repeated here so that callers need one package.
const (
	OK                = 0
	Usage             = lockexec.ExitUsage             // 64 bad flags or arguments
	ConsulUnreachable = lockexec.ExitConsulUnreachable // 69 Consul could not be reached
	Internal          = lockexec.ExitInternal          // 70 any other failure of ct-supervise
	NotAcquired       = lockexec.ExitNotAcquired       // 75 lock not acquired within -try
	LockLost          = lockexec.ExitLockLost          // 76 lock lost; the step under it was stopped
	PermissionDenied  = lockexec.ExitPermissionDenied  // 77 Consul's ACLs refused a request
	Config            = lockexec.ExitConfig            // 78 -n mismatch, bad Consul settings
	Timeout           = lockexec.ExitTimeout           // 124 the command ran past -command-timeout
	NotExecutable     = lockexec.ExitNotExecutable     // 126 the command cannot be executed
	NotFound          = lockexec.ExitNotFound          // 127 the command does not exist
	Interrupted       = lockexec.ExitInterrupted       // 130 interrupted before the command finished

	// CheckFailed is a -check that exited non-zero: the new config is bad,
	// nothing was locked and the command did not run (EX_DATAERR).
	CheckFailed = 65

	// Unhealthy is a command that succeeded but whose service did not pass
	// its checks within -health-timeout. Just past the sysexits range:
	// none of its codes means "the service is down".
	Unhealthy = 79
)

// Of returns the exit status of an action run: the command's own status
// when it ran to completion (and passed its gate), otherwise the code for
// err.
func Of(res lockexec.Result, err error) int {
	switch {
	case err == nil:
		return res.ExitCode
	case errors.Is(err, action.ErrCheckFailed):
		return CheckFailed
	case errors.Is(err, health.ErrUnhealthy):
		return Unhealthy
	}
	return lockexec.ExitStatus(res, err)
}
