package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"ct-supervise/lockexec"
	"ct-supervise/state"
	"ct-supervise/worker"
)

// statusConsulTimeout bounds the Consul reads of `status`, so that it
// answers promptly with Consul down.
const statusConsulTimeout = 2 * time.Second

const statusUsage = `Usage: ct-supervise status [flags]

Shows the declared actions of the state directory: whether each is pending
(declared, not yet exec'd), queued, waiting (for its lock), running,
retrying, failed or idle, its
last result, the worker's pid, rejected declarations and, when Consul is
reachable, who holds each action's lock right now.

Flags:
`

// ActionStatus is one action in `status -json`.
type ActionStatus struct {
	Name         string            `json:"name"`
	State        string            `json:"state"`
	Command      []string          `json:"command"`
	Shell        bool              `json:"shell"`
	Limit        int               `json:"n"`
	Prefix       string            `json:"prefix"`
	Try          string            `json:"try"`
	Timeout      string            `json:"timeout"`
	MonitorRetry int               `json:"monitor_retry"`
	MaxAttempts  int               `json:"max_attempts"`
	Attempts     int               `json:"attempts,omitempty"`
	NextAttempt  *time.Time        `json:"next_attempt,omitempty"`
	Last         *state.Outcome    `json:"last,omitempty"`
	Holders      []lockexec.Holder `json:"holders"`
	HoldersErr   string            `json:"holders_error,omitempty"`
	Rejected     *state.DeclError  `json:"rejected,omitempty"`
}

// Status is the whole of `status -json`.
type Status struct {
	StateDir  string                     `json:"state_dir"`
	WorkerPID int                        `json:"worker_pid"`
	Actions   []ActionStatus             `json:"actions"`
	Rejected  map[string]state.DeclError `json:"rejected,omitempty"`
	// WorkerFailure is why the last worker could not start, if it could not.
	WorkerFailure *state.WorkerFailure `json:"worker_failure,omitempty"`
}

// statusCommand is `ct-supervise status`.
func (c *CLI) statusCommand(args []string) int {
	const cmd = "status"
	fs := newFlagSet(cmd)
	stateDir := stateDirFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	var cf consulFlags
	cf.bind(fs)
	if code, done := c.parseFlags(fs, cmd, statusUsage, args); done {
		return code
	}
	if fs.NArg() > 0 {
		return c.usageError(cmd, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	store, err := openStore(*stateDir)
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	st, err := store.Load()
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	pid, err := worker.RunningPID(store.Path(worker.LockFile))
	if err != nil {
		return c.errorf(cmd, ExitError, "%v", err)
	}
	status := Status{StateDir: store.Dir(), WorkerPID: pid, Rejected: st.Errors, WorkerFailure: st.WorkerFailure}

	// consulErr is why holders are not shown: a bad address, or the first
	// failed read (then Consul is not asked again for every action).
	var runner *lockexec.Runner
	client, consulErr := cf.client()
	if consulErr == nil {
		runner = lockexec.New(client)
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusConsulTimeout)
	defer cancel()
	names := make([]string, 0, len(st.Actions))
	for n := range st.Actions {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := st.Actions[n]
		d := a.Declaration
		as := ActionStatus{
			Name: n, State: actionState(a, pid != 0), Command: d.Command, Shell: d.Shell,
			Limit: d.Limit, Prefix: d.Prefix, Try: d.Try.String(), Timeout: d.Timeout.String(),
			MonitorRetry: d.MonitorRetry, MaxAttempts: d.MaxAttempts,
			Attempts: a.Attempts, Last: a.Last, Holders: []lockexec.Holder{},
		}
		if !a.NextAttempt.IsZero() {
			t := a.NextAttempt
			as.NextAttempt = &t
		}
		if e, ok := st.Errors[n]; ok {
			as.Rejected = &e
		}
		if consulErr == nil {
			h, err := runner.Holders(d.Prefix, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				as.HoldersErr = err.Error()
				consulErr = err
			} else if h != nil {
				as.Holders = h
			}
		}
		status.Actions = append(status.Actions, as)
	}

	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(status); err != nil {
			return c.errorf(cmd, ExitError, "%v", err)
		}
		return ExitOK
	}
	c.printStatus(status, consulErr)
	return ExitOK
}

// actionState names where an action stands, in status's words.
func actionState(a *state.Action, workerAlive bool) string {
	switch {
	case a.Running && a.Holding && workerAlive:
		return "running"
	case a.Running && workerAlive:
		return "waiting"
	case a.Queued() && a.Failures > 0:
		return "retrying"
	case a.Queued():
		return "queued"
	case a.Pending:
		return "pending"
	case a.Last != nil && a.Last.Failed:
		return "failed"
	default:
		return "idle"
	}
}

func (c *CLI) printStatus(s Status, consulErr error) {
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "State directory:\t%s\n", s.StateDir)
	switch {
	case s.WorkerPID == 0 && s.WorkerFailure != nil:
		f := s.WorkerFailure
		fmt.Fprintf(w, "Worker:\tnot running; failed to start at %s: %s\n", f.At.Format(time.RFC3339), oneLine(f.Message))
	case s.WorkerPID == 0:
		fmt.Fprintf(w, "Worker:\tnot running\n")
	case s.WorkerPID == -1:
		fmt.Fprintf(w, "Worker:\tstarting\n")
	default:
		fmt.Fprintf(w, "Worker:\trunning (pid %d)\n", s.WorkerPID)
	}
	if consulErr != nil {
		fmt.Fprintf(w, "Consul:\tunreachable (%s); lock holders not shown\n", oneLine(consulErr.Error()))
	}
	w.Flush()
	fmt.Fprintln(c.stdout)
	if len(s.Actions) == 0 {
		fmt.Fprintln(c.stdout, "No actions declared.")
	} else {
		w = tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tSTATE\tN\tPREFIX\tLAST RESULT\tHOLDERS")
		for _, a := range s.Actions {
			holders := make([]string, 0, len(a.Holders))
			for _, h := range a.Holders {
				holders = append(holders, h.Node)
			}
			hs := strings.Join(holders, ",")
			if hs == "" {
				hs = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", a.Name, a.State, a.Limit, a.Prefix, lastResult(a), hs)
		}
		w.Flush()
	}
	if len(s.Rejected) > 0 {
		fmt.Fprintln(c.stdout, "\nRejected declarations (the last good one stays in force):")
		names := make([]string, 0, len(s.Rejected))
		for n := range s.Rejected {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			e := s.Rejected[n]
			label := n
			if label == "" {
				label = "(no name)"
			}
			fmt.Fprintf(c.stdout, "  %s: %s (at %s)\n", label, e.Message, e.At.Format(time.RFC3339))
		}
	}
}

func lastResult(a ActionStatus) string {
	l := a.Last
	if l == nil {
		return "never run"
	}
	at := l.Finished.Format(time.RFC3339)
	switch {
	case l.OK:
		return "ok at " + at
	case l.Failed:
		return fmt.Sprintf("FAILED (exit %d, gave up) at %s: %s", l.ExitCode, at, oneLine(l.Error))
	default:
		s := fmt.Sprintf("error (exit %d) at %s: %s", l.ExitCode, at, oneLine(l.Error))
		if a.NextAttempt != nil {
			s += "; retry at " + a.NextAttempt.Format(time.RFC3339)
		}
		return s
	}
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }
