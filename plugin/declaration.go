// Package plugin is what a template declares through consul-template's
// `plugin` function: the action declaration, its flags and its JSON form.
// It touches neither files nor Consul; the state directory that keeps
// declarations between renders is package state.
package plugin

import (
	"errors"
	"os"
	"slices"
	"strings"
	"time"

	"ct-supervise/lockexec"
)

// Defaults for a declaration's fields, as `ct-supervise run` uses them too.
const (
	// DefaultPrefixRoot is the KV folder under which default lock prefixes
	// are made: DefaultPrefixRoot + Name.
	DefaultPrefixRoot = "ct-supervise/"

	// DefaultMaxAttempts is how many times the worker tries a failing action
	// before it marks it failed.
	DefaultMaxAttempts = 5

	// MaxNameLength bounds a declaration name (it becomes a file-safe key
	// and part of the lock prefix).
	MaxNameLength = 64
)

// ErrInvalidDeclaration wraps every validation or parse failure of a
// declaration, so callers can tell bad input from I/O trouble.
var ErrInvalidDeclaration = errors.New("invalid declaration")

// Declaration is one action as a template declares it: what to run and the
// rollout policy to run it under. The JSON form uses the mapstructure keys.
type Declaration struct {
	// Name identifies the action in the state directory and in `exec NAME`.
	// Empty means one generated from Command (see GenerateName).
	Name string `mapstructure:"name" json:"name"`

	// Command is what to run. One element is a command line; several are an
	// argument vector. Required.
	Command []string `mapstructure:"command" json:"command"`

	// Limit is -n, the number of nodes that may run the action at once.
	// Must be at least 1 (DefaultDeclaration sets 1).
	Limit int `mapstructure:"n" json:"n"`

	// Prefix is the KV prefix of the lock. Empty means DefaultPrefixRoot +
	// Name.
	Prefix string `mapstructure:"prefix" json:"prefix"`

	// Try bounds the wait for the lock. Zero waits forever. -timeout, and
	// the JSON key "timeout", are its aliases, as in `consul lock`.
	Try time.Duration `mapstructure:"try" json:"try"`

	// MonitorRetry is -monitor-retry. DefaultDeclaration sets
	// lockexec.DefaultMonitorRetries; zero disables retrying.
	MonitorRetry int `mapstructure:"monitor_retry" json:"monitor_retry"`

	// Shell runs Command through /bin/sh -c (DefaultDeclaration sets true).
	Shell bool `mapstructure:"shell" json:"shell"`

	// CommandTimeout kills the command if it runs longer (consul-template's
	// own name for its command's limit). Zero means no limit.
	CommandTimeout time.Duration `mapstructure:"command_timeout" json:"command_timeout"`

	// MaxAttempts is how many times the worker tries the action before
	// marking it failed. DefaultDeclaration sets DefaultMaxAttempts.
	MaxAttempts int `mapstructure:"max_attempts" json:"max_attempts"`

	// Policy is the -policy data merged onto the template's own
	// declaration, compacted; empty when none was. It is kept so that a
	// render pass whose data is missing (consul-template has not fetched
	// the key yet) re-applies the last good policy instead of falling back
	// to the template's values for a moment. Data cannot set it.
	Policy string `mapstructure:"-" json:"policy,omitempty"`

	// PassToken leaves the Consul ACL token variables (ConsulTokenEnv) in
	// the command's environment. False removes them: a reload that drops
	// privileges must not be able to read ct-supervise's token.
	PassToken bool `mapstructure:"pass_token" json:"pass_token,omitempty"`
}

// ConsulTokenEnv are the environment variables that carry Consul
// credentials, which a command gets only with PassToken.
var ConsulTokenEnv = []string{"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_AUTH", "CONSUL_TOKEN"}

// CommandEnv returns environ for the command: without ConsulTokenEnv
// unless passToken.
func CommandEnv(environ []string, passToken bool) []string {
	if passToken {
		return environ
	}
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(ConsulTokenEnv, name) {
			out = append(out, kv)
		}
	}
	return out
}

// LockOptions maps the declaration onto the lock runner's options. The
// caller adds I/O, signals and logging.
func (d Declaration) LockOptions() lockexec.Options {
	return lockexec.Options{
		Prefix:         d.Prefix,
		Limit:          d.Limit,
		SessionName:    "ct-supervise " + d.Name,
		Try:            d.Try,
		MonitorRetries: d.MonitorRetry,
		Command:        d.Command,
		Shell:          d.Shell,
		Timeout:        d.CommandTimeout,
		Env:            CommandEnv(os.Environ(), d.PassToken),
	}
}
