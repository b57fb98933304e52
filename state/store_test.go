package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"ct-supervise/plugin"
)

// openTemp opens a store in a fresh directory.
func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// decl returns a finished declaration named name running cmd.
func decl(t *testing.T, name, cmd string) plugin.Declaration {
	t.Helper()
	d := plugin.DefaultDeclaration()
	d.Name = name
	d.Command = []string{cmd}
	if err := d.Finish(); err != nil {
		t.Fatal(err)
	}
	return d
}

// statState stats the state file, failing the test if it is missing.
func statState(t *testing.T, s *Store) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(s.Path(stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// dirNames lists the state directory.
func dirNames(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestDefaultStateDir(t *testing.T) {
	rootDefault := os.Geteuid() == 0
	cases := []struct {
		name                    string
		ctDir, stateDir, xdg    string
		want                    string
		wantBuiltin, wantNoHome bool
	}{
		{name: "CT_SUPERVISE_STATE_DIR first", ctDir: "/explicit/dir", stateDir: "/var/lib/sd", want: "/explicit/dir"},
		{name: "then systemd's STATE_DIRECTORY", stateDir: "/var/lib/sd", xdg: "/xdg/state", want: "/var/lib/sd"},
		{name: "the first of several StateDirectory= paths", stateDir: "/var/lib/a:/var/lib/b", want: "/var/lib/a"},
		{name: "then XDG_STATE_HOME", xdg: "/xdg/state", want: "/xdg/state/ct-supervise", wantBuiltin: true},
		{name: "a relative XDG_STATE_HOME is ignored", xdg: "relative/ignored", want: "/home/someone/.local/state/ct-supervise", wantBuiltin: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CT_SUPERVISE_STATE_DIR", tc.ctDir)
			t.Setenv("STATE_DIRECTORY", tc.stateDir)
			t.Setenv("XDG_STATE_HOME", tc.xdg)
			t.Setenv("HOME", "/home/someone")
			want := tc.want
			if tc.wantBuiltin && rootDefault {
				want = "/var/lib/ct-supervise"
			}
			got, builtin, err := DefaultStateDir()
			if err != nil || got != want || builtin != tc.wantBuiltin {
				t.Fatalf("DefaultStateDir() = %q, %v, %v; want %q, %v", got, builtin, err, want, tc.wantBuiltin)
			}
		})
	}
}

func TestOpenCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b", "state")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	if got, want := s.Path("worker.lock"), filepath.Join(dir, "worker.lock"); got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("created with mode %#o, want 0700", perm)
	}
	// Opening again, and opening a safe existing directory, both work.
	if _, err := Open(dir); err != nil {
		t.Errorf("reopening: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Errorf("opening a 0755 directory: %v", err)
	}
}

func TestOpenRefusesUnsafe(t *testing.T) {
	cases := []struct {
		name    string
		setup   func(t *testing.T, path string)
		mention string
	}{
		{"world-writable", func(t *testing.T, p string) { mkdirMode(t, p, 0o777) }, "writable"},
		{"group-writable", func(t *testing.T, p string) { mkdirMode(t, p, 0o770) }, "writable"},
		{"a file", func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a directory"},
		{"another owner", func(t *testing.T, p string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory away")
			}
			mkdirMode(t, p, 0o700)
			if err := os.Chown(p, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state")
			tc.setup(t, path)
			_, err := Open(path)
			if !errors.Is(err, ErrUnsafeStateDir) {
				t.Fatalf("Open: %v, want ErrUnsafeStateDir", err)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not name the path and %q", err, tc.mention)
			}
		})
	}
}

func mkdirMode(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	// Chmod, since Mkdir's mode is filtered by the umask.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestLoadEmpty(t *testing.T) {
	s := openTemp(t)
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != StateVersion || st.Actions == nil || st.Errors == nil || len(st.Actions) != 0 || len(st.Errors) != 0 {
		t.Fatalf("Load of an empty directory = %+v", st)
	}
	if _, err := os.Stat(s.Path(stateFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load created the state file: %v", err)
	}
}

func TestRegisterWritesOnlyChanges(t *testing.T) {
	s := openTemp(t)
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	d := decl(t, "nginx", "nginx -s reload")

	changed, err := s.Register(d, t0)
	if err != nil || !changed {
		t.Fatalf("first Register: changed=%v err=%v", changed, err)
	}
	fi := statState(t, s)
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("state file mode %#o, want 0600", perm)
	}

	changed, err = s.Register(d, t0.Add(time.Minute))
	if err != nil || changed {
		t.Fatalf("identical Register: changed=%v err=%v", changed, err)
	}
	if !os.SameFile(fi, statState(t, s)) {
		t.Fatal("an identical Register rewrote the state file")
	}

	// exec clears the mark; registering again must set it, without
	// counting as a change of declaration.
	if err := s.Update(func(st *State) error { st.Actions["nginx"].Pending = false; return nil }); err != nil {
		t.Fatal(err)
	}
	changed, err = s.Register(d, t0.Add(2*time.Minute))
	if err != nil || changed {
		t.Fatalf("Register after exec: changed=%v err=%v", changed, err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	a := st.Actions["nginx"]
	if a == nil || !a.Pending || !a.DeclaredAt.Equal(t0) || !a.Declaration.Equal(d) || a.Seq != 0 || a.Done != 0 {
		t.Fatalf("after re-register: %+v", a)
	}

	d2 := d
	d2.Limit = 2
	changed, err = s.Register(d2, t0.Add(3*time.Minute))
	if err != nil || !changed {
		t.Fatalf("changed Register: changed=%v err=%v", changed, err)
	}
	st, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Actions["nginx"]; a.Declaration.Limit != 2 || !a.DeclaredAt.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("after change: %+v", a)
	}
}

func TestRegisterRejectsInvalid(t *testing.T) {
	s := openTemp(t)
	d := decl(t, "x", "true")
	d.Limit = 0
	if _, err := s.Register(d, time.Now()); !errors.Is(err, plugin.ErrInvalidDeclaration) {
		t.Fatalf("Register of an invalid declaration: %v", err)
	}
	if names := dirNames(t, s); slices.Contains(names, stateFileName) {
		t.Fatal("an invalid declaration was written")
	}
}

func TestRecordRejection(t *testing.T) {
	s := openTemp(t)
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	d := decl(t, "nginx", "nginx -s reload")
	if _, err := s.Register(d, t0); err != nil {
		t.Fatal(err)
	}

	if _, err := s.RecordRejection("nginx", "invalid declaration: bad\nthing", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRejection("", "invalid declaration: malformed JSON", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	fi := statState(t, s)
	// The same rejection on the next render writes nothing.
	if _, err := s.RecordRejection("nginx", "invalid declaration: bad\nthing", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, statState(t, s)) {
		t.Error("a repeated RecordRejection rewrote the state file")
	}

	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if a := st.Actions["nginx"]; a == nil || !a.Declaration.Equal(d) || !a.DeclaredAt.Equal(t0) {
		t.Fatalf("RecordRejection touched the good declaration: %+v", a)
	}
	// The render goes on with the last good declaration: its exec must
	// find it pending even after an exec cleared the mark.
	if err := s.Update(func(st *State) error { _, err := st.Enqueue(nil); return err }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecordRejection("nginx", "invalid declaration: bad\nthing", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if st, err = s.Load(); err != nil {
		t.Fatal(err)
	}
	if !st.Actions["nginx"].Pending {
		t.Fatal("a rejected declaration must leave the last good one pending")
	}
	e, ok := st.Errors["nginx"]
	if !ok || strings.ContainsAny(e.Message, "\r\n") || !strings.Contains(e.Message, "bad") || !e.At.Equal(t0.Add(time.Minute)) {
		t.Fatalf("recorded error = %+v", e)
	}
	if _, ok := st.Errors[""]; !ok {
		t.Fatal("an error without a name was not recorded")
	}

	// A good declaration clears its own error only.
	if _, err := s.Register(d, t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if st, err = s.Load(); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Errors["nginx"]; ok {
		t.Error("Register did not clear the error of its name")
	}
	if _, ok := st.Errors[""]; !ok {
		t.Error("Register cleared another name's error")
	}
}

func TestUpdateErrorWritesNothing(t *testing.T) {
	s := openTemp(t)
	boom := errors.New("boom")

	// Empty directory: no state file appears.
	err := s.Update(func(st *State) error {
		st.Seq = 99
		return boom
	})
	if err != boom {
		t.Fatalf("Update returned %v, want the fn error as is", err)
	}
	if names := dirNames(t, s); slices.Contains(names, stateFileName) {
		t.Fatal("a failed Update created the state file")
	}

	// Existing state: left untouched.
	if _, err := s.Register(decl(t, "a", "true"), time.Now()); err != nil {
		t.Fatal(err)
	}
	fi := statState(t, s)
	before, _ := os.ReadFile(s.Path(stateFileName))
	err = s.Update(func(st *State) error {
		delete(st.Actions, "a")
		return boom
	})
	if err != boom {
		t.Fatalf("Update returned %v, want the fn error as is", err)
	}
	after, _ := os.ReadFile(s.Path(stateFileName))
	if !os.SameFile(fi, statState(t, s)) || string(before) != string(after) {
		t.Fatal("a failed Update changed the state file")
	}

	// No change: no write either.
	if err := s.Update(func(*State) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, statState(t, s)) {
		t.Fatal("an Update that changed nothing rewrote the state file")
	}
}

func TestDamagedStateFile(t *testing.T) {
	good, err := encodeState(&State{Version: StateVersion, Actions: map[string]*Action{
		"a": {Declaration: plugin.DefaultDeclaration(), Pending: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		content string
		mention string
	}{
		{"truncated", string(good[:len(good)/2]), "not valid JSON"},
		{"garbage", "\x00\x01garbage", "not valid JSON"},
		{"empty", "", "not valid JSON"},
		{"no version", `{"actions":{}}`, "no valid version"},
		{"newer version", `{"version":2,"actions":[1,2,3]}`, "version 2 is newer"},
		{"wrong types", `{"version":1,"actions":[]}`, "damaged"},
		{"null action", `{"version":1,"actions":{"a":null}}`, `action "a" is null`},
		{"trailing data", string(good) + "{}", "not valid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t)
			path := s.Path(stateFileName)
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			check := func(op string, err error) {
				t.Helper()
				if err == nil {
					t.Fatalf("%s of a damaged state file: no error", op)
				}
				if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("%s: error %q does not name %s and %q", op, err, path, tc.mention)
				}
			}
			_, err := s.Load()
			check("Load", err)
			_, err = s.Register(decl(t, "b", "true"), time.Now())
			check("Register", err)
			check("Update", s.Update(func(*State) error { return nil }))
			_, err = s.RecordRejection("b", "x", time.Now())
			check("RecordRejection", err)
			if got, _ := os.ReadFile(path); string(got) != tc.content {
				t.Fatal("the damaged state file was overwritten")
			}
		})
	}
}

func TestLoadFillsMissingMaps(t *testing.T) {
	s := openTemp(t)
	if err := os.WriteFile(s.Path(stateFileName), []byte(`{"version":1,"seq":4}`), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if st.Seq != 4 || st.Actions == nil || st.Errors == nil {
		t.Fatalf("Load = %+v", st)
	}
}

func TestStaleTempFilesRemoved(t *testing.T) {
	s := openTemp(t)
	stale := s.Path(stateFileName + ".tmp-12345")
	if err := os.WriteFile(stale, []byte("half a st"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(decl(t, "a", "true"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale temporary file left behind: %v", err)
	}
}

// The directory lock must exclude a second descriptor in the same process,
// or the concurrency test below would prove nothing.
func TestLockExcludes(t *testing.T) {
	s := openTemp(t)
	unlock, err := s.lock(syscall.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Load()
		done <- err
	}()
	select {
	case err := <-done:
		unlock()
		t.Fatalf("Load did not wait for the exclusive lock (err %v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Load still blocked after the lock was released")
	}
}

func TestConcurrentRegister(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	const (
		workers = 200
		names   = 5
	)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each caller opens its own Store, as separate register
			// processes would.
			s, err := Open(dir)
			if err != nil {
				t.Error(err)
				return
			}
			d := plugin.DefaultDeclaration()
			d.Name = fmt.Sprintf("act%d", i%names)
			d.Command = []string{fmt.Sprintf("echo %d", i%7)}
			d.Limit = 1 + i%3
			if _, err := s.Register(d, time.Now()); err != nil {
				t.Error(err)
			}
			if i%10 == 0 {
				if _, err := s.Load(); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(s.Path(stateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var direct State
	if err := json.Unmarshal(raw, &direct); err != nil {
		t.Fatalf("state file is not valid JSON: %v", err)
	}
	st, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Actions) != names {
		t.Fatalf("%d actions, want %d", len(st.Actions), names)
	}
	for i := range names {
		name := fmt.Sprintf("act%d", i)
		a := st.Actions[name]
		if a == nil || a.Declaration.Name != name || !a.Pending {
			t.Errorf("action %s = %+v", name, a)
		}
		if n := strings.Count(string(raw), fmt.Sprintf("%q: {", name)); n != 1 {
			t.Errorf("action %s appears %d times in the state file", name, n)
		}
	}
	entries := dirNames(t, s)
	slices.Sort(entries)
	if want := []string{stateFileName, stateLockName}; !slices.Equal(entries, want) {
		t.Errorf("state directory holds %q, want %q", entries, want)
	}
}
