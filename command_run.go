package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"ct-supervise/lockexec"
	"ct-supervise/plugin"
)

const runUsage = `Usage: ct-supervise [run] [flags] COMMAND

Runs COMMAND while holding a Consul lock (-n 1) or a slot of a semaphore
(-n > 1) at the KV prefix, then releases it and destroys the session. The
same command on every node meets on the same prefix.

Exit status: COMMAND's own, or 64 bad usage, 69 Consul unreachable,
70 internal error, 75 not acquired within -try, 76 lock lost,
78 -n differs from other holders, 124 -timeout exceeded, 130 interrupted.

Flags:
`

// runCommand is `ct-supervise run`: consul lock, made simple.
func (c *CLI) runCommand(args []string) int {
	const cmd = "run"
	fs := newFlagSet(cmd)
	d := plugin.DefaultDeclaration()
	d.BindFlags(fs)
	var cf consulFlags
	cf.bind(fs)
	passStdin := fs.Bool("pass-stdin", false, "pass our standard input to the command (otherwise it gets none)")
	verbose := fs.Bool("verbose", false, "debug logging on standard error")
	if code, done := c.parseFlags(fs, cmd, runUsage, args); done {
		return code
	}
	if flagSet(fs, "max-attempts") {
		return c.usageError(cmd, errors.New("-max-attempts applies to declarations (register), not to run"))
	}
	d.Command = fs.Args()
	if err := d.Finish(); err != nil {
		return c.usageError(cmd, err)
	}
	client, err := cf.client()
	if err != nil {
		return c.usageError(cmd, err)
	}
	log := newLogger(cmd, *verbose, c.stderr)
	log.Debug("lock", "prefix", d.Prefix, "n", d.Limit, "name", d.Name)

	opts := d.LockOptions()
	opts.Stdout, opts.Stderr = c.stdout, c.stderr
	if *passStdin {
		opts.Stdin = c.stdin
	}
	opts.Logger = log
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	opts.Signals = sigs

	res, err := lockexec.New(client).Run(context.Background(), opts)
	code := lockexec.ExitStatus(res, err)
	if err != nil {
		c.errorf(cmd, code, "%v", err)
	}
	return code
}

// flagSet reports whether the named flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}
