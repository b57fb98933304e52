package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks bounds the symlinks followed while opening a state directory,
// as the kernel bounds them for a path (ELOOP).
const maxSymlinks = 40

// walkDir opens the directory at the absolute path abs one component at a
// time, from "/", each relative to the descriptor of the one before and
// never following a symlink implicitly, and checks each directory it
// passes through (see Open). With create, missing components are made
// (mode 0700). It returns the descriptor of the last component.
func walkDir(abs string, create bool) (int, error) {
	fd, err := unix.Open("/", searchFlag|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("state directory %s: opening /: %w", abs, err)
	}
	w := walker{target: abs, at: "/", euid: os.Geteuid()}
	rest := splitPath(abs)
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		next, target, err := w.step(fd, name, len(rest) == 0, create)
		if err != nil {
			unix.Close(fd)
			return -1, err
		}
		if target != "" { // a symlink above the state directory
			if w.links++; w.links > maxSymlinks {
				unix.Close(fd)
				return -1, fmt.Errorf("state directory %s: too many symlinks", abs)
			}
			rest = append(splitPath(target), rest...)
			if path.IsAbs(target) {
				unix.Close(fd)
				if fd, err = unix.Open("/", searchFlag|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
					return -1, fmt.Errorf("state directory %s: opening /: %w", abs, err)
				}
				w.at = "/"
			}
			continue
		}
		unix.Close(fd)
		fd = next
		w.at = path.Join(w.at, name)
	}
	return fd, nil
}

// walker is walkDir's position: the directory path reached so far, for
// messages.
type walker struct {
	target string // the state directory being opened
	at     string // the directory whose descriptor we hold
	euid   int
	links  int
}

// step goes from the directory fd into its entry name. It returns either
// the entry's descriptor, or, for a symlink that is not the last component,
// the link's target to walk instead.
func (w *walker) step(fd int, name string, last, create bool) (next int, target string, err error) {
	var parent unix.Stat_t
	if err := unix.Fstat(fd, &parent); err != nil {
		return -1, "", fmt.Errorf("state directory %s: %s: %w", w.target, w.at, err)
	}
	if parent.Uid != 0 && int64(parent.Uid) != int64(w.euid) {
		return -1, "", fmt.Errorf("%w %s: its parent %s is owned by uid %d, neither root nor us (uid %d), who could swap it", ErrUnsafeStateDir, w.target, w.at, parent.Uid, w.euid)
	}
	// The state directory itself is opened for reading: it is listed and
	// synced. Those above it need only be searched.
	flags := unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC | searchFlag
	if last {
		flags = unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_RDONLY
	}
	next, err = unix.Openat(fd, name, flags, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := unix.Mkdirat(fd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, "", fmt.Errorf("creating state directory %s: %s: %w", w.target, path.Join(w.at, name), err)
		}
		next, err = unix.Openat(fd, name, flags, 0)
	}
	var entry unix.Stat_t
	if err != nil {
		serr := unix.Fstatat(fd, name, &entry, unix.AT_SYMLINK_NOFOLLOW)
		switch {
		case errors.Is(err, unix.ENOENT):
			return -1, "", fmt.Errorf("state directory %s: %w", w.target, fs.ErrNotExist)
		case serr == nil && entry.Mode&unix.S_IFMT == unix.S_IFLNK && last:
			return -1, "", fmt.Errorf("%w %s: a symbolic link; give the directory's real path", ErrUnsafeStateDir, w.target)
		case serr == nil && entry.Mode&unix.S_IFMT == unix.S_IFLNK:
			if err := w.checkEntry(&parent, &entry, name); err != nil {
				return -1, "", err
			}
			target, err := readlinkat(fd, name)
			if err != nil {
				return -1, "", fmt.Errorf("state directory %s: %s: %w", w.target, path.Join(w.at, name), err)
			}
			return -1, target, nil
		case serr == nil && entry.Mode&unix.S_IFMT != unix.S_IFDIR && last:
			return -1, "", fmt.Errorf("%w %s: not a directory", ErrUnsafeStateDir, w.target)
		}
		return -1, "", fmt.Errorf("state directory %s: %s: %w", w.target, path.Join(w.at, name), err)
	}
	if err := unix.Fstat(next, &entry); err != nil {
		unix.Close(next)
		return -1, "", fmt.Errorf("state directory %s: %w", w.target, err)
	}
	if err := w.checkEntry(&parent, &entry, name); err != nil {
		unix.Close(next)
		return -1, "", err
	}
	return next, "", nil
}

// checkEntry refuses an entry that someone else could replace: one in a
// directory that its group or others can write to, unless that directory
// is sticky and the entry is ours or root's, which then only its owner (and
// root) may rename or remove.
func (w *walker) checkEntry(parent, entry *unix.Stat_t, name string) error {
	perm := parent.Mode & 0o7777
	if perm&0o022 == 0 {
		return nil
	}
	if perm&unix.S_ISVTX == 0 {
		return fmt.Errorf("%w %s: its parent %s is writable by its group or by others (mode %#o), who could swap it; chmod go-w it or choose another place", ErrUnsafeStateDir, w.target, w.at, perm)
	}
	if entry.Uid != 0 && int64(entry.Uid) != int64(w.euid) {
		return fmt.Errorf("%w %s: %s is in the shared directory %s but owned by uid %d, neither root nor us (uid %d)", ErrUnsafeStateDir, w.target, path.Join(w.at, name), w.at, entry.Uid, w.euid)
	}
	return nil
}

// readlinkat returns the target of the symlink name in the directory fd.
func readlinkat(fd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// splitPath returns the components of p, without empty ones.
func splitPath(p string) []string {
	var parts []string
	for _, c := range strings.Split(p, "/") {
		if c != "" {
			parts = append(parts, c)
		}
	}
	return parts
}

// OpenFile opens the file name in the state directory, relative to the
// directory's descriptor and without following a symlink: a symlink
// planted in its place (worker.lock pointing at a file of root's) is an
// error wrapping ErrUnsafeStateDir, never truncated or written through.
// name must be a plain file name.
func (s *Store) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	fd, err := unix.Openat(s.fd, name, flag|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%w %s: %s is a symbolic link; remove it", ErrUnsafeStateDir, s.dir, name)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: s.Path(name), Err: err}
	}
	return os.NewFile(uintptr(fd), s.Path(name)), nil
}

// Rename renames the file oldName in the state directory to newName there.
func (s *Store) Rename(oldName, newName string) error {
	if err := checkName(oldName); err != nil {
		return err
	}
	if err := checkName(newName); err != nil {
		return err
	}
	if err := unix.Renameat(s.fd, oldName, s.fd, newName); err != nil {
		return &os.LinkError{Op: "rename", Old: s.Path(oldName), New: s.Path(newName), Err: err}
	}
	return nil
}

// remove deletes the file name from the state directory.
func (s *Store) remove(name string) error {
	if err := unix.Unlinkat(s.fd, name, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: s.Path(name), Err: err}
	}
	return nil
}

// names lists the state directory.
func (s *Store) names() ([]string, error) {
	fd, err := unix.Openat(s.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: s.dir, Err: err}
	}
	d := os.NewFile(uintptr(fd), s.dir)
	defer d.Close()
	return d.Readdirnames(-1)
}

// checkName refuses anything but a plain file name.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
		return fmt.Errorf("state directory: %q is not a file name", name)
	}
	return nil
}
