package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// Agent is one consul agent of a cluster: a server, or a client standing
// for one node. Its ports and data directory stay the same across
// restarts, so processes configured with its address keep working.
type Agent struct {
	// Name is the agent's node name: srv1..., or node1... for clients.
	Name string
	// Server is true for a server agent.
	Server bool
	// Ports, all on 127.0.0.1, picked free when the cluster was made.
	HTTPPort, SerfLANPort, SerfWANPort, ServerPort int

	cluster *Cluster
	dir     string // data directory, configuration and log

	mu      sync.Mutex
	cmd     *exec.Cmd     // nil when not running
	done    chan struct{} // closed when cmd has exited
	waitErr error         // cmd's exit, once done is closed
	frozen  bool
}

// Addr is the agent's HTTP address, as CONSUL_HTTP_ADDR takes it.
func (a *Agent) Addr() string { return "127.0.0.1:" + strconv.Itoa(a.HTTPPort) }

// Config returns a client configuration pointing at the agent.
func (a *Agent) Config() *api.Config {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.Addr()
	cfg.Token = ""
	return cfg
}

// Client returns a client for the agent. Its requests have no deadline:
// against a frozen agent they hang until it resumes.
func (a *Agent) Client() (*api.Client, error) { return api.NewClient(a.Config()) }

// probe returns a client whose requests give up after probeTimeout.
func (a *Agent) probe() *api.Client { return probeClient(a.Addr()) }

// LogPath is the file the agent's output goes to.
func (a *Agent) LogPath() string { return filepath.Join(a.dir, "agent.log") }

// PID is the agent's process id, 0 when it is not running.
func (a *Agent) PID() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Running reports whether the agent process was started and has not been
// killed (it may have exited on its own; see exited).
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil
}

// Frozen reports whether the agent is stopped with SIGSTOP.
func (a *Agent) Frozen() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen
}

// exited returns an error if the agent process exited by itself.
func (a *Agent) exited() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return nil
	}
	select {
	case <-a.done:
		return fmt.Errorf("consul agent %s exited: %v (log: %s)", a.Name, a.waitErr, a.LogPath())
	default:
		return nil
	}
}

// args is the agent's command line. A single server runs in dev mode
// (in-memory, elects itself); three servers bootstrap together with a
// raft multiplier of 1, so that an election after a killed leader takes
// seconds, not tens of seconds. Clients retry joining every second, so a
// restarted client is back quickly.
func (a *Agent) args() []string {
	c := a.cluster
	args := []string{"agent", "-node=" + a.Name,
		"-bind=127.0.0.1", "-client=127.0.0.1", "-advertise=127.0.0.1",
		"-log-level=info", "-config-file=" + filepath.Join(a.dir, "agent.hcl")}
	if extra := filepath.Join(a.dir, "extra.hcl"); c.opts.ExtraConfig != "" {
		args = append(args, "-config-file="+extra)
	}
	switch {
	case a.Server && len(c.Servers) == 1:
		return append(args, "-dev")
	case a.Server:
		args = append(args, "-server", "-bootstrap-expect=3", "-data-dir="+filepath.Join(a.dir, "data"))
	default:
		args = append(args, "-data-dir="+filepath.Join(a.dir, "data"))
	}
	args = append(args, "-retry-interval=1s")
	for _, s := range c.Servers {
		if s != a {
			args = append(args, fmt.Sprintf("-retry-join=127.0.0.1:%d", s.SerfLANPort))
		}
	}
	return args
}

// config is the agent's configuration file: our ports, and nothing we do
// not need (DNS, gRPC) listening.
func (a *Agent) config() string {
	hcl := fmt.Sprintf("ports {\n  http = %d\n  serf_lan = %d\n  serf_wan = %d\n  server = %d\n  dns = -1\n  grpc = -1\n  grpc_tls = -1\n}\n",
		a.HTTPPort, a.SerfLANPort, a.SerfWANPort, a.ServerPort)
	if a.Server && len(a.cluster.Servers) > 1 {
		hcl += "performance {\n  raft_multiplier = 1\n}\n"
	}
	return hcl
}

// start launches the agent process; it does not wait for readiness.
func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return fmt.Errorf("consul agent %s is already running", a.Name)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "agent.hcl"), []byte(a.config()), 0o600); err != nil {
		return err
	}
	if extra := a.cluster.opts.ExtraConfig; extra != "" {
		if err := os.WriteFile(filepath.Join(a.dir, "extra.hcl"), []byte(extra), 0o600); err != nil {
			return err
		}
	}
	log, err := os.OpenFile(a.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own descriptor
	fmt.Fprintf(log, "==== %s: starting %s\n", time.Now().UTC().Format(time.RFC3339Nano), a.Name)
	cmd := exec.Command(a.cluster.opts.Binary, a.args()...)
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group, so that a signal meant for a test's processes
	// never reaches it, and Kill reaches anything it forks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting consul agent %s: %w", a.Name, err)
	}
	a.cmd, a.done, a.frozen = cmd, make(chan struct{}), false
	done := a.done
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(done)
	}()
	return nil
}

// signal sends sig to the agent process; an error if it is not running.
func (a *Agent) signal(sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return fmt.Errorf("consul agent %s is not running", a.Name)
	}
	if err := a.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signalling consul agent %s: %w", a.Name, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		a.frozen = true
	case syscall.SIGCONT:
		a.frozen = false
	}
	return nil
}

// Freeze stops the agent with SIGSTOP: it neither answers its clients nor
// gossips, as a hung agent or a stalled VM would.
func (a *Agent) Freeze() error { return a.signal(syscall.SIGSTOP) }

// Resume continues a frozen agent with SIGCONT.
func (a *Agent) Resume() error { return a.signal(syscall.SIGCONT) }

// Kill kills the agent with SIGKILL (a frozen one too) and waits for it to
// exit. The data directory stays, for Restart. Killing an agent that is
// not running does nothing.
func (a *Agent) Kill() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	<-done
	a.mu.Lock()
	a.cmd, a.frozen = nil, false
	a.mu.Unlock()
}

// Restart starts a killed agent again, with the same ports and data
// directory, and waits until it is ready: it knows the leader and the
// catalog shows it healthy. A running agent is killed first.
func (a *Agent) Restart() error {
	a.Kill()
	if err := a.start(); err != nil {
		return err
	}
	return a.cluster.WaitReady(a.cluster.opts.StartTimeout)
}
