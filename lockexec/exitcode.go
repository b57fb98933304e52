package lockexec

import "errors"

// Exit statuses of `ct-supervise run` other than the child's own. They sit in
// the sysexits(3) range, which reload commands rarely use, so that scripts
// can tell "the command failed" from "ct-supervise could not run it".
const (
	ExitUsage             = 64  // bad flags or arguments (EX_USAGE)
	ExitConsulUnreachable = 69  // Consul could not be reached (EX_UNAVAILABLE)
	ExitInternal          = 70  // any other failure of ct-supervise itself (EX_SOFTWARE)
	ExitNotAcquired       = 75  // lock not acquired within -try (EX_TEMPFAIL)
	ExitLockLost          = 76  // lock lost while the command ran; it was terminated
	ExitPermissionDenied  = 77  // Consul's ACLs refused a request (EX_NOPERM)
	ExitLimitMismatch     = 78  // another holder uses the prefix with another -n (EX_CONFIG)
	ExitTimeout           = 124 // the command ran past -command-timeout, as timeout(1) reports it
	ExitNotExecutable     = 126 // the command exists but cannot be executed, as shells report it
	ExitNotFound          = 127 // the command does not exist, as shells report it
	ExitInterrupted       = 130 // interrupted by a signal before the command finished
)

// ExitConfig is for configuration that cannot work other than a limit
// mismatch, such as Consul settings naming a CA file that cannot be read
// (EX_CONFIG, the same status as ExitLimitMismatch).
const ExitConfig = 78

// ExitStatus maps the outcome of Run onto the status `ct-supervise run`
// exits with: the child's own status when it ran to completion under the
// lock, otherwise the code for the error.
func ExitStatus(res Result, err error) int {
	switch {
	case err == nil:
		return res.ExitCode
	case errors.Is(err, ErrInvalidOptions):
		return ExitUsage
	case errors.Is(err, ErrPermissionDenied):
		return ExitPermissionDenied
	case errors.Is(err, ErrConsulUnreachable):
		return ExitConsulUnreachable
	case errors.Is(err, ErrNotAcquired):
		return ExitNotAcquired
	case errors.Is(err, ErrLockLost):
		return ExitLockLost
	case errors.Is(err, ErrLimitMismatch):
		return ExitLimitMismatch
	case errors.Is(err, ErrCommandNotFound):
		return ExitNotFound
	case errors.Is(err, ErrCommandNotExecutable):
		return ExitNotExecutable
	case errors.Is(err, ErrTimeout):
		return ExitTimeout
	case errors.Is(err, ErrInterrupted):
		if res.Started && res.ExitCode > 0 {
			return res.ExitCode
		}
		return ExitInterrupted
	default:
		// The child may have finished before a release failure; its status
		// still says more than a generic code.
		if res.Started && res.ExitCode != 0 {
			return res.ExitCode
		}
		return ExitInternal
	}
}
