// Package devconsul starts and stops a real `consul agent -dev` on free
// loopback ports. The integration tests, the demo and the benchmarks use it so
// that everything involving locks, sessions and KV runs against the real
// thing rather than a fake.
package devconsul

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultStartTimeout bounds how long Start waits for the agent to elect
// itself leader. A dev agent normally needs about three seconds.
const DefaultStartTimeout = 30 * time.Second

// ErrNoBinary is returned when no consul binary can be found.
var ErrNoBinary = errors.New("consul binary not found: run `make tools` or put consul v1.21.0 on PATH")

// Options configures an agent. The zero value is usable.
type Options struct {
	// Binary is the consul executable. Empty means $CONSUL_BIN, then "consul"
	// on PATH.
	Binary string

	// HTTPPort is the loopback HTTP port. Zero picks a free one. Restarting an
	// agent reuses its port so clients configured with the address keep
	// working.
	HTTPPort int

	// LogFile receives the agent's output. Empty discards it.
	LogFile string

	// StartTimeout bounds the wait for a leader. Zero means
	// DefaultStartTimeout.
	StartTimeout time.Duration

	// ExtraConfig is more agent configuration, in HCL, loaded after ours
	// (e.g. telemetry or limits for a benchmark). Empty adds nothing.
	ExtraConfig string
}

// Agent is a running dev agent.
type Agent struct {
	opts Options
	cmd  *exec.Cmd
	done chan struct{}
	dir  string
}

// FindBinary resolves the consul binary the same way Start does.
func FindBinary(bin string) (string, error) {
	if bin == "" {
		bin = os.Getenv("CONSUL_BIN")
	}
	if bin == "" {
		bin = "consul"
	}
	p, err := exec.LookPath(bin)
	if err != nil {
		return "", ErrNoBinary
	}
	return p, nil
}

// Start launches a dev agent and waits until it has a leader.
func Start(opts Options) (*Agent, error) {
	bin, err := FindBinary(opts.Binary)
	if err != nil {
		return nil, err
	}
	opts.Binary = bin
	if opts.StartTimeout == 0 {
		opts.StartTimeout = DefaultStartTimeout
	}
	pickHTTP := opts.HTTPPort == 0
	// Free ports are only free until someone takes them: agents started at
	// the same moment (test packages run in parallel) can pick the same one.
	// A failed start is retried on fresh ports.
	for attempt := 1; ; attempt++ {
		if pickHTTP {
			if opts.HTTPPort, err = FreePort(); err != nil {
				return nil, err
			}
		}
		a := &Agent{opts: opts}
		if err = a.start(); err == nil {
			return a, nil
		}
		if attempt == startAttempts {
			return nil, err
		}
	}
}

// startAttempts is how many times Start tries fresh ports.
const startAttempts = 3

func (a *Agent) start() (err error) {
	defer func() {
		if err != nil {
			// Whatever got started, and the config directory, go.
			a.Stop()
			if a.dir != "" {
				_ = os.RemoveAll(a.dir)
			}
		}
	}()
	ports := make([]int, 3)
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	dir, err := os.MkdirTemp("", "ct-supervise-consul-")
	if err != nil {
		return err
	}
	a.dir = dir
	// DNS, gRPC and WAN are not needed; disabling them keeps the agent to
	// the loopback ports we picked.
	hcl := fmt.Sprintf(`ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, server = %d, serf_lan = %d, serf_wan = %d }`,
		a.opts.HTTPPort, ports[0], ports[1], ports[2])
	cfg := filepath.Join(dir, "ports.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o600); err != nil {
		return err
	}
	args := []string{"agent", "-dev",
		"-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-node=devconsul", "-log-level=warn", "-config-file=" + cfg}
	if a.opts.ExtraConfig != "" {
		extra := filepath.Join(dir, "extra.hcl")
		if err := os.WriteFile(extra, []byte(a.opts.ExtraConfig), 0o600); err != nil {
			return err
		}
		args = append(args, "-config-file="+extra)
	}
	cmd := exec.Command(a.opts.Binary, args...)
	// Its own process group, and killed with us: a test binary stopped by
	// a signal (a timeout, a ^C) runs no cleanup, and would otherwise
	// leave the agent running. (The signal comes when the thread that
	// started it ends; Go ends threads only behind LockOSThread, which no
	// test that starts an agent uses.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if a.opts.LogFile != "" {
		f, err := os.OpenFile(a.opts.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting consul: %w", err)
	}
	a.cmd = cmd
	a.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.done) }()

	client, err := a.Client()
	if err != nil {
		a.Stop()
		return err
	}
	deadline := time.Now().Add(a.opts.StartTimeout)
	for {
		leader, err := client.Status().Leader()
		if err == nil && leader != "" {
			// The node must also be registered before sessions can be made.
			if _, _, err := client.Catalog().Node("devconsul", nil); err == nil {
				return nil
			}
		}
		select {
		case <-a.done:
			return fmt.Errorf("consul agent exited during start-up (port %d)", a.opts.HTTPPort)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.Stop()
			return fmt.Errorf("consul agent on port %d had no leader after %s", a.opts.HTTPPort, a.opts.StartTimeout)
		}
	}
}

// PID is the agent's process id (0 once stopped), e.g. to read its CPU
// time.
func (a *Agent) PID() int {
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Addr is the agent's HTTP address, as CONSUL_HTTP_ADDR takes it.
func (a *Agent) Addr() string { return "127.0.0.1:" + strconv.Itoa(a.opts.HTTPPort) }

// Config returns a client configuration pointing at the agent.
func (a *Agent) Config() *api.Config {
	c := api.DefaultNonPooledConfig()
	c.Address = a.Addr()
	c.Token = ""
	return c
}

// Client returns a client for the agent.
func (a *Agent) Client() (*api.Client, error) { return api.NewClient(a.Config()) }

// Stop kills the agent (the whole process group) and waits for it to exit.
// It is safe to call more than once.
func (a *Agent) Stop() {
	if a.cmd == nil {
		return
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
	}
	a.cmd = nil
	if a.dir != "" {
		_ = os.RemoveAll(a.dir)
	}
}

// Restart stops the agent and starts a fresh one on the same HTTP port. A
// dev agent keeps nothing in memory across the restart.
func (a *Agent) Restart() error {
	a.Stop()
	var err error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if err = a.start(); err == nil {
			return nil
		}
	}
	return err
}

// FreePort asks the kernel for a free loopback TCP port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
