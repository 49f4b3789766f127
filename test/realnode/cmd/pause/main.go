// Command pause is the pod sandbox ("pause") container of the real-kubelet bench, in place of
// registry.k8s.io/pause, which no registry here serves (`make image` packs it as
// registry.k8s.io/pause:3.10). It holds the pod's namespaces by waiting for SIGTERM or SIGINT,
// then exits 0. As PID 1 it also reaps the orphans that are reparented to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited (signals coalesce, so one SIGCHLD may stand for
// several).
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
