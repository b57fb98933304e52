package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

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

	// tempInfix follows a file's name in the names of the temporary files
	// ReplaceFile writes before renaming them over it.
	tempInfix = ".tmp-"

	// stateTempPrefix begins the names of the temporary files new states
	// are written to before they are renamed over the state file.
	stateTempPrefix = stateFileName + tempInfix
)

// ErrUnsafeStateDir is returned by Open for a state directory that another
// user could write to, swap or point elsewhere. The state file names
// commands that the worker runs, so whoever can write it, or replace the
// directory holding it, can run commands as us.
var ErrUnsafeStateDir = errors.New("unsafe state directory")

// ErrNoDefaultStateDir is returned by DefaultStateDir when no state
// directory is configured and none of the built-in defaults can be used (a
// service user whose home is /nonexistent). Callers run by consul-template
// report it and let the render go on.
var ErrNoDefaultStateDir = errors.New("no usable state directory")

// DefaultStateDir returns the state directory to use when none is given,
// the first of: $CT_SUPERVISE_STATE_DIR; $STATE_DIRECTORY (the first of
// its colon-separated paths), which systemd's StateDirectory= sets;
// /var/lib/ct-supervise for root; otherwise $XDG_STATE_HOME/ct-supervise or
// ~/.local/state/ct-supervise. Every consul-template instance of a user
// thus shares one queue by default. builtin reports that the answer is one
// of the last three, which nobody configured.
func DefaultStateDir() (dir string, builtin bool, err error) {
	if dir := os.Getenv("CT_SUPERVISE_STATE_DIR"); dir != "" {
		return dir, false, nil
	}
	// systemd joins several StateDirectory= entries with ':'; ours is the
	// first, as in the README's units.
	if sd, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":"); sd != "" {
		return sd, false, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/ct-supervise", true, nil
	}
	// The XDG base directory spec says to ignore relative paths.
	if xdg := os.Getenv("XDG_STATE_HOME"); xdg != "" && filepath.IsAbs(xdg) {
		return filepath.Join(xdg, "ct-supervise"), true, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", true, fmt.Errorf("%w: %v; set StateDirectory= (systemd), CT_SUPERVISE_STATE_DIR or -state-dir", ErrNoDefaultStateDir, err)
	}
	return filepath.Join(home, ".local", "state", "ct-supervise"), true, nil
}

// Store is an open state directory: the state file and the lock that
// serializes access to it among all the processes (register, exec, the
// worker) that share it. The directory is opened once, and every file in
// it is opened relative to that descriptor without following symlinks, so
// renaming the directory or re-pointing a path to it afterwards changes
// nothing for us. Safe to use from several goroutines; Close releases the
// descriptor.
type Store struct {
	dir string   // the path it was opened by, for messages and for the worker
	d   *os.File // the directory itself
	fd  int      // d's descriptor, for the *at calls

	// skimmed is the last stateSkim read and the identity of the file it
	// came from, so that register's two looks at the state cost one read.
	mu        sync.Mutex
	skimmed   *stateSkim
	skimmedID fileID
}

// Open opens the state directory dir, creating it and any missing parent
// (mode 0700) if needed. It refuses, with an error wrapping
// ErrUnsafeStateDir:
//   - a state directory that is a symlink, is not a directory, is owned by
//     another user than the effective uid, or that its group or others can
//     write to;
//   - a path through a directory owned by neither root nor us, or that its
//     group or others can write to, unless that directory is sticky (like
//     /tmp) and the entry we go through in it is ours or root's. Otherwise
//     someone else could swap the state directory, or a directory above
//     it, for theirs.
//
// Symlinks above the state directory are followed only where they pass the
// same rules.
func Open(dir string) (*Store, error) { return open(dir, true) }

// OpenExisting is Open without creating anything: a missing directory is
// an error wrapping fs.ErrNotExist. For readers such as status.
func OpenExisting(dir string) (*Store, error) { return open(dir, false) }

func open(dir string, create bool) (*Store, error) {
	if dir == "" {
		return nil, errors.New("state directory: empty path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("state directory %q: %w", dir, err)
	}
	if abs == "/" {
		return nil, fmt.Errorf("state directory: / is no place for one")
	}
	fd, err := walkDir(abs, create)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("state directory %s: %w", abs, err)
	}
	if err := checkStateDir(abs, &st); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Store{dir: abs, d: os.NewFile(uintptr(fd), abs), fd: fd}, nil
}

// checkStateDir applies Open's rules to the state directory's own stat.
func checkStateDir(dir string, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%w %s: not a directory", ErrUnsafeStateDir, dir)
	}
	if perm := st.Mode & 0o777; perm&0o022 != 0 {
		return fmt.Errorf("%w %s: writable by its group or by others (mode %#o); chmod go-w it", ErrUnsafeStateDir, dir, perm)
	}
	if euid := os.Geteuid(); int64(st.Uid) != int64(euid) {
		return fmt.Errorf("%w %s: owned by uid %d, not by us (uid %d)", ErrUnsafeStateDir, dir, st.Uid, euid)
	}
	return nil
}

// Close releases the directory descriptor. The Store must not be used
// afterwards.
func (s *Store) Close() error { return s.d.Close() }

// Dir returns the state directory's absolute path, as given to Open. It is
// for messages and for starting the worker (which opens it afresh with the
// same checks); files are opened with OpenFile, never by path.
func (s *Store) Dir() string { return s.dir }

// Path returns the path of the named file in the state directory, for
// messages.
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
	data, err := s.readBytes()
	if err != nil {
		return err
	}
	return s.updateLocked(data, fn)
}

// updateLocked is Update once the exclusive lock is held and the state
// file's bytes (nil: no file yet) are read.
func (s *Store) updateLocked(data []byte, fn func(*State) error) error {
	st, err := s.decode(data)
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
	// Templates re-register their actions on every render; comparing with
	// the file as read makes an unchanged state cost no write and no fsync.
	if bytes.Equal(data, after) {
		return nil
	}
	return s.write(after)
}

// Register upserts d under d.Name and marks it pending, clearing any
// recorded error of that name, and a reported error with no name (see
// DeclError.Reported). DeclaredAt is set to now only when the declaration
// is new or changed. d is finished again (a no-op for a finished
// declaration) so that nothing invalid reaches the state file.
// Registering an identical declaration that is already pending writes
// nothing, and decodes only the part of the state file it needs: templates
// register on every render, and that must stay cheap however many actions
// the state holds. Reports whether the declaration was new or changed.
func (s *Store) Register(d plugin.Declaration, now time.Time) (changed bool, err error) {
	if err := d.Finish(); err != nil {
		return false, err
	}
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		return false, err
	}
	defer unlock()
	sk, err := s.skimFile()
	if err != nil {
		return false, err
	}
	if sk != nil && sk.registered(d) {
		return false, nil
	}
	data, err := s.readBytes()
	if err != nil {
		return false, err
	}
	err = s.updateLocked(data, func(st *State) error {
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
		if e, ok := st.Errors[""]; ok && e.Reported {
			delete(st.Errors, "")
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// stateSkim is the part of the state file that Register's common case and
// QueueLen need. Declarations stay raw: only the one asked about is decoded.
type stateSkim struct {
	Version int                   `json:"version"`
	Actions map[string]actionSkim `json:"actions"`
	Errors  map[string]DeclError  `json:"errors"`
}

// actionSkim holds what registered and QueueLen read of an Action;
// QueueLen's count must stay Action.Queued's rule.
type actionSkim struct {
	Declaration json.RawMessage `json:"declaration"`
	Pending     bool            `json:"pending"`
	Seq         uint64          `json:"seq"`
	Done        uint64          `json:"done"`
}

// skim decodes data into a stateSkim; ok is false for anything that the
// full decoder should look at (and report).
func skim(data []byte) (sk stateSkim, ok bool) {
	if data == nil || json.Unmarshal(data, &sk) != nil || sk.Version < 1 || sk.Version > StateVersion {
		return sk, false
	}
	return sk, true
}

// fileID tells one version of the state file from another: it is only
// ever replaced whole, by rename, so a new version is a new inode, and a
// reused inode number comes with new times.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

// skimFile returns the stateSkim of the state file, read again only when
// the file changed since the last one; nil when there is no file or it is
// one for the full decoder. The caller holds the directory lock.
func (s *Store) skimFile() (*stateSkim, error) {
	f, err := s.OpenFile(stateFileName, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	id := fileID{dev: uint64(st.Dev), ino: uint64(st.Ino), size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
	s.mu.Lock()
	cached := s.skimmed
	hit := cached != nil && s.skimmedID == id
	s.mu.Unlock()
	if hit {
		return cached, nil
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	sk, ok := skim(data)
	if !ok {
		return nil, nil
	}
	s.mu.Lock()
	s.skimmed, s.skimmedID = &sk, id
	s.mu.Unlock()
	return &sk, nil
}

// registered reports whether registering d would change nothing: the same
// declaration, already pending, with no error to clear.
func (sk *stateSkim) registered(d plugin.Declaration) bool {
	a, ok := sk.Actions[d.Name]
	if !ok || !a.Pending {
		return false
	}
	if _, ok := sk.Errors[d.Name]; ok {
		return false
	}
	if e, ok := sk.Errors[""]; ok && e.Reported {
		return false
	}
	var old plugin.Declaration
	return json.Unmarshal(a.Declaration, &old) == nil && old.Equal(d)
}

// QueueLen returns how many actions are queued, reading only what it needs
// of the state file.
func (s *Store) QueueLen() (int, error) {
	unlock, err := s.lock(syscall.LOCK_SH)
	if err != nil {
		return 0, err
	}
	defer unlock()
	sk, err := s.skimFile()
	if err != nil {
		return 0, err
	}
	if sk == nil { // no file, or one the full decoder reports on
		st, err := s.read()
		if err != nil {
			return 0, err
		}
		return st.QueueLen(), nil
	}
	n := 0
	for _, a := range sk.Actions {
		if (&Action{Seq: a.Seq, Done: a.Done}).Queued() {
			n++
		}
	}
	return n, nil
}

// Bounds on rejected declarations, which come from data anyone with write
// access to a KV key controls: without them, names and messages of any
// size, under ever new names, made state.json (read on every render) grow
// without end.
const (
	// MaxRejections is how many rejected declarations are kept: the most
	// recent ones.
	MaxRejections = 20

	// maxRejectionMessage bounds a rejection's message, in bytes.
	maxRejectionMessage = 512
)

// RecordRejection records a rejected declaration's message under name (""
// when no name could be read), leaving any good declaration of that name as
// it is but marking it pending: the render goes on with the last good
// declaration, so the render's exec must run it as a good one would have
// been. The name is cut to plugin.MaxNameLength and the message to 512
// bytes, and only the MaxRejections most recent rejections are kept. At is
// when the message was first recorded: the same rejection repeated on
// every render writes nothing, unless exec has reported it since. news
// reports whether the rejection is news: not recorded before with this
// message, or reported since. Callers log it once, not on every render pass.
func (s *Store) RecordRejection(name, message string, now time.Time) (news bool, err error) {
	name = truncate(strings.ToValidUTF8(name, "\uFFFD"), plugin.MaxNameLength)
	// JSON would replace invalid UTF-8 on the way to disk, and the entry
	// would never compare equal to its own repeat.
	message = truncate(strings.ToValidUTF8(plugin.OneLine(message), "\uFFFD"), maxRejectionMessage)
	err = s.Update(func(st *State) error {
		if a := st.Actions[name]; a != nil {
			a.Pending = true
		}
		if old, ok := st.Errors[name]; ok && old.Message == message {
			news = old.Reported
			old.Reported = false
			st.Errors[name] = old
			return nil
		}
		news = true
		st.Errors[name] = DeclError{Message: message, At: now}
		pruneRejections(st.Errors, MaxRejections)
		return nil
	})
	return news, err
}

// ReportRejections returns the rejected declarations, by name, and marks
// them reported: exec repeats them into consul-template's log, which shows
// a command's output but not a plugin's warnings.
func (st *State) ReportRejections() map[string]DeclError {
	out := make(map[string]DeclError, len(st.Errors))
	for name, e := range st.Errors {
		out[name] = e
		e.Reported = true
		st.Errors[name] = e
	}
	return out
}

// pruneRejections keeps the max most recent entries of errs.
func pruneRejections(errs map[string]DeclError, max int) {
	for len(errs) > max {
		oldest, first := "", true
		for name, e := range errs {
			o := errs[oldest]
			if first || e.At.Before(o.At) || (e.At.Equal(o.At) && name < oldest) {
				oldest, first = name, false
			}
		}
		delete(errs, oldest)
	}
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// ErrBusy is returned by Forget for an action that is queued or running,
// unless forced.
var ErrBusy = errors.New("action is queued or running")

// Forget removes the named actions and their rejected declarations from
// the state: actions no template declares any more. An action that is
// queued or running is refused with ErrBusy unless force: forgetting it
// would drop a pending reload. A name with neither an action nor a
// rejection is an error. A running action, forced, finishes its run; the
// worker then finds it gone.
func (s *Store) Forget(names []string, force bool) error {
	return s.Update(func(st *State) error {
		for _, name := range names {
			a, declared := st.Actions[name]
			_, rejected := st.Errors[name]
			if !declared && !rejected {
				return fmt.Errorf("%w: no action or rejected declaration %q", ErrUnknownAction, name)
			}
			if declared && !force && (a.Queued() || a.Running) {
				return fmt.Errorf("%w: %q (-force forgets it all the same, dropping its pending run)", ErrBusy, name)
			}
			delete(st.Actions, name)
			delete(st.Errors, name)
		}
		return nil
	})
}

// ForgetRejections removes every rejected-declaration record.
func (s *Store) ForgetRejections() error {
	return s.Update(func(st *State) error {
		clear(st.Errors)
		return nil
	})
}

// lock takes the directory lock (LOCK_SH or LOCK_EX) on a fresh file
// descriptor and returns the function that releases it. flock locks belong
// to the open file, so two calls conflict even within one process. The OS
// drops the lock when the process dies, so a crash never wedges the
// directory.
func (s *Store) lock(how int) (unlock func(), err error) {
	f, err := s.OpenFile(stateLockName, os.O_RDWR|os.O_CREATE, 0o600)
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
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	// Closing the descriptor releases the lock.
	return func() { f.Close() }, nil
}

// read loads the state file; the caller holds the directory lock.
func (s *Store) read() (*State, error) {
	data, err := s.readBytes()
	if err != nil {
		return nil, err
	}
	return s.decode(data)
}

// readBytes returns the state file's contents, nil when there is none yet;
// the caller holds the directory lock.
func (s *Store) readBytes() ([]byte, error) {
	f, err := s.OpenFile(stateFileName, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	return data, nil
}

// decode parses the state file's contents as readBytes returned them.
func (s *Store) decode(data []byte) (*State, error) {
	if data == nil {
		return NewState(), nil
	}
	st, err := decodeState(data)
	if err != nil {
		// A damaged file is reported, never reset: resetting would forget
		// queued runs without a trace.
		return nil, fmt.Errorf("state file %s: %w", s.Path(stateFileName), err)
	}
	return st, nil
}

// decodeState parses a state file.
func decodeState(data []byte) (*State, error) {
	st := &State{} // no version unless the file has one
	err := json.Unmarshal(data, st)
	if err != nil || st.Version < 1 || st.Version > StateVersion {
		// The version is read on its own, so that a file from a newer
		// release gets a message saying so rather than whatever its new
		// layout trips over.
		var v struct {
			Version int `json:"version"`
		}
		if verr := json.Unmarshal(data, &v); verr != nil {
			return nil, fmt.Errorf("damaged, not valid JSON (%v); move it aside to start afresh", verr)
		}
		switch {
		case v.Version > StateVersion:
			return nil, fmt.Errorf("version %d is newer than this ct-supervise understands (%d); upgrade it", v.Version, StateVersion)
		case v.Version < 1:
			return nil, fmt.Errorf("damaged, no valid version (got %d); move it aside to start afresh", v.Version)
		}
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
// directory lock.
func (s *Store) write(data []byte) error {
	s.removeTemps()
	if err := s.ReplaceFile(stateFileName, data); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return nil
}

// ReplaceFile replaces the file name in the state directory with data,
// mode 0600. The data is written aside and made durable before the rename,
// and the rename before returning, so that a crash or power loss leaves the
// old file or the new one, never a mix or an empty file. All of it goes
// through the directory's descriptor, never through a symlink. Concurrent
// writers of name need a lock of their own to order them.
func (s *Store) ReplaceFile(name string, data []byte) error {
	tmp := name + tempInfix + strconv.FormatUint(rand.Uint64(), 36)
	f, err := s.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	renamed := false
	defer func() {
		if !renamed {
			f.Close()
			_ = s.remove(tmp)
		}
	}()

	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := s.Rename(tmp, name); err != nil {
		return err
	}
	renamed = true
	if err := unix.Fsync(s.fd); err != nil {
		return fmt.Errorf("syncing the state directory: %w", err)
	}
	return nil
}

// removeTemps deletes temporary files that a process killed mid-write left
// behind. Only called under the exclusive lock, when no write is under way.
func (s *Store) removeTemps() {
	names, err := s.names()
	if err != nil {
		return
	}
	for _, name := range names {
		if strings.HasPrefix(name, stateTempPrefix) {
			_ = s.remove(name)
		}
	}
}
