//go:build !(linux && (amd64 || arm64 || 386 || arm || riscv64 || ppc64 || ppc64le || s390x || loong64))

package lockexec

import (
	"os"
	"os/signal"
)

// signalIgnored reports whether sig is ignored, as far as Go knows.
func signalIgnored(sig os.Signal) bool { return signal.Ignored(sig) }
