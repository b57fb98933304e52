package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	actionpkg "ct-supervise/action"
	"ct-supervise/fleet"
	"ct-supervise/lockexec"
	"ct-supervise/state"
)

// ConsulSettingsFile holds the CONSUL_* connection settings that the last
// exec was given, readable by its owner only: it holds the ACL token.
//
// Why: consul-template hands its `consul { address, token, ... }` block to
// the commands it runs (exec) as CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN and the
// rest, but not to plugins (register). A worker that register starts would
// otherwise talk to 127.0.0.1:8500 without a token. So exec records them,
// and every worker uses the newest recorded ones, whoever started it.
const ConsulSettingsFile = "consul-settings.json"

// consulEnvPrefix is the prefix of the variables consul-template sets for
// its commands and Consul's api reads.
const consulEnvPrefix = "CONSUL_"

// ConsulSettings are recorded connection settings.
type ConsulSettings struct {
	// Env maps each CONSUL_* variable to its value.
	Env map[string]string `json:"env"`
	// RecordedAt is when an exec last recorded them.
	RecordedAt time.Time `json:"recorded_at"`
}

// consulEnv picks the CONSUL_* variables out of environ (os.Environ's form).
func consulEnv(environ []string) map[string]string {
	env := map[string]string{}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, consulEnvPrefix) {
			env[k] = v
		}
	}
	return env
}

// RecordConsulSettings records the CONSUL_* variables of environ in the state
// directory for the workers, if there are any: an exec run by hand from a
// shell with none leaves what consul-template's exec recorded in force. An
// unchanged set is not rewritten. It reports whether anything was recorded.
func RecordConsulSettings(store *state.Store, environ []string) (bool, error) {
	env := consulEnv(environ)
	if len(env) == 0 {
		return false, nil
	}
	if old, err := loadConsulSettings(store); err == nil && maps.Equal(old.Env, env) {
		return false, nil
	}
	data, err := json.Marshal(ConsulSettings{Env: env, RecordedAt: time.Now().UTC()})
	if err != nil {
		return false, err
	}
	if err := store.ReplaceFile(ConsulSettingsFile, append(data, '\n')); err != nil {
		return false, fmt.Errorf("recording the Consul settings: %w", err)
	}
	// New settings may well fix what made the last worker fail at start:
	// the next one need not wait out StartRetryDelay.
	err = store.Update(func(st *state.State) error {
		st.WorkerFailure = nil
		return nil
	})
	return true, err
}

// loadConsulSettings reads recorded settings; the error wraps
// os.ErrNotExist when exec never recorded any.
func loadConsulSettings(store *state.Store) (ConsulSettings, error) {
	var s ConsulSettings
	f, err := store.OpenFile(ConsulSettingsFile, os.O_RDONLY, 0)
	if err != nil {
		return s, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSettingsSize))
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("reading %s: %w", store.Path(ConsulSettingsFile), err)
	}
	return s, nil
}

// maxSettingsSize bounds what is read of the settings file: a handful of
// variables.
const maxSettingsSize = 64 << 10

// ConsulRunner is the worker's Runner against a real Consul. Before every
// try it reads the recorded connection settings, so that a worker always
// uses what consul-template gives its commands now, and it builds a new
// client only when they changed. With none recorded it uses its own
// environment.
//
// Precedence: the recorded settings, as a whole, over the worker's own
// CONSUL_* environment (a service worker's Environment= included), so that
// the worker talks to Consul exactly as consul-template does. The worker's
// own environment applies only until an exec has recorded any.
type ConsulRunner struct {
	store *state.Store
	own   map[string]string // the worker's own CONSUL_* environment

	mu       sync.Mutex
	env      map[string]string // the settings the client was built from
	runner   *lockexec.Runner
	pipeline *actionpkg.Pipeline
	client   *api.Client

	// override is -node; node the name in use (resolved once per client).
	override string
	node     string
	records  *records
}

// NewConsulRunner returns the runner for store's worker, after checking
// that the current settings make a client: a bad CA file, for one, is a
// configuration error, reported at start rather than on every try.
func NewConsulRunner(store *state.Store) (*ConsulRunner, error) {
	r := &ConsulRunner{store: store, own: consulEnv(os.Environ()), records: newRecords(store, hclog.NewNullLogger())}
	if _, _, err := r.current(); err != nil {
		return nil, err
	}
	return r, nil
}

// Source describes where the settings in use come from, for the log: never
// the token itself.
func (r *ConsulRunner) Source() string {
	s, err := loadConsulSettings(r.store)
	if err != nil {
		return "the worker's environment (no exec has recorded consul-template's settings yet)"
	}
	addr := s.Env["CONSUL_HTTP_ADDR"]
	if addr == "" {
		addr = "the default address"
	}
	return fmt.Sprintf("consul-template's, recorded by exec at %s (%s, token %s)",
		s.RecordedAt.Format(time.RFC3339), addr, tokenState(s.Env))
}

func tokenState(env map[string]string) string {
	if env["CONSUL_HTTP_TOKEN"] != "" || env["CONSUL_HTTP_TOKEN_FILE"] != "" {
		return "set"
	}
	return "not set"
}

// current returns the runner and client for the newest settings.
func (r *ConsulRunner) current() (*lockexec.Runner, *api.Client, error) {
	env := r.own
	s, err := loadConsulSettings(r.store)
	switch {
	case err == nil:
		env = s.Env
	case !errors.Is(err, os.ErrNotExist):
		return nil, nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runner != nil && maps.Equal(env, r.env) {
		return r.runner, r.client, nil
	}
	client, err := clientFor(env)
	if err != nil {
		return nil, nil, err
	}
	r.env, r.client, r.runner, r.pipeline = env, client, lockexec.New(client), actionpkg.New(client)
	r.node = ""
	return r.runner, r.client, nil
}

// envMu serialises clientFor's use of the process environment.
var envMu sync.Mutex

// clientFor builds a client from CONSUL_* settings. Consul's api reads them
// only from the process environment, so they become the worker's
// environment: the commands the worker runs get them too, as
// consul-template's commands do.
func clientFor(env map[string]string) (*api.Client, error) {
	envMu.Lock()
	defer envMu.Unlock()
	for k := range consulEnv(os.Environ()) {
		if _, keep := env[k]; !keep {
			os.Unsetenv(k)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		os.Setenv(k, env[k])
	}
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConsulConfig, err)
	}
	return client, nil
}

// ErrConsulConfig means the Consul connection settings cannot make a client:
// a CA, certificate or key file that cannot be read, a bad address.
var ErrConsulConfig = errors.New("bad Consul connection settings")

// SetNode sets this node's name (-node, $CT_SUPERVISE_NODE), and the
// logger of the rollout records. An empty name means the local agent's
// node name.
func (r *ConsulRunner) SetNode(name string, log hclog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.override, r.node = name, ""
	if log != nil {
		r.records.log = log
	}
}

// nodeName is this node's name on the current client (see
// action.ResolveNode; needAgent says the action queries health). Only a
// name the agent or -node gave is kept for the next run.
func (r *ConsulRunner) nodeName(ctx context.Context, needAgent bool) (*actionpkg.Pipeline, *api.Client, string, error) {
	if _, _, err := r.current(); err != nil {
		return nil, nil, "", err
	}
	r.mu.Lock()
	pipeline, client, node, override := r.pipeline, r.client, r.node, r.override
	r.mu.Unlock()
	if node != "" {
		return pipeline, client, node, nil
	}
	node, err := actionpkg.ResolveNode(ctx, client, override, true)
	if err != nil {
		if needAgent {
			return nil, nil, "", lockexec.ClassifyConsulError(err)
		}
		node, err = actionpkg.ResolveNode(ctx, client, override, false)
		if err != nil {
			return nil, nil, "", lockexec.ClassifyConsulError(err)
		}
		return pipeline, client, node, nil
	}
	r.mu.Lock()
	if r.client == client {
		r.node = node
	}
	r.mu.Unlock()
	return pipeline, client, node, nil
}

// Run implements Runner with the newest settings: the action pipeline,
// with this node's name and the action's fleet records.
func (r *ConsulRunner) Run(ctx context.Context, opts actionpkg.Options) (actionpkg.Result, error) {
	pipeline, client, node, err := r.nodeName(ctx, opts.NeedsAgentNode())
	if err != nil {
		return actionpkg.Result{Result: lockexec.Result{ExitCode: -1}}, err
	}
	opts.Node = node
	opts.Fleet = fleet.New(client, opts.Lock.Prefix)
	return pipeline.Run(ctx, opts)
}

// Publish implements Publisher: this node's record, held by the worker's
// session.
func (r *ConsulRunner) Publish(ctx context.Context, prefix string, rec fleet.Record) error {
	_, client, node, err := r.nodeName(ctx, false)
	if err != nil {
		return err
	}
	rec.Node = node
	return r.records.publish(ctx, client, prefix, rec)
}

// Close destroys the worker's session for the rollout view; the records
// stay, in the resting phase each run published last. Call it when the
// worker has stopped.
func (r *ConsulRunner) Close() {
	r.records.close()
}

// Reclaim implements Runner with the newest settings.
func (r *ConsulRunner) Reclaim(ctx context.Context, prefix string, limit int, session string) error {
	runner, _, err := r.current()
	if err != nil {
		return err
	}
	return runner.Reclaim(ctx, prefix, limit, session)
}

// Ping asks the agent for the cluster leader: cheap, and it fails both when
// the agent is down and when the servers have no leader.
func (r *ConsulRunner) Ping(ctx context.Context) error {
	_, client, err := r.current()
	if err != nil {
		return err
	}
	var leader string
	_, err = client.Raw().Query("/v1/status/leader", &leader, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil && leader == "" {
		err = errors.New("no cluster leader")
	}
	return err
}
