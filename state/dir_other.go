//go:build !linux

package state

import "golang.org/x/sys/unix"

// searchFlag opens the directories above the state directory. Without
// O_PATH, they must be readable.
const searchFlag = unix.O_RDONLY
