package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"ct-supervise/lockexec"
	"ct-supervise/state"
)

// Name is the program's name; version.go has its Version and Commit.
const Name = "ct-supervise"

// Exit statuses beyond those of lockexec, which `run` shares.
const (
	ExitOK    = 0
	ExitError = 1 // a subcommand failed for a reason it printed
)

const usageText = `Usage: ct-supervise [run] [flags] COMMAND
       ct-supervise <subcommand> [flags] [args]

Runs COMMAND under a Consul lock (-n 1) or semaphore (-n > 1), so that at
most N nodes run it at once, cluster-wide.

Subcommands:
  run       Run a command under the lock now (the default subcommand).
  register  Declare an action from a template: {{ plugin "ct-supervise" "register" ... }}.
  exec      Queue declared actions for the background worker (template command).
  worker    Drain the queue (started by exec; runnable in the foreground).
  status    Show declared actions, the queue, the worker and lock holders.
  pause     Stop new starts of an action on every node (-all: of every action).
  resume    Lift a pause, and the halt a failing node set.
  rollout   Show where an action's rollout stands on every node.
  forget    Remove actions no template declares any more from the state.
  version   Print the version.

Run 'ct-supervise <subcommand> -h' for the flags of a subcommand. A first
word within two typos of a subcommand (stauts) is refused, not run: write
'ct-supervise run WORD' for a command of that name.
`

// CLI is the command-line interface. Its streams are injected so that tests
// can run it in-process.
type CLI struct {
	stdout io.Writer
	stderr io.Writer
	stdin  io.Reader
}

// NewCLI returns a CLI writing to stdout and stderr and reading stdin.
func NewCLI(stdout, stderr io.Writer, stdin io.Reader) *CLI {
	return &CLI{stdout: stdout, stderr: stderr, stdin: stdin}
}

// Run dispatches args (without the program name) and returns the exit
// status.
func (c *CLI) Run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usageText)
		return lockexec.ExitUsage
	}
	switch args[0] {
	case "run":
		return c.runCommand(args[1:])
	case "register":
		return c.registerCommand(args[1:])
	case "exec":
		return c.execCommand(args[1:])
	case "worker":
		return c.workerCommand(args[1:])
	case "status":
		return c.statusCommand(args[1:])
	case "pause":
		return c.pauseCommand(args[1:])
	case "resume":
		return c.resumeCommand(args[1:])
	case "rollout":
		return c.rolloutCommand(args[1:])
	case "forget":
		return c.forgetCommand(args[1:])
	case "version", "-version", "--version":
		fmt.Fprintln(c.stdout, versionString())
		return ExitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(c.stdout, usageText)
		return ExitOK
	default:
		if sub, ok := mistypedSubcommand(args[0]); ok {
			return c.usageError("", fmt.Errorf("unknown subcommand %q; did you mean %q? To run a command of that name: %s run %s",
				args[0], sub, Name, args[0]))
		}
		// `ct-supervise -n 1 'nginx -s reload'`, as the original request
		// wrote it: flags or a command line means run.
		return c.runCommand(args)
	}
}

// subcommands are the words Run dispatches on, for typo detection.
var subcommands = []string{"run", "register", "exec", "worker", "status", "pause", "resume", "rollout", "version", "help"}

// maxTypoDistance is how far a bare first word may be from a subcommand
// and still be taken for a typo of it: `stauts`, `exce` and `stat` are, and
// running them as commands under a lock (the default subcommand) would be
// the worst reading.
const maxTypoDistance = 2

// mistypedSubcommand reports the subcommand that word, a bare first word
// (a plain name: no flag, path, space or shell syntax), is likely a typo
// of.
func mistypedSubcommand(word string) (string, bool) {
	for i, r := range word {
		letter := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
		if !letter && (i == 0 || !(r >= '0' && r <= '9' || r == '-' || r == '_')) {
			return "", false
		}
	}
	best, bestDist := "", maxTypoDistance+1
	for _, sub := range subcommands {
		if d := editDistance(strings.ToLower(word), sub); d < bestDist {
			best, bestDist = sub, d
		}
	}
	return best, best != ""
}

// editDistance is the optimal string alignment distance between a and b:
// insertions, deletions, substitutions and transpositions of adjacent
// letters each count one.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// errorf prints one error line for a subcommand ("" for none) and returns
// code.
func (c *CLI) errorf(cmd string, code int, format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	// Keep it to one line whatever the cause said.
	msg = strings.ReplaceAll(strings.TrimSpace(msg), "\n", " ")
	fmt.Fprintf(c.stderr, "%s: %s\n", strings.TrimSpace(Name+" "+cmd), msg)
	return code
}

// usageError reports bad usage with the hint to the help text.
func (c *CLI) usageError(cmd string, err error) int {
	c.errorf(cmd, lockexec.ExitUsage, "%v", err)
	fmt.Fprintf(c.stderr, "Run '%s -h' for usage.\n", strings.TrimSpace(Name+" "+cmd))
	return lockexec.ExitUsage
}

// newFlagSet returns a flag set that reports nothing itself: errors go
// through usageError so that each is one line.
func newFlagSet(cmd string) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args; on -h it prints usage to stdout. done reports that
// the caller should return code.
func (c *CLI) parseFlags(fs *flag.FlagSet, cmd, usage string, args []string) (code int, done bool) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return c.printUsage(fs, usage), true
	}
	if err != nil {
		return c.usageError(cmd, err), true
	}
	return 0, false
}

// printUsage prints a subcommand's usage text and flags to stdout, for -h.
func (c *CLI) printUsage(fs *flag.FlagSet, usage string) int {
	fmt.Fprint(c.stdout, usage)
	fs.SetOutput(c.stdout)
	fs.PrintDefaults()
	return ExitOK
}

// newLogger returns the named hclog logger for a subcommand: info and above,
// debug with -verbose.
func newLogger(name string, verbose bool, out io.Writer) hclog.Logger {
	level := hclog.Info
	if verbose {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:   Name,
		Level:  level,
		Output: out,
	}).Named(name)
}

// consulFlags are the connection flags shared by subcommands that talk to
// Consul. Unset flags leave the CONSUL_* environment in charge.
type consulFlags struct {
	httpAddr  string
	token     string
	tokenFile string
}

func (f *consulFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&f.httpAddr, "http-addr", "", "Consul HTTP address (default $CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&f.token, "token", "", "Consul ACL token (default $CONSUL_HTTP_TOKEN); visible to other users in ps, prefer -token-file")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the Consul ACL token (default $CONSUL_HTTP_TOKEN_FILE)")
}

// client returns a Consul client: the flags over the CONSUL_* environment,
// -token over -token-file as in consul's own CLI. The token is never
// printed: errors name the file, not its contents.
func (f *consulFlags) client() (*api.Client, error) {
	cfg := api.DefaultConfig()
	if f.httpAddr != "" {
		cfg.Address = f.httpAddr
	}
	if f.tokenFile != "" {
		cfg.Token, cfg.TokenFile = "", f.tokenFile
	}
	if f.token != "" {
		cfg.Token = f.token
	}
	if cfg.Token == "" && cfg.TokenFile != "" {
		// api.NewClient would read it too, but say nothing useful when
		// it is missing or empty.
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul token file: %w", err)
		}
		if cfg.Token = strings.TrimSpace(string(b)); cfg.Token == "" {
			return nil, fmt.Errorf("consul token file %s is empty", cfg.TokenFile)
		}
		cfg.TokenFile = ""
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return client, nil
}

// stateDirFlag binds -state-dir, whose default comes from the environment.
func stateDirFlag(fs *flag.FlagSet) *string {
	return fs.String("state-dir", "", "state directory (default $CT_SUPERVISE_STATE_DIR, then $STATE_DIRECTORY as systemd's StateDirectory= sets it, then /var/lib/ct-supervise for root, else $XDG_STATE_HOME/ct-supervise or ~/.local/state/ct-supervise)")
}

// defaultStateDir is state.DefaultStateDir; a variable so that tests can
// stand in for a service user whose home does not exist.
var defaultStateDir = state.DefaultStateDir

// openStore opens (creating it if needed) the state directory named by
// -state-dir, or by default. When nobody configured one and the built-in
// default cannot be used, the error wraps state.ErrNoDefaultStateDir:
// register and exec, run by consul-template, report it without failing
// the render.
func openStore(dir string) (*state.Store, error) { return openStoreWith(dir, true) }

// readStore opens the state directory like openStore but never creates
// it (status): a missing one is an error wrapping fs.ErrNotExist.
func readStore(dir string) (*state.Store, error) { return openStoreWith(dir, false) }

func openStoreWith(dir string, create bool) (*state.Store, error) {
	builtin := false
	if dir == "" {
		var err error
		if dir, builtin, err = defaultStateDir(); err != nil {
			return nil, err
		}
	}
	open := state.Open
	if !create {
		open = state.OpenExisting
	}
	s, err := open(dir)
	if err != nil && builtin && (create || !errors.Is(err, fs.ErrNotExist)) {
		return nil, fmt.Errorf("%w: the default %w; set StateDirectory= (systemd), CT_SUPERVISE_STATE_DIR or -state-dir", state.ErrNoDefaultStateDir, err)
	}
	return s, err
}
