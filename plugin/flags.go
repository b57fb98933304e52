package plugin

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// errDurationSyntax is what a duration that time.ParseDuration refuses
// gets, in a flag and in JSON alike: the flag package's own "parse error"
// does not say what it wants.
var errDurationSyntax = errors.New("expected a duration with a unit, such as 500ms, 10m or 1h30m")

// parseDuration parses a duration flag or JSON value.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, errDurationSyntax
	}
	return d, nil
}

// durationFlag is a flag.Value for a duration with errDurationSyntax as
// its error. Two flags may share one (an alias).
type durationFlag struct{ p *time.Duration }

func (f durationFlag) Set(s string) error {
	d, err := parseDuration(s)
	if err != nil {
		return err
	}
	*f.p = d
	return nil
}

func (f durationFlag) String() string {
	if f.p == nil {
		return "0s"
	}
	return f.p.String()
}

// CheckFlagUse reports the mistakes a parsed command line can hide from the
// flag package, as a one-line error naming the fix:
//   - a boolean flag followed by a separate "true" or "false", as in
//     `-shell false 'echo x'`: Go's flag package reads a boolean only from
//     "-shell=false", so "false" would be run as the command;
//   - -try and its alias -timeout both given.
//
// args is what fs parsed.
func CheckFlagUse(fs *flag.FlagSet, args []string) error {
	if rest := fs.Args(); len(rest) > 0 && (rest[0] == "true" || rest[0] == "false") {
		if i := len(args) - len(rest); i > 0 && i <= len(args) {
			prev := args[i-1]
			name := strings.TrimLeft(prev, "-")
			if strings.HasPrefix(prev, "-") && prev != "--" && !strings.Contains(prev, "=") && isBoolFlag(fs, name) {
				return fmt.Errorf("%s %s: a boolean flag takes its value after \"=\"; write -%s=%s (as written, %q would run as the command)",
					prev, rest[0], name, rest[0], rest[0])
			}
		}
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if given["try"] && given[timeoutAlias] {
		return errors.New("-timeout is an alias of -try (as in consul lock): give one of them; the command's own limit is -command-timeout")
	}
	return nil
}

// isBoolFlag reports whether fs defines name as a boolean flag.
func isBoolFlag(fs *flag.FlagSet, name string) bool {
	f := fs.Lookup(name)
	if f == nil {
		return false
	}
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
