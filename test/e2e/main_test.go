package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/source/kube"
)

// helperEnv makes the test binary act as a small client program instead of running tests, so
// a test can run a real process inside a node namespace (see runHelper).
const helperEnv = "SVCPROXY_E2E_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := helperMain(mode); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperMain implements the helper modes:
//
//	list-namespaces KUBECONFIG  builds a client the way `svcproxy run --kubeconfig` does and
//	                            prints the namespaces it can list.
func helperMain(mode string) error {
	switch mode {
	case "list-namespaces":
		c, err := kube.ClientFromFlags(os.Getenv("HELPER_KUBECONFIG"))
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		l, err := c.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, ns := range l.Items {
			fmt.Println(ns.Name)
		}
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}
