package main

import (
	"errors"
	"os"
	"syscall"
)

// storageFault reports whether err is the state directory refusing writes:
// full (ENOSPC, EDQUOT), read-only (EROFS) or failing (EIO). That is not
// the render's fault, and consul-template exits over a failing plugin or
// command: register and exec say what went wrong on stderr (consul-template
// logs a command's) and exit 0. The state file is written atomically, so
// it keeps its previous content; the next render after the directory is
// fixed registers and queues again.
func storageFault(err error) bool {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// probeWritable writes one byte to a new file in dir and removes it. exec
// uses it when it queued nothing: a render whose register could not record
// its declaration (the directory full) leaves nothing pending, and exec is
// the one output of the render that consul-template logs. The file is
// created exclusively (O_EXCL never follows a symlink).
func probeWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write([]byte{0}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
