//go:build linux && (amd64 || arm64 || 386 || arm || riscv64 || ppc64 || ppc64le || s390x || loong64)

package lockexec

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"
)

// signalIgnored reports whether sig is ignored right now, asking the kernel:
// signal.Ignored only knows about ignores it recorded itself, and after
// signal.Reset a signal ignored at our start is quietly ignored again.
// On these architectures the kernel's struct sigaction begins with the
// handler; SIG_IGN is 1.
func signalIgnored(sig os.Signal) bool {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return false
	}
	var old [8]uintptr // larger than the kernel's struct sigaction
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(s), 0,
		uintptr(unsafe.Pointer(&old[0])), 8, 0, 0)
	if errno != 0 {
		return signal.Ignored(sig)
	}
	return old[0] == 1
}
