package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Runner runs one command (iptables, iptables-restore, iptables-save, conntrack) and returns
// its standard output. It is the only way the Backend reaches the kernel, so tests can run
// every command inside a network namespace (NetnsRunner) or against a fake.
type Runner interface {
	// Run runs name with args, feeding stdin (may be nil). It fails with an *ExitError when
	// the command ran and exited non-zero, and with another error when it could not run.
	Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error)
}

// ExitError is a command that exited non-zero.
type ExitError struct {
	Cmd    string
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: exit status %d: %s", e.Cmd, e.Code, strings.TrimSpace(e.Stderr))
}

// exitCode returns the exit code of err when it is an *ExitError, else -1.
func exitCode(err error) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return -1
}

// ExecRunner runs commands with os/exec in the caller's network namespace.
type ExecRunner struct{}

// Run implements Runner.
func (ExecRunner) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	return runCmd(ctx, name, args, stdin)
}

// NetnsRunner runs every command inside the named network namespace through
// `ip netns exec NAME`. Tests and the netns harness use it to keep the root namespace clean.
type NetnsRunner struct {
	Name string
}

// Run implements Runner.
func (r NetnsRunner) Run(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	full := append([]string{"netns", "exec", r.Name, name}, args...)
	out, err := runCmd(ctx, "ip", full, stdin)
	var ee *ExitError
	if errors.As(err, &ee) {
		ee.Cmd = "ip netns exec " + r.Name + " " + name
	}
	return out, err
}

func runCmd(ctx context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			return stdout.Bytes(), &ExitError{Cmd: name + " " + strings.Join(args, " "), Code: ee.ExitCode(), Stderr: stderr.String()}
		}
		return stdout.Bytes(), fmt.Errorf("running %s: %w", name, err)
	}
	return stdout.Bytes(), nil
}
