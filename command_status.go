package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"

	"ct-supervise/action"
	"ct-supervise/fleet"
	"ct-supervise/health"
	"ct-supervise/lockexec"
	"ct-supervise/plugin"
	"ct-supervise/state"
	"ct-supervise/worker"
)

// statusConsulTimeout bounds the Consul reads of `status`, so that it
// answers promptly with Consul down.
const statusConsulTimeout = 2 * time.Second

const statusUsage = `Usage: ct-supervise status [flags] [NAME]

Shows the declared actions of the state directory: whether each is pending
(declared, not yet exec'd), queued, waiting (for its lock), running,
retrying, failed or idle, who holds each action's lock right now (or why
that could not be read), its last result, the worker's pid and rejected
declarations. The table cuts the last result to the terminal's width;
'status NAME' and -json show it whole. Never creates anything.

Flags:
`

// ActionStatus is one action in `status -json`.
type ActionStatus struct {
	Name         string         `json:"name"`
	State        string         `json:"state"`
	Command      []string       `json:"command"`
	Shell        bool           `json:"shell"`
	Limit        int            `json:"n"`
	Prefix       string         `json:"prefix"`
	Try          string         `json:"try"`
	CmdTimeout   string         `json:"command_timeout"`
	MonitorRetry int            `json:"monitor_retry"`
	MaxAttempts  int            `json:"max_attempts"`
	Attempts     int            `json:"attempts,omitempty"`
	NextAttempt  *time.Time     `json:"next_attempt,omitempty"`
	Last         *state.Outcome `json:"last,omitempty"`
	// Holders is who holds the lock, [] for nobody; absent when it could
	// not be read, and then HoldersErr says why.
	Holders    []lockexec.Holder `json:"holders,omitzero"`
	HoldersErr string            `json:"holders_error,omitempty"`
	Rejected   *state.DeclError  `json:"rejected,omitempty"`

	// Phase is the step a running try is in, PhaseDetail what it waits
	// on (the check that holds the gate, who halted or paused the
	// rollout, when and why), PhaseSince when it began.
	Phase       string     `json:"phase,omitempty"`
	PhaseDetail string     `json:"phase_detail,omitempty"`
	PhaseSince  *time.Time `json:"phase_since,omitempty"`

	// Halt and Pause stop the rollout of the action on every node: who set
	// them, when and why. Absent when none is set (or Consul was not read).
	Halt  *fleet.Halt  `json:"halt,omitempty"`
	Pause *fleet.Pause `json:"pause,omitempty"`

	// The rolling-restart policy, under the declaration's JSON keys.
	WaitHealthy    []string `json:"wait_healthy,omitempty"`
	HealthTimeout  string   `json:"health_timeout,omitempty"`
	HealthSettle   string   `json:"health_settle,omitempty"`
	Maint          string   `json:"maint,omitempty"`
	Drain          string   `json:"drain,omitempty"`
	Check          string   `json:"check,omitempty"`
	Hold           string   `json:"hold,omitempty"`
	Splay          string   `json:"splay,omitempty"`
	OnFailure      string   `json:"on_failure"`
	UnlessCritical []string `json:"unless_critical,omitempty"`
	Version        string   `json:"version,omitempty"`
}

// setPolicy fills in the rolling-restart policy of d, defaults shown.
func (as *ActionStatus) setPolicy(d plugin.Declaration) {
	dur := func(v time.Duration) string {
		if v == 0 {
			return ""
		}
		return v.String()
	}
	as.WaitHealthy, as.HealthSettle = d.WaitHealthy, dur(d.HealthSettle)
	if len(d.WaitHealthy) > 0 {
		as.HealthTimeout = dur(cmp.Or(d.HealthTimeout, health.DefaultTimeout))
	}
	as.Maint, as.Drain, as.Check = d.Maint, dur(d.Drain), d.Check
	as.Hold, as.Splay = dur(d.Hold), dur(d.Splay)
	as.OnFailure = cmp.Or(d.OnFailure, action.DefaultOnFailure)
	as.UnlessCritical, as.Version = d.UnlessCritical, d.Version
}

// policyLines are the rolling-restart settings that are set, for
// `status NAME`.
func (a ActionStatus) policyLines() [][2]string {
	var out [][2]string
	add := func(label, v string) {
		if v != "" {
			out = append(out, [2]string{label, v})
		}
	}
	add("Check:", a.Check)
	add("Splay:", a.Splay)
	add("Unless critical:", strings.Join(a.UnlessCritical, ", "))
	add("Maintenance:", a.Maint)
	add("Drain:", a.Drain)
	add("Wait healthy:", strings.Join(a.WaitHealthy, ", "))
	add("Health timeout:", a.HealthTimeout)
	add("Health settle:", a.HealthSettle)
	add("Hold:", a.Hold)
	add("On failure:", a.OnFailure)
	add("Version:", a.Version)
	return out
}

// Status is the whole of `status -json`.
type Status struct {
	StateDir string `json:"state_dir"`
	// Missing is true when the state directory does not exist (yet): no
	// template has declared anything with it.
	Missing   bool `json:"missing,omitempty"`
	WorkerPID int  `json:"worker_pid"`
	// ConsulError is why Consul was not asked at all (a bad address).
	ConsulError string                     `json:"consul_error,omitempty"`
	Actions     []ActionStatus             `json:"actions"`
	Rejected    map[string]state.DeclError `json:"rejected,omitempty"`
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
	if fs.NArg() > 1 {
		return c.usageError(cmd, fmt.Errorf("unexpected argument %q", fs.Arg(1)))
	}
	only := fs.Arg(0)
	status, code := c.readStatus(cmd, *stateDir, only, &cf)
	if code != ExitOK {
		return code
	}
	switch {
	case *asJSON:
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		var v any = status
		if only != "" {
			v = status.Actions[0]
		}
		if err := enc.Encode(v); err != nil {
			return c.errorf(cmd, ExitError, "%v", err)
		}
	case only != "":
		c.printAction(status.Actions[0])
	default:
		c.printStatus(status)
	}
	return ExitOK
}

// readStatus gathers the status of the state directory stateDir: every
// action, or only the one named only.
func (c *CLI) readStatus(cmd, stateDir, only string, cf *consulFlags) (Status, int) {
	store, err := readStore(stateDir)
	if errors.Is(err, iofs.ErrNotExist) && only == "" {
		dir := stateDir
		if dir == "" {
			dir, _, _ = defaultStateDir()
		}
		return Status{StateDir: dir, Missing: true, Actions: []ActionStatus{}}, ExitOK
	}
	if err != nil {
		return Status{}, c.errorf(cmd, ExitError, "%v", err)
	}
	defer store.Close()
	st, err := store.Load()
	if err != nil {
		return Status{}, c.errorf(cmd, ExitError, "%v", err)
	}
	pid, err := worker.RunningPID(store)
	if err != nil {
		return Status{}, c.errorf(cmd, ExitError, "%v", err)
	}
	status := Status{StateDir: store.Dir(), WorkerPID: pid, Rejected: st.Errors, Actions: []ActionStatus{}, WorkerFailure: st.WorkerFailure}

	names := make([]string, 0, len(st.Actions))
	for n := range st.Actions {
		if only == "" || n == only {
			names = append(names, n)
		}
	}
	if only != "" && len(names) == 0 {
		return Status{}, c.errorf(cmd, ExitError, "no action %s is declared in %s", quoteName(only), store.Dir())
	}
	sort.Strings(names)
	for _, n := range names {
		status.Actions = append(status.Actions, actionStatus(n, st, pid != 0))
	}
	if err := addHolders(status.Actions, cf); err != nil {
		status.ConsulError = err.Error()
	}
	return status, ExitOK
}

// actionStatus is the status of the action name, without its holders.
func actionStatus(name string, st *state.State, workerAlive bool) ActionStatus {
	a := st.Actions[name]
	d := a.Declaration
	as := ActionStatus{
		Name: name, State: actionState(a, workerAlive), Command: d.Command, Shell: d.Shell,
		Limit: d.Limit, Prefix: d.Prefix, Try: d.Try.String(), CmdTimeout: d.CommandTimeout.String(),
		MonitorRetry: d.MonitorRetry, MaxAttempts: d.MaxAttempts,
		Attempts: a.Attempts, Last: a.Last,
	}
	if !a.NextAttempt.IsZero() {
		t := a.NextAttempt
		as.NextAttempt = &t
	}
	as.setPolicy(d)
	if a.Running && workerAlive && a.Phase != "" {
		as.Phase, as.PhaseDetail = a.Phase, a.PhaseDetail
		t := a.PhaseSince
		as.PhaseSince = &t
	}
	if e, ok := st.Errors[name]; ok {
		as.Rejected = &e
	}
	return as
}

// addHolders asks Consul who holds each action's lock, all within
// statusConsulTimeout. Each action gets its holders or the error that kept
// them from being read. A permission denial is asked again for the next
// action (ACLs may allow one prefix and not another); any other failure
// (Consul unreachable, the deadline) is not, and is reported for every
// action left. The error returned is one that kept Consul from being asked
// at all.
func addHolders(actions []ActionStatus, cf *consulFlags) error {
	client, err := cf.client()
	if err != nil {
		for i := range actions {
			actions[i].HoldersErr = describeConsulError(err)
		}
		return err
	}
	runner := lockexec.New(client)
	ctx, cancel := context.WithTimeout(context.Background(), statusConsulTimeout)
	defer cancel()
	var stop error
	for i := range actions {
		a := &actions[i]
		if stop != nil {
			a.HoldersErr = "not asked after an earlier read failed: " + describeConsulError(stop)
			continue
		}
		h, err := runner.Holders(a.Prefix, (&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			a.HoldersErr = describeConsulError(err)
			if !isPermissionDenied(err) {
				stop = err
			}
		case h == nil:
			a.Holders = []lockexec.Holder{}
		default:
			a.Holders = h
		}
		if err == nil {
			addFleet(ctx, a, fleet.New(client, a.Prefix))
		}
	}
	return nil
}

// addFleet reads the halt and the pause that stop the action's rollout,
// if any. A read error leaves them out: the holders' error already says
// why Consul could not be asked.
func addFleet(ctx context.Context, a *ActionStatus, f *fleet.Fleet) {
	if h, err := f.Halt(ctx); err == nil {
		a.Halt = h
	}
	if p, err := f.Pause(ctx); err == nil {
		a.Pause = p
	}
}

// stopText says what stops the action's rollout, with who, when and why;
// "" when nothing does.
func (a ActionStatus) stopText() string {
	var parts []string
	if h := a.Halt; h != nil {
		parts = append(parts, fmt.Sprintf("HALTED by %s at %s: %s", h.Node, h.At.Format(time.RFC3339), oneLine(h.Reason)))
	}
	if p := a.Pause; p != nil {
		scope := ""
		if p.Global {
			scope = " (every action)"
		}
		parts = append(parts, fmt.Sprintf("PAUSED%s by %s at %s: %s", scope, p.By, p.At.Format(time.RFC3339), oneLine(p.Reason)))
	}
	return strings.Join(parts, "; ")
}

// isPermissionDenied reports a Consul ACL denial (HTTP 403).
func isPermissionDenied(err error) bool {
	return errors.Is(lockexec.ClassifyConsulError(err), lockexec.ErrPermissionDenied)
}

// describeConsulError says in one line why holders could not be read: a
// 403 is a permission denial, naming what was denied (Consul's own words
// name the permission and the key), never "unreachable".
func describeConsulError(err error) string {
	return oneLine(lockexec.ClassifyConsulError(err).Error())
}

// actionState names where an action stands, in status's words.
func actionState(a *state.Action, workerAlive bool) string {
	switch {
	case a.Running && workerAlive && a.Phase != "":
		return a.Phase
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

func (c *CLI) printStatus(s Status) {
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	if s.Missing {
		fmt.Fprintf(w, "State directory:\t%s (does not exist: nothing declared with it yet)\n", s.StateDir)
	} else {
		fmt.Fprintf(w, "State directory:\t%s\n", s.StateDir)
	}
	switch {
	case s.WorkerPID == 0 && s.WorkerFailure != nil:
		f := s.WorkerFailure
		fmt.Fprintf(w, "Worker:\tnot running; failed to start at %s: %s\n", f.At.Format(time.RFC3339), printable(f.Message))
	case s.WorkerPID == 0:
		fmt.Fprintf(w, "Worker:\tnot running\n")
	case s.WorkerPID == -1:
		fmt.Fprintf(w, "Worker:\tstarting\n")
	default:
		fmt.Fprintf(w, "Worker:\trunning (pid %d)\n", s.WorkerPID)
	}
	if s.ConsulError != "" {
		fmt.Fprintf(w, "Consul:\tnot asked (%s); lock holders not shown\n", printable(s.ConsulError))
	}
	w.Flush()
	fmt.Fprintln(c.stdout)
	if len(s.Actions) == 0 {
		fmt.Fprintln(c.stdout, "No actions declared.")
	} else {
		c.printTable(s.Actions)
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
			label := quoteName(n)
			if n == "" {
				label = "(no name)"
			}
			fmt.Fprintf(c.stdout, "  %s: %s (at %s)\n", label, printable(e.Message), e.At.Format(time.RFC3339))
		}
	}
}

// minLastResultWidth is the least of LAST RESULT shown however narrow the
// terminal: enough for "ok at" and a time.
const minLastResultWidth = 30

// printTable prints the actions, one line each, LAST RESULT last and cut to
// the terminal's width so that each line stays one line.
func (c *CLI) printTable(actions []ActionStatus) {
	rows := [][]string{{"NAME", "STATE", "N", "PREFIX", "HOLDERS", "LAST RESULT"}}
	unread := map[string]bool{}
	for _, a := range actions {
		hs := holdersCell(a)
		if a.HoldersErr != "" {
			unread[a.HoldersErr] = true
		}
		last := lastResult(a)
		if a.PhaseDetail != "" {
			// What a running try waits on says more than the last try.
			last = a.Phase + ": " + a.PhaseDetail
		} else if stop := a.stopText(); stop != "" {
			last = stop + "; " + last
		}
		rows = append(rows, []string{quoteName(a.Name), a.State, strconv.Itoa(a.Limit), a.Prefix, hs, printable(last)})
	}
	last := len(rows[0]) - 1
	widths := make([]int, last)
	for _, r := range rows {
		for i := range widths {
			widths[i] = max(widths[i], utf8.RuneCountInString(r[i]))
		}
	}
	lead := 0
	for _, w := range widths {
		lead += w + 2
	}
	room, cols := 0, c.terminalWidth() // 0: no limit
	if cols > 0 {
		room = max(cols-lead, minLastResultWidth)
	}
	for _, r := range rows {
		var b strings.Builder
		for i, w := range widths {
			fmt.Fprintf(&b, "%-*s  ", w, r[i])
		}
		b.WriteString(cut(r[last], room))
		fmt.Fprintln(c.stdout, strings.TrimRight(b.String(), " "))
	}
	if len(unread) > 0 {
		fmt.Fprintln(c.stdout, "\nLock holders not read (?):")
		errs := make([]string, 0, len(unread))
		for e := range unread {
			errs = append(errs, e)
		}
		sort.Strings(errs)
		for _, e := range errs {
			fmt.Fprintf(c.stdout, "  %s\n", cut(printable(e), max(cols-2, 0)))
		}
	}
}

func holdersCell(a ActionStatus) string {
	if a.HoldersErr != "" {
		return "?"
	}
	nodes := make([]string, 0, len(a.Holders))
	for _, h := range a.Holders {
		if h.Node == "" { // the session could not be read (gone, or no session:read)
			nodes = append(nodes, "session "+cut(h.Session, 9))
			continue
		}
		nodes = append(nodes, quoteName(h.Node))
	}
	if len(nodes) == 0 {
		return "-"
	}
	return strings.Join(nodes, ",")
}

// printAction prints one action whole: `status NAME`.
func (c *CLI) printAction(a ActionStatus) {
	w := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "Name:\t%s\n", quoteName(a.Name))
	fmt.Fprintf(w, "State:\t%s\n", a.State)
	fmt.Fprintf(w, "Command:\t%s\n", printable(strings.Join(a.Command, " ")))
	fmt.Fprintf(w, "N:\t%d\n", a.Limit)
	fmt.Fprintf(w, "Prefix:\t%s\n", a.Prefix)
	if a.HoldersErr != "" {
		fmt.Fprintf(w, "Holders:\tnot read: %s\n", printable(a.HoldersErr))
	} else {
		fmt.Fprintf(w, "Holders:\t%s\n", holdersCell(a))
	}
	if a.Phase != "" {
		fmt.Fprintf(w, "Phase:\t%s since %s: %s\n", a.Phase, a.PhaseSince.Format(time.RFC3339), printable(a.PhaseDetail))
	}
	if stop := a.stopText(); stop != "" {
		fmt.Fprintf(w, "Rollout:\t%s (ct-supervise resume %s lifts it)\n", printable(stop), quoteName(a.Name))
	}
	for _, l := range a.policyLines() {
		fmt.Fprintf(w, "%s\t%s\n", l[0], printable(l[1]))
	}
	fmt.Fprintf(w, "Last result:\t%s\n", printable(lastResult(a)))
	if a.Rejected != nil {
		fmt.Fprintf(w, "Rejected:\t%s (at %s)\n", printable(a.Rejected.Message), a.Rejected.At.Format(time.RFC3339))
	}
	w.Flush()
}

// terminalWidth is the width of the terminal stdout writes to, else
// $COLUMNS, else 0 (unknown: nothing is cut).
func (c *CLI) terminalWidth() int {
	if f, ok := c.stdout.(*os.File); ok {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			return int(ws.Col)
		}
	}
	if n, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && n > 0 {
		return n
	}
	return 0
}

// cut shortens s to at most n runes (0: no limit), marking the cut.
func cut(s string, n int) string {
	if n <= 0 || utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// quoteName shows a name as is when it is plain printable text, and Go
// quoted otherwise: a rejected name (from data) with a newline or an ANSI
// escape must not forge table rows or repaint the terminal.
func quoteName(n string) string {
	if n == "" || strings.ContainsAny(n, "\"\\ ") {
		return strconv.Quote(n)
	}
	for _, r := range n {
		if !unicode.IsPrint(r) {
			return strconv.Quote(n)
		}
	}
	return n
}

// printable escapes the control and other unprintable characters of a
// message, which may quote data, and leaves the rest.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
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
	case l.Failed && l.NoRetry:
		return fmt.Sprintf("FAILED (exit %d, not retried until a new request) at %s: %s", l.ExitCode, at, oneLine(l.Error)) + maintLeft(l)
	case l.Failed:
		return fmt.Sprintf("FAILED (exit %d, gave up) at %s: %s", l.ExitCode, at, oneLine(l.Error)) + maintLeft(l)
	default:
		s := fmt.Sprintf("error (exit %d) at %s: %s", l.ExitCode, at, oneLine(l.Error))
		if a.NextAttempt != nil {
			s += "; retry at " + a.NextAttempt.Format(time.RFC3339)
		}
		return s + maintLeft(l)
	}
}

// maintLeft says that a failed try left its service in maintenance, and
// how to take it out.
func maintLeft(l *state.Outcome) string {
	if l.MaintLeft == "" {
		return ""
	}
	return fmt.Sprintf("; %q LEFT IN MAINTENANCE (consul maint -disable -service ID takes it out)", l.MaintLeft)
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

// warnRejections prints one warning line per rejected declaration, sorted
// by name, quoted as status quotes them.
func (c *CLI) warnRejections(cmd string, rejections map[string]state.DeclError) {
	names := make([]string, 0, len(rejections))
	for n := range rejections {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		label := "declaration " + quoteName(n)
		if n == "" {
			label = "a declaration with no name"
		}
		e := rejections[n]
		c.errorf(cmd, ExitOK, "warning: rejected %s at %s, the last good one stays in force: %s", label, e.At.Format(time.RFC3339), printable(e.Message))
	}
}
