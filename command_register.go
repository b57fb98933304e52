package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
)

const registerUsage = `Usage: ct-supervise register [flags] COMMAND
       ct-supervise register [flags] -policy=JSON COMMAND
       ct-supervise register [-allow-data-commands] -json=JSON

Declares an action for 'ct-supervise exec' to run, from a template:

  {{ plugin "ct-supervise" "register" "-n=2" "-name=nginx" "nginx -s reload" -}}
  {{ plugin "ct-supervise" "register" "-name=nginx" (printf "-policy=%s" (key "ops/supervise/nginx")) "nginx -s reload" -}}

Prints nothing (unless -output), never contacts Consul. Commands are code,
KV is data:
  - flags and the command written in the template are code: a bad one, or
    flags without a command, fails the render;
  - -policy=JSON is data: policy merged onto the template's command. A bad
    value keeps the last good declaration, warns on stderr, shows in
    'status' and exits 0 (-strict: fails). An empty one (data not fetched
    yet) keeps the policy last stored, or none: the template's values;
  - -json=JSON is data: a whole declaration, "name" required; "command"
    only with -allow-data-commands. Empty: nothing to do, exit 0.
Write -policy and -json with their value as ONE argument, as above:
consul-template drops an empty argument, so a separate value would swallow
the next argument while the data is missing. A lone JSON object argument
is the deprecated spelling of -json.

JSON keys: name, command, n, prefix, try (alias timeout), monitor_retry,
shell, command_timeout, max_attempts, pass_token, check, wait_healthy,
health_timeout, health_settle, maint, drain, hold, splay, on_failure,
unless_critical, version. command, check and pass_token only with
-allow-data-commands. Values may be strings ("2"), not booleans where a
number or a string is expected.

Flags:
`

// registerCommand is `ct-supervise register`, called by consul-template's
// plugin function on every render pass. It must be quick, idempotent, print
// nothing to the rendered file, and never fail the render over data.
func (c *CLI) registerCommand(args []string) int {
	const cmd = "register"
	fs := newFlagSet(cmd)
	decl := plugin.BindArgs(fs)
	output := fs.String("output", "", "print this string (and nothing else) to standard output on success, e.g. a marker comment for the rendered file")
	strict := fs.Bool("strict", false, "fail (exit non-zero) on invalid data (-json, -policy) instead of keeping the last good declaration")
	stateDir := stateDirFlag(fs)
	verbose := fs.Bool("verbose", false, "debug logging on standard error")
	err := decl.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return c.printUsage(fs, registerUsage)
	}
	if err != nil {
		return c.usageError(cmd, err)
	}
	req, err := decl.Resolve()
	if err != nil {
		return c.usageError(cmd, err)
	}
	log := newLogger(cmd, *verbose, c.stderr)
	ok := func() int {
		if *output != "" {
			fmt.Fprint(c.stdout, *output)
		}
		return ExitOK
	}
	if req.Source == plugin.SourceNone {
		log.Debug("no declaration given (data not available yet?); nothing to do")
		return ok()
	}

	store, err := openStore(*stateDir)
	if errors.Is(err, state.ErrNoDefaultStateDir) {
		// Not the render's fault: say so, let it go on; exec repeats it
		// where consul-template's log shows it.
		c.errorf(cmd, ExitOK, "warning: %v; the declaration is not registered", err)
		return ok()
	}
	if storageFault(err) {
		c.errorf(cmd, ExitOK, "error: %v; the declaration is not registered", err)
		return ok()
	}
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	d, name, err := c.declaration(cmd, store, req)
	if err != nil {
		return c.rejectData(cmd, store, name, err, *strict, ok)
	}
	changed, err := store.Register(d, time.Now())
	if storageFault(err) {
		c.errorf(cmd, ExitOK, "error: %v; the declaration is not registered, the previous state is kept", err)
		return ok()
	}
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	log.Debug("registered", "name", d.Name, "changed", changed, "prefix", d.Prefix, "n", d.Limit)
	c.resumeQueue(store, *verbose, log)
	return ok()
}

// declaration makes the declaration to register from a resolved request.
// Its errors are the data's: name is the action they belong to ("" if the
// data did not say).
func (c *CLI) declaration(cmd string, store *state.Store, req plugin.Request) (d plugin.Declaration, name string, err error) {
	switch req.Source {
	case plugin.SourceData:
		d, name, err = plugin.ParseData(req.Data, req.AllowDataCommands)
		if err == nil && req.Bare {
			// Once, and only when accepted: a rejection's own warning
			// is the line that matters then.
			c.errorf(cmd, ExitOK, "warning: a bare JSON declaration is deprecated; write it as one -json argument: (printf \"-json=%%s\" (key \"...\"))")
		}
		return d, name, err
	case plugin.SourcePolicy:
		name = req.Template.Name
		policy := req.Data
		if policy == "" {
			// Missing data: consul-template has not fetched the key yet
			// (the first pass after every start), or it does not exist.
			// The two look the same, so the last good policy stays; a
			// policy of {} clears it.
			policy = storedPolicy(store, name)
		}
		d, err = req.Template.WithPolicy(policy, req.AllowDataCommands)
		return d, name, err
	default:
		return req.Template, req.Template.Name, nil
	}
}

// storedPolicy returns the policy merged into the stored declaration of
// name, "" if there is none or the state cannot be read (Register reports
// that).
func storedPolicy(store *state.Store, name string) string {
	st, err := store.Load()
	if err != nil {
		return ""
	}
	if a := st.Actions[name]; a != nil {
		return a.Declaration.Policy
	}
	return ""
}

// resumeQueue starts a worker for requests that a killed worker left queued
// (consul-template's service restarted, the machine rebooted). Without it
// they would wait for the next exec, and a restarted consul-template whose
// renders change nothing runs none. Failing here must not fail the render.
func (c *CLI) resumeQueue(store *state.Store, verbose bool, log hclog.Logger) {
	if n, err := store.QueueLen(); err != nil || n == 0 {
		return
	}
	if err := c.startWorker(store, verbose); err != nil {
		log.Warn("could not start a worker for the queued actions", "error", err)
	}
}

// rejectData handles an invalid declaration that came as data: keep the last
// good declaration, record the problem for `status`, warn, and let the
// render go on, unless strict.
func (c *CLI) rejectData(cmd string, store *state.Store, name string, err error, strict bool, ok func() int) int {
	if news, rerr := store.RecordRejection(name, err.Error(), time.Now()); rerr != nil {
		c.errorf(cmd, ExitError, "recording the rejected declaration: %v", rerr)
	} else if news {
		appendWorkerLog(store, cmd, "rejected a declaration from data; the last good one stays in force", "name", name, "error", err)
	}
	if strict {
		return c.errorf(cmd, lockexec.ExitUsage, "%v", err)
	}
	label := "declaration"
	if name != "" {
		label = fmt.Sprintf("declaration %q", name)
	}
	c.errorf(cmd, ExitOK, "warning: ignoring %s from data, keeping the last good one: %v", label, err)
	return ok()
}
