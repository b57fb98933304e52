package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"os/user"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"ct-supervise/exitcode"
	"ct-supervise/fleet"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
)

// fleetTimeout bounds pause, resume and one read of rollout: an operator
// waiting on a dead Consul gets an answer, not a hang.
const fleetTimeout = 10 * time.Second

const pauseUsage = `Usage: ct-supervise pause [flags] NAME
       ct-supervise pause [flags] -all

Stops new starts of the action NAME on every node (with -all: of every
action) until 'ct-supervise resume'. Actions already running finish.

Flags:
`

const resumeUsage = `Usage: ct-supervise resume [flags] NAME
       ct-supervise resume [flags] -all

Lifts the pause of the action NAME and the halt a failing node set, so that
the rollout goes on (with -all: lifts the pause of every action).

Flags:
`

const rolloutUsage = `Usage: ct-supervise rollout [flags] NAME

Shows where the rollout of the action NAME stands on every node: each node's
phase, the version it applied and its last result, the halt and the pause,
and a one-line summary. -watch redraws on every change.

Flags:
`

// fleetFlags are the flags pause, resume and rollout share.
type fleetFlags struct {
	consul   consulFlags
	prefix   string
	stateDir *string
	all      bool
}

func (f *fleetFlags) bind(fs *flag.FlagSet, all bool) {
	f.consul.bind(fs)
	fs.StringVar(&f.prefix, "prefix", "", "the action's lock prefix (default: the declaration's in the state directory, else \""+plugin.DefaultPrefixRoot+"\" + NAME)")
	f.stateDir = stateDirFlag(fs)
	if all {
		fs.BoolVar(&f.all, "all", false, "every action")
	}
}

// target parses the NAME argument (none with -all) and returns the fleet
// records to act on.
func (f *fleetFlags) target(args []string) (name string, fl *fleet.Fleet, prefix string, err error) {
	switch {
	case f.all && len(args) > 0:
		return "", nil, "", fmt.Errorf("give either -all or a NAME, not both")
	case f.all:
		name = ""
	case len(args) != 1:
		return "", nil, "", fmt.Errorf("expected one action NAME, got %d arguments", len(args))
	default:
		name = args[0]
		if err := plugin.CheckName(name); err != nil {
			return "", nil, "", err
		}
	}
	client, err := f.consul.client()
	if err != nil {
		return "", nil, "", err
	}
	prefix = f.prefix
	if prefix == "" {
		prefix = f.declaredPrefix(name)
	}
	return name, fleet.New(client, prefix), prefix, nil
}

// fleetTarget is what pause, resume and rollout act on, once parsed.
type fleetTarget struct {
	name   string // "" with -all
	prefix string
	fleet  *fleet.Fleet
	all    bool
}

// parseFleet parses a fleet subcommand's flags (the shared ones, with -all
// when all, and those bind adds) and its NAME. done reports that the
// caller should return code.
func (c *CLI) parseFleet(cmd, usage string, all bool, args []string, bind func(*flag.FlagSet)) (t fleetTarget, code int, done bool) {
	fs := newFlagSet(cmd)
	var ff fleetFlags
	ff.bind(fs, all)
	if bind != nil {
		bind(fs)
	}
	names, code, done := c.parseFleetArgs(fs, cmd, usage, args)
	if done {
		return t, code, true
	}
	name, fl, prefix, err := ff.target(names)
	if err != nil {
		return t, c.usageError(cmd, err), true
	}
	return fleetTarget{name: name, prefix: prefix, fleet: fl, all: ff.all}, 0, false
}

// parseFleetArgs parses flags written before or after NAME, as operators
// type them (`pause web -reason "db migration"`), and returns the
// arguments that are not flags.
func (c *CLI) parseFleetArgs(fs *flag.FlagSet, cmd, usage string, args []string) (names []string, code int, done bool) {
	for {
		if code, done := c.parseFlags(fs, cmd, usage, args); done {
			return nil, code, true
		}
		if fs.NArg() == 0 {
			return names, 0, false
		}
		names = append(names, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// declaredPrefix is the prefix the local state directory's declaration of
// name uses, or the default one.
func (f *fleetFlags) declaredPrefix(name string) string {
	if store, err := readStore(*f.stateDir); err == nil {
		defer store.Close()
		if st, err := store.Load(); err == nil {
			if a := st.Actions[name]; a != nil && a.Declaration.Prefix != "" {
				return a.Declaration.Prefix
			}
		}
	}
	return plugin.DefaultPrefixRoot + name
}

// operator names who sets a pause: user@host.
func operator() string {
	who := "unknown"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	if host, err := os.Hostname(); err == nil {
		who += "@" + host
	}
	return who
}

// consulFailure reports a failed Consul call with the exit code its cause
// maps to.
func (c *CLI) consulFailure(cmd string, err error) int {
	err = lockexec.ClassifyConsulError(err)
	return c.errorf(cmd, exitcode.Of(lockexec.Result{}, err), "%v", err)
}

// pauseCommand is `ct-supervise pause`.
func (c *CLI) pauseCommand(args []string) int {
	const cmd = "pause"
	var reason *string
	t, code, done := c.parseFleet(cmd, pauseUsage, true, args, func(fs *flag.FlagSet) {
		reason = fs.String("reason", "", "why, shown by status and rollout on every node")
	})
	if done {
		return code
	}
	name, fl, prefix := t.name, t.fleet, t.prefix
	ctx, cancel := context.WithTimeout(context.Background(), fleetTimeout)
	defer cancel()
	p := fleet.Pause{By: operator(), Reason: *reason, At: time.Now().UTC(), Global: t.all}
	if err := fl.SetPause(ctx, p); err != nil {
		return c.consulFailure(cmd, err)
	}
	if t.all {
		fmt.Fprintf(c.stdout, "paused every action (%s); 'ct-supervise resume -all' lifts it\n", fleet.GlobalPauseKey)
	} else {
		fmt.Fprintf(c.stdout, "paused %q (%s%s); 'ct-supervise resume %s' lifts it\n", name, prefix, fleet.Suffix, name)
	}
	return ExitOK
}

// resumeCommand is `ct-supervise resume`.
func (c *CLI) resumeCommand(args []string) int {
	const cmd = "resume"
	t, code, done := c.parseFleet(cmd, resumeUsage, true, args, nil)
	if done {
		return code
	}
	name, fl, prefix := t.name, t.fleet, t.prefix
	ctx, cancel := context.WithTimeout(context.Background(), fleetTimeout)
	defer cancel()
	if t.all {
		ok, err := fl.ClearPause(ctx, true)
		if err != nil {
			return c.consulFailure(cmd, err)
		}
		fmt.Fprintln(c.stdout, map[bool]string{true: "resumed every action", false: "no pause of every action was set"}[ok])
		return ExitOK
	}
	paused, err := fl.ClearPause(ctx, false)
	if err != nil {
		return c.consulFailure(cmd, err)
	}
	halted, err := fl.ClearHalt(ctx, "")
	if err != nil {
		return c.consulFailure(cmd, err)
	}
	if !paused && !halted {
		known, err := fl.Known(ctx, prefix)
		if err != nil {
			return c.consulFailure(cmd, err)
		}
		if !known {
			return c.errorf(cmd, ExitError, "no action %q: nothing at %s in Consul and no declaration in the state directory (use -prefix for a custom prefix)", name, prefix)
		}
		fmt.Fprintf(c.stdout, "%q was neither paused nor halted\n", name)
		return ExitOK
	}
	fmt.Fprintf(c.stdout, "resumed %q (lifted:%s%s)\n", name, map[bool]string{true: " pause"}[paused], map[bool]string{true: " halt"}[halted])
	return ExitOK
}

// rolloutCommand is `ct-supervise rollout`.
func (c *CLI) rolloutCommand(args []string) int {
	const cmd = "rollout"
	var asJSON, watch *bool
	t, code, done := c.parseFleet(cmd, rolloutUsage, false, args, func(fs *flag.FlagSet) {
		asJSON = fs.Bool("json", false, "print JSON")
		watch = fs.Bool("watch", false, "redraw on every change, until interrupted")
	})
	if done {
		return code
	}
	name, fl, prefix := t.name, t.fleet, t.prefix
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var changes <-chan struct{}
	if *watch {
		changes = fl.Changes(ctx)
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, fleetTimeout)
		r, err := fl.Rollout(rctx, prefix)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return ExitOK
		case err != nil:
			return c.consulFailure(cmd, err)
		}
		if *asJSON {
			c.printRolloutJSON(r)
		} else {
			c.printRollout(name, r, *watch)
		}
		if !*watch {
			return ExitOK
		}
		select {
		case <-changes:
		case <-ctx.Done():
			return ExitOK
		}
	}
}

// rolloutJSON is `rollout -json`: the view and its summary.
type rolloutJSON struct {
	fleet.Rollout
	Summary string `json:"summary"`
}

func (c *CLI) printRolloutJSON(r fleet.Rollout) {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rolloutJSON{Rollout: r, Summary: r.Summary()})
}

func (c *CLI) printRollout(name string, r fleet.Rollout, watch bool) {
	if watch {
		fmt.Fprintf(c.stdout, "\n%s — %s\n", name, r.Read.Local().Format("15:04:05"))
	}
	if len(r.Nodes) > 0 {
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPHASE\tVERSION\tLAST RESULT\tUPDATED")
		for _, n := range r.Nodes {
			phase := n.Phase
			if n.Gone {
				phase = "gone (was " + n.Phase + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", quoteName(n.Node), phase, dash(n.Version),
				dash(oneLine(n.LastResult)), n.Updated.Local().Format("2006-01-02 15:04:05"))
		}
		tw.Flush()
	}
	fmt.Fprintln(c.stdout, r.Summary())
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
