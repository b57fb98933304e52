package lockexec

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/internal/shell"
)

// Consul refuses session TTLs outside this range; checking here turns an
// opaque 500 from the agent into a usage error before anything is created.
const (
	minSessionTTL = 10 * time.Second
	maxSessionTTL = 24 * time.Hour
)

// invalid is an error wrapping ErrInvalidOptions.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidOptions, fmt.Sprintf(format, args...))
}

// validate reports the first problem with opts as an error wrapping
// ErrInvalidOptions. It never talks to Consul.
func (o *Options) validate() error {
	if err := o.validateLock(); err != nil {
		return err
	}
	return o.validateCommand()
}

// validateLock checks what Acquire uses.
func (o *Options) validateLock() error {
	switch {
	case o.Prefix == "":
		return invalid("the lock prefix is required")
	case strings.HasPrefix(o.Prefix, "/"):
		return invalid("the lock prefix %q must not start with /", o.Prefix)
	case !CleanPrefix(o.Prefix):
		// Consul's api and `consul lock` clean the path they build keys
		// from (a semaphore's keys, for one), and we do not: holders that
		// spell one prefix differently would not exclude each other.
		return invalid("the lock prefix %q must not end with / or contain empty, . or .. segments", o.Prefix)
	case o.Limit < 0:
		return invalid("the holders limit must not be negative, got %d", o.Limit)
	case o.MonitorRetries < 0:
		return invalid("monitor retries must not be negative, got %d", o.MonitorRetries)
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"try", o.Try},
		{"monitor retry time", o.MonitorRetryTime},
		{"session TTL", o.SessionTTL},
		{"lock delay", o.LockDelay},
		{"kill grace", o.KillGrace},
	}
	for _, d := range durations {
		if d.d < 0 {
			return invalid("the %s must not be negative, got %s", d.name, d.d)
		}
	}
	if o.SessionTTL != 0 && (o.SessionTTL < minSessionTTL || o.SessionTTL > maxSessionTTL) {
		return invalid("the session TTL must be between %s and %s, got %s", minSessionTTL, maxSessionTTL, o.SessionTTL)
	}
	if slack := fenceSlack(o.LockDelay, o.killGrace()); slack < minFenceSlack {
		return invalid("the lock delay %s is too short to stop the command in time: it must exceed the kill grace (at most %s) by at least %s",
			o.LockDelay, maxFenceKillGrace, fenceMargin+minFenceSlack)
	}
	return nil
}

// killGrace is KillGrace or its default.
func (o *Options) killGrace() time.Duration {
	if o.KillGrace == 0 {
		return DefaultKillGrace
	}
	return o.KillGrace
}

// validateCommand checks what RunCommand uses.
func (o *Options) validateCommand() error {
	if o.Timeout < 0 {
		return invalid("the timeout must not be negative, got %s", o.Timeout)
	}
	if o.KillGrace < 0 {
		return invalid("the kill grace must not be negative, got %s", o.KillGrace)
	}
	if len(o.Command) == 0 {
		return invalid("a command is required")
	}
	if argv := o.argv(); len(argv) == 0 || argv[0] == "" {
		return invalid("the command %q is empty", o.Command)
	}
	return nil
}

// CleanPrefix reports whether prefix is a relative path that path.Clean
// would leave alone: no empty, "." or ".." segment, so that no two
// spellings name one lock. Declarations are checked with it too, so that
// a prefix accepted when a template registers it is never refused later.
func CleanPrefix(prefix string) bool {
	for _, seg := range strings.Split(prefix, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// withDefaults returns a copy of o with every zero field that has a default
// filled in. It assumes o is valid.
func (o Options) withDefaults() Options {
	if o.Limit == 0 {
		o.Limit = DefaultLimit
	}
	if o.SessionName == "" {
		o.SessionName = "ct-supervise " + o.Prefix
	}
	if o.MonitorRetryTime == 0 {
		o.MonitorRetryTime = DefaultMonitorRetryTime
	}
	if o.SessionTTL == 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	if o.KillGrace == 0 {
		o.KillGrace = DefaultKillGrace
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	return o
}

// argv is the command line to execute. One element is a command line:
// with Shell it is /bin/sh's script as written, without it is split on
// white space (no quoting, as documented). Several elements are an
// argument vector, executed exactly as given: without Shell directly, with
// Shell as a script of the elements each quoted, so that no element (from
// a JSON array in KV, say) is ever read as shell syntax. A blank command,
// or an argument vector whose program is blank, gives nil.
func (o *Options) argv() []string {
	switch {
	case len(o.Command) == 0:
		return nil
	case len(o.Command) == 1 && strings.TrimSpace(o.Command[0]) == "":
		return nil
	case len(o.Command) == 1 && o.Shell:
		return []string{"/bin/sh", "-c", o.Command[0]}
	case len(o.Command) == 1:
		return strings.Fields(o.Command[0])
	case strings.TrimSpace(o.Command[0]) == "":
		return nil
	case o.Shell:
		quoted := make([]string, len(o.Command))
		for i, c := range o.Command {
			quoted[i] = shell.Quote(c)
		}
		return []string{"/bin/sh", "-c", strings.Join(quoted, " ")}
	default:
		return o.Command
	}
}

// lockKey is the key a lock holds and a semaphore keeps its state in.
func (o *Options) lockKey() string {
	return o.Prefix + "/" + LockKeySuffix
}

// Argv is the command line Options.Command and Options.Shell run as: the
// same rules for every command ct-supervise starts (a pre-flight check
// included).
func (o Options) Argv() []string { return o.argv() }

// beforeTake is BeforeTake, or a no-op when it is nil.
func (o *Options) beforeTake() func() {
	if o.BeforeTake == nil {
		return func() {}
	}
	return o.BeforeTake
}
