package main

import (
	"context"
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
78 -n differs from other holders, 124 -command-timeout exceeded,
130 interrupted.

Several arguments are an argument vector: each reaches the program as
given (with the shell, each is quoted). Write shell syntax as one argument:
ct-supervise run -n 2 'nginx -t && nginx -s reload'.
-timeout is the lock wait, an alias of -try, as in consul lock.

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
	if err := plugin.CheckFlagUse(fs, args); err != nil {
		return c.usageError(cmd, err)
	}
	d.Command = fs.Args()
	if err := d.Finish(); err != nil {
		return c.usageError(cmd, err)
	}
	client, err := cf.client()
	if err != nil {
		// Settings that make no client (a CA file that cannot be read) are
		// configuration, not usage: no -h hint would help.
		return c.errorf(cmd, lockexec.ExitConfig, "%v", err)
	}
	log := newLogger(cmd, *verbose, c.stderr)

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
