package main

import (
	"errors"
	"fmt"

	"ct-supervise/state"
)

const forgetUsage = `Usage: ct-supervise forget [flags] NAME...
       ct-supervise forget -rejected

Removes actions that no template declares any more, with their rejected
declarations, from the state directory; with -rejected, removes every
rejected-declaration record instead. Actions are never expired on their own:
a template that renders rarely still declares its action, and dropping it
would lose its next reload.

A queued or running action is refused unless -force (its pending run is
then dropped; a running command finishes). A template that still declares
the action registers it again on its next render. Never contacts Consul.

Flags:
`

// forgetCommand is `ct-supervise forget`.
func (c *CLI) forgetCommand(args []string) int {
	const cmd = "forget"
	fs := newFlagSet(cmd)
	stateDir := stateDirFlag(fs)
	force := fs.Bool("force", false, "forget queued or running actions too, dropping their pending runs")
	rejected := fs.Bool("rejected", false, "forget every rejected-declaration record (status's \"Rejected declarations\")")
	if code, done := c.parseFlags(fs, cmd, forgetUsage, args); done {
		return code
	}
	switch {
	case *rejected && fs.NArg() > 0:
		return c.usageError(cmd, fmt.Errorf("give either NAMEs or -rejected, not both"))
	case !*rejected && fs.NArg() == 0:
		return c.usageError(cmd, errors.New("missing NAME: which action to forget?"))
	}
	store, err := readStore(*stateDir)
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	if *rejected {
		err = store.ForgetRejections()
	} else {
		err = store.Forget(fs.Args(), *force)
	}
	switch {
	case errors.Is(err, state.ErrUnknownAction), errors.Is(err, state.ErrBusy):
		return c.errorf(cmd, ExitError, "%v; nothing forgotten", err)
	case err != nil:
		return c.errorf(cmd, ExitError, "%v", err)
	}
	return ExitOK
}
