package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
)

const registerUsage = `Usage: ct-supervise register [flags] COMMAND
       ct-supervise register [-strict] [-output STRING] '{"name": "...", "command": "...", ...}'

Declares an action for 'ct-supervise exec' to run, from a template:

  {{ plugin "ct-supervise" "register" "-n=2" "-name=nginx" "nginx -s reload" }}
  {{ plugin "ct-supervise" "register" (key "ops/supervise/nginx") }}

Prints nothing (unless -output), never contacts Consul. Three cases:
  - flags written in the template are code: a bad one fails the render;
  - a JSON object is data (from KV): a bad one (or one that is not an
    object: an array, a string, several lines) keeps the last good
    declaration, warns on stderr, shows in 'status', and exits 0 (-strict: fails);
  - no declaration at all (data not there yet): nothing to do, exit 0.

JSON keys: name (required), command, n, prefix, try, monitor_retry, shell,
timeout, max_attempts.

Flags:
`

// registerCommand is `ct-supervise register`, called by consul-template's
// plugin function on every render pass. It must be quick, idempotent, print
// nothing to the rendered file, and never fail the render over data.
func (c *CLI) registerCommand(args []string) int {
	const cmd = "register"
	fs := newFlagSet(cmd)
	d := plugin.DefaultDeclaration()
	d.BindFlags(fs)
	d.BindQueueFlags(fs)
	output := fs.String("output", "", "print this string (and nothing else) to standard output on success, e.g. a marker comment for the rendered file")
	strict := fs.Bool("strict", false, "fail (exit non-zero) on an invalid JSON declaration instead of keeping the last good one")
	stateDir := stateDirFlag(fs)
	verbose := fs.Bool("verbose", false, "debug logging on standard error")
	if code, done := c.parseFlags(fs, cmd, registerUsage, args); done {
		return code
	}
	log := newLogger(cmd, *verbose, c.stderr)
	rest := fs.Args()

	ok := func() int {
		if *output != "" {
			fmt.Fprint(c.stdout, *output)
		}
		return ExitOK
	}

	switch {
	case len(rest) == 0 || (len(rest) == 1 && strings.TrimSpace(rest[0]) == ""):
		// consul-template drops empty arguments, so a declaration read from
		// KV that is not there yet arrives as nothing at all.
		log.Debug("no declaration given (data not available yet?); nothing to do")
		return ok()

	case len(rest) == 1 && looksLikeData(rest[0]):
		if given := declarationFlagsGiven(fs); len(given) > 0 {
			return c.usageError(cmd, fmt.Errorf("give either flags (%s) or one JSON object, not both", strings.Join(given, ", ")))
		}
		decl, name, err := parseDataDeclaration(rest[0])
		if err != nil {
			return c.rejectData(cmd, *stateDir, name, err, *strict, ok)
		}
		d = decl

	default:
		d.Command = rest
		if err := d.Finish(); err != nil {
			return c.usageError(cmd, err)
		}
	}

	store, err := openStore(*stateDir)
	if errors.Is(err, state.ErrNoDefaultStateDir) {
		// Not the render's fault: say so, let it go on; exec repeats it
		// where consul-template's log shows it.
		c.errorf(cmd, ExitOK, "warning: %v; %q not registered", err, d.Name)
		return ok()
	}
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	changed, err := store.Register(d, time.Now())
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	log.Debug("registered", "name", d.Name, "changed", changed, "prefix", d.Prefix, "n", d.Limit)
	c.resumeQueue(store, *verbose, log)
	return ok()
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
func (c *CLI) rejectData(cmd, stateDir, name string, err error, strict bool, ok func() int) int {
	if store, oerr := openStore(stateDir); oerr == nil {
		defer store.Close()
		if news, rerr := store.RecordRejection(name, err.Error(), time.Now()); rerr != nil {
			c.errorf(cmd, ExitError, "recording the rejected declaration: %v", rerr)
		} else if news {
			appendWorkerLog(store, cmd, "rejected a declaration from data; the last good one stays in force", "name", name, "error", err)
		}
	} else {
		c.errorf(cmd, ExitError, "%v", oerr)
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

// parseDataDeclaration decodes a JSON declaration. Data has no generated
// name: a name is what ties it to the last good declaration, so a missing
// one is an error. The name is returned whenever it could be read, even
// with an error, so the error is recorded against it.
func parseDataDeclaration(s string) (plugin.Declaration, string, error) {
	var raw map[string]any
	name := ""
	if json.Unmarshal([]byte(s), &raw) == nil {
		if n, ok := raw["name"].(string); ok {
			name = strings.TrimSpace(n)
		}
	}
	d, err := plugin.ParseJSON(s)
	if err != nil {
		return d, name, err
	}
	if name == "" {
		return d, "", fmt.Errorf("%w: a JSON declaration needs a \"name\"", plugin.ErrInvalidDeclaration)
	}
	return d, name, nil
}

// looksLikeData tells a declaration that came as data (a JSON object, or
// something else read from KV that was meant to be one) from a command
// line written in the template. A JSON array or string, or several lines,
// is no command anyone writes inline: running it on every node as a shell
// command would be the worst reading of a bad KV value.
func looksLikeData(arg string) bool {
	a := strings.TrimSpace(arg)
	return strings.HasPrefix(a, "{") || strings.HasPrefix(a, "[") || strings.HasPrefix(a, `"`) || strings.Contains(a, "\n")
}

// declarationFlagsGiven lists the declaration flags set on the command line
// (as opposed to register's own).
func declarationFlagsGiven(fs *flag.FlagSet) []string {
	own := map[string]bool{"output": true, "strict": true, "state-dir": true, "verbose": true}
	var given []string
	fs.Visit(func(f *flag.Flag) {
		if !own[f.Name] {
			given = append(given, "-"+f.Name)
		}
	})
	return given
}
