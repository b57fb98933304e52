package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"ct-supervise/plugin"
)

// Files in the state directory.
const (
	// stateFileName holds the State as JSON. It is only ever replaced
	// whole, by rename, so readers never see a partial write.
	stateFileName = "state.json"

	// stateLockName is the file the directory lock is taken on. It is not
	// the state file itself, because that is replaced on every write and a
	// lock on a replaced file protects nothing.
	stateLockName = "state.lock"

	// stateTempPattern names the temporary files new states are written to
	// before they are renamed over the state file.
	stateTempPrefix  = stateFileName + ".tmp-"
	stateTempPattern = stateTempPrefix + "*"
)

// ErrUnsafeStateDir is returned by Open for a state directory that another
// user could write to. The state file names commands that the worker runs,
// so whoever can write it can run commands as us.
var ErrUnsafeStateDir = errors.New("unsafe state directory")

// DefaultStateDir returns the state directory to use when none is given:
// $CT_SUPERVISE_STATE_DIR if set; /var/lib/ct-supervise for root; otherwise
// $XDG_STATE_HOME/ct-supervise or ~/.local/state/ct-supervise. Every
// consul-template instance of a user thus shares one queue by default.
func DefaultStateDir() (string, error) {
	if dir := os.Getenv("CT_SUPERVISE_STATE_DIR"); dir != "" {
		return dir, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/ct-supervise", nil
	}
	// The XDG base directory spec says to ignore relative paths.
	if xdg := os.Getenv("XDG_STATE_HOME"); xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(xdg, "ct-supervise"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the default state directory (set CT_SUPERVISE_STATE_DIR): %w", err)
	}
	return filepath.Join(home, ".local", "state", "ct-supervise"), nil
}

// Store is a state directory: the state file and the lock that serializes
// access to it among all the processes (register, exec, the worker) that
// share it. A Store holds no open files between calls, so it is cheap to
// keep and safe to use from several goroutines.
type Store struct {
	dir string
}

// Open opens the state directory dir, creating it (mode 0700) if needed.
// It refuses, with an error wrapping ErrUnsafeStateDir, a path that is not
// a directory, a directory that its group or others can write to, and one
// owned by another user than the effective uid.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("state directory: empty path")
	}
	dir = filepath.Clean(dir)
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating state directory: %w", err)
		}
		fi, err = os.Stat(dir)
	}
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := checkStateDir(dir, fi); err != nil {
		return nil, err
	}
	return &Store{dir: dir}, nil
}

// checkStateDir applies Open's safety rules to the stat of dir.
func checkStateDir(dir string, fi fs.FileInfo) error {
	if !fi.IsDir() {
		return fmt.Errorf("%w %s: not a directory", ErrUnsafeStateDir, dir)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w %s: writable by its group or by others (mode %#o); chmod go-w it", ErrUnsafeStateDir, dir, perm)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w %s: cannot tell its owner", ErrUnsafeStateDir, dir)
	}
	if euid := os.Geteuid(); int64(st.Uid) != int64(euid) {
		return fmt.Errorf("%w %s: owned by uid %d, not by us (uid %d)", ErrUnsafeStateDir, dir, st.Uid, euid)
	}
	return nil
}

// Dir returns the state directory.
func (s *Store) Dir() string { return s.dir }

// Path returns the path of the named file in the state directory.
func (s *Store) Path(name string) string { return filepath.Join(s.dir, name) }

// Load returns a consistent snapshot of the state. A missing state file is
// an empty state: nothing has been declared yet.
func (s *Store) Load() (*State, error) {
	unlock, err := s.lock(syscall.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.read()
}

// Update runs fn on the current state under the exclusive directory lock
// and saves the result if fn returns nil and changed anything. An error from
// fn is returned as is, with nothing written. The state file is replaced
// atomically: after a crash at any instant it holds either the old or the
// new state.
func (s *Store) Update(fn func(*State) error) error {
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()

	st, err := s.read()
	if err != nil {
		return err
	}
	before, err := encodeState(st)
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	after, err := encodeState(st)
	if err != nil {
		return err
	}
	// Templates re-register their actions on every render; comparing the
	// encodings makes an unchanged state cost no write and no fsync.
	if bytes.Equal(before, after) {
		return nil
	}
	return s.write(after)
}

// Register upserts d under d.Name and marks it pending, clearing any
// recorded error of that name. DeclaredAt is set to now only when the
// declaration is new or changed. d is finished again (a no-op for a
// finished declaration) so that nothing invalid reaches the state file.
// Registering an identical declaration that is already pending writes
// nothing. Reports whether the declaration was new or changed.
func (s *Store) Register(d plugin.Declaration, now time.Time) (changed bool, err error) {
	if err := d.Finish(); err != nil {
		return false, err
	}
	err = s.Update(func(st *State) error {
		a := st.Actions[d.Name]
		switch {
		case a == nil:
			a = &Action{}
			st.Actions[d.Name] = a
			changed = true
		case !a.Declaration.Equal(d):
			changed = true
		}
		if changed {
			a.Declaration = d
			a.DeclaredAt = now
		}
		a.Pending = true
		delete(st.Errors, d.Name)
		return nil
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// RecordError records a rejected declaration's message under name ("" when
// no name could be read), leaving any good declaration of that name as it
// is but marking it pending: the render goes on with the last good
// declaration, so the render's exec must run it as a good one would have
// been. At is when the message was first recorded: the same rejection
// repeated on every render writes nothing.
func (s *Store) RecordError(name, message string, now time.Time) error {
	// JSON would replace invalid UTF-8 on the way to disk, and the entry
	// would never compare equal to its own repeat.
	name = strings.ToValidUTF8(name, "\uFFFD")
	message = strings.ToValidUTF8(plugin.OneLine(message), "\uFFFD")
	return s.Update(func(st *State) error {
		if a := st.Actions[name]; a != nil {
			a.Pending = true
		}
		if old, ok := st.Errors[name]; ok && old.Message == message {
			return nil
		}
		st.Errors[name] = DeclError{Message: message, At: now}
		return nil
	})
}

// lock takes the directory lock (LOCK_SH or LOCK_EX) on a fresh file
// descriptor and returns the function that releases it. flock locks belong
// to the open file, so two calls conflict even within one process. The OS
// drops the lock when the process dies, so a crash never wedges the
// directory.
func (s *Store) lock(how int) (unlock func(), err error) {
	path := s.Path(stateLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	// Closing the descriptor releases the lock.
	return func() { f.Close() }, nil
}

// read loads the state file; the caller holds the directory lock.
func (s *Store) read() (*State, error) {
	path := s.Path(stateFileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return NewState(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	st, err := decodeState(data)
	if err != nil {
		// A damaged file is reported, never reset: resetting would forget
		// queued runs without a trace.
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	return st, nil
}

// decodeState parses a state file.
func decodeState(data []byte) (*State, error) {
	// The version is read first, so that a file from a newer release gets
	// a message saying so rather than whatever its new layout trips over.
	var v struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("damaged, not valid JSON (%v); move it aside to start afresh", err)
	}
	switch {
	case v.Version > StateVersion:
		return nil, fmt.Errorf("version %d is newer than this ct-supervise understands (%d); upgrade it", v.Version, StateVersion)
	case v.Version < 1:
		return nil, fmt.Errorf("damaged, no valid version (got %d); move it aside to start afresh", v.Version)
	}

	st := NewState()
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("damaged (%v); move it aside to start afresh", err)
	}
	if st.Actions == nil {
		st.Actions = map[string]*Action{}
	}
	if st.Errors == nil {
		st.Errors = map[string]DeclError{}
	}
	for name, a := range st.Actions {
		if a == nil {
			return nil, fmt.Errorf("damaged, action %q is null; move it aside to start afresh", name)
		}
	}
	return st, nil
}

// encodeState renders the state file. Indented, because operators read it;
// map keys are sorted by encoding/json, so equal states encode equally.
func encodeState(st *State) ([]byte, error) {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding state: %w", err)
	}
	return append(data, '\n'), nil
}

// write replaces the state file with data; the caller holds the exclusive
// directory lock. The data is made durable before the rename and the rename
// before returning, so that a crash or power loss leaves the old file or
// the new one, never a mix or an empty file.
func (s *Store) write(data []byte) error {
	s.removeTemps()

	f, err := os.CreateTemp(s.dir, stateTempPattern) // mode 0600
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			os.Remove(tmp)
		}
	}()

	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := os.Rename(tmp, s.Path(stateFileName)); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	renamed = true
	return syncDir(s.dir)
}

// removeTemps deletes temporary files that a process killed mid-write left
// behind. Only called under the exclusive lock, when no write is under way.
func (s *Store) removeTemps() {
	// Not filepath.Glob: the directory path may contain glob characters.
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), stateTempPrefix) {
			_ = os.Remove(s.Path(e.Name()))
		}
	}
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing state directory: %w", err)
	}
	return nil
}
