package state

import "golang.org/x/sys/unix"

// searchFlag opens the directories above the state directory: O_PATH needs
// only search permission on them, as resolving a path does, not read
// permission (a 0711 parent).
const searchFlag = unix.O_PATH
