package kube

import (
	"errors"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrNoClusterConfig is returned by RESTConfigFromFlags when no kubeconfig is given and the
// process does not run in a pod.
var ErrNoClusterConfig = errors.New("no kubeconfig given and not running in a pod (KUBERNETES_SERVICE_HOST unset)")

// UserAgent is sent with every request of clients made here.
const UserAgent = "svcproxy"

// RESTConfigFromFlags returns the client configuration for `svcproxy run`: the kubeconfig file
// when kubeconfig is not empty, else the in-cluster configuration (service-account token and
// KUBERNETES_SERVICE_HOST/PORT) when running in a pod. It fails with ErrNoClusterConfig when
// neither applies, and with a wrapped error when the file or the pod's token cannot be read.
func RESTConfigFromFlags(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("loading kubeconfig %s: %w", kubeconfig, err)
		}
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("loading in-cluster config: %w", err)
		}
	default:
		return nil, ErrNoClusterConfig
	}
	cfg.UserAgent = UserAgent
	// Informers make few requests; the limits matter only for bursts at start.
	if cfg.QPS == 0 {
		cfg.QPS = 20
	}
	if cfg.Burst == 0 {
		cfg.Burst = 40
	}
	// Protobuf halves the decoding cost of large lists at start (services, endpointslices).
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	return cfg, nil
}

// ClientFromFlags builds a clientset from RESTConfigFromFlags(kubeconfig); see there for when
// it fails.
func ClientFromFlags(kubeconfig string) (kubernetes.Interface, error) {
	cfg, err := RESTConfigFromFlags(kubeconfig)
	if err != nil {
		return nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client for %s: %w", cfg.Host, err)
	}
	return c, nil
}
