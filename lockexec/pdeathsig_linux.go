package lockexec

import "syscall"

// setParentDeathSignal asks the kernel to SIGKILL the command when the
// thread that started it ends (see Start for why that thread lives as long
// as we do). SIGKILL rather than SIGTERM: once we are dead nobody enforces a
// kill grace, and a command that traps SIGTERM would run on unsupervised.
// It reaches the command's first process only; the next worker stops what
// is left through the process group (Options.OnStarted).
func setParentDeathSignal(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGKILL
}
