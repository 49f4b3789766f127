package netns

import (
	"fmt"
	"os"
	"path/filepath"

	yaml "go.yaml.in/yaml/v3"
)

// ProxyConfig is the standalone config file of the contract (kind: ProxyConfig), written by
// scenarios the way a user would write it. Only fields the harness uses are here.
type ProxyConfig struct {
	APIVersion         string    `yaml:"apiVersion"`
	Kind               string    `yaml:"kind"`
	NodeName           string    `yaml:"nodeName,omitempty"`
	Mode               string    `yaml:"mode,omitempty"`
	ClusterCIDR        string    `yaml:"clusterCIDR,omitempty"`
	PodCIDR            string    `yaml:"podCIDR,omitempty"`
	ServiceCIDR        string    `yaml:"serviceCIDR,omitempty"`
	NodePortRange      string    `yaml:"nodePortRange,omitempty"`
	NodePortAddresses  []string  `yaml:"nodePortAddresses,omitempty"`
	Bridge             string    `yaml:"bridge,omitempty"`
	MasqueradeAll      bool      `yaml:"masqueradeAll,omitempty"`
	MetricsBindAddress string    `yaml:"metricsBindAddress,omitempty"`
	HealthzBindAddress string    `yaml:"healthzBindAddress,omitempty"`
	StateDir           string    `yaml:"stateDir,omitempty"`
	APISocket          string    `yaml:"apiSocket,omitempty"`
	EBPF               *EBPF     `yaml:"ebpf,omitempty"`
	IPAM               *IPAM     `yaml:"ipam,omitempty"`
	Services           []Service `yaml:"services"`
}

// IPAM holds the ipam settings a scenario changes.
type IPAM struct {
	PodGCGracePeriod string `yaml:"podGCGracePeriod,omitempty"`
}

// EBPF holds the eBPF backend's settings.
type EBPF struct {
	CgroupPath string   `yaml:"cgroupPath,omitempty"`
	PinPath    string   `yaml:"pinPath,omitempty"`
	Interfaces []string `yaml:"interfaces,omitempty"`
}

// Service is one service of a ProxyConfig.
type Service struct {
	Name                          string         `yaml:"name"`
	Namespace                     string         `yaml:"namespace,omitempty"`
	Type                          string         `yaml:"type,omitempty"`
	ClusterIP                     string         `yaml:"clusterIP,omitempty"`
	ExternalIPs                   []string       `yaml:"externalIPs,omitempty"`
	LoadBalancerIPs               []string       `yaml:"loadBalancerIPs,omitempty"`
	LoadBalancerSourceRanges      []string       `yaml:"loadBalancerSourceRanges,omitempty"`
	SessionAffinity               string         `yaml:"sessionAffinity,omitempty"`
	SessionAffinityTimeoutSeconds int            `yaml:"sessionAffinityTimeoutSeconds,omitempty"`
	ExternalTrafficPolicy         string         `yaml:"externalTrafficPolicy,omitempty"`
	InternalTrafficPolicy         string         `yaml:"internalTrafficPolicy,omitempty"`
	Ports                         []ServicePort  `yaml:"ports"`
	Endpoints                     []EndpointSpec `yaml:"endpoints,omitempty"`

	// Selector makes the pods registered through svcproxy-cni whose labels match endpoints.
	Selector map[string]string `yaml:"selector,omitempty"`
	// HealthCheck is the service's active endpoint check (nil: none).
	HealthCheck *HealthCheck `yaml:"healthCheck,omitempty"`
}

// HealthCheck is a service's active endpoint health check, as in the ProxyConfig.
type HealthCheck struct {
	Type               string `yaml:"type,omitempty"`
	Port               int    `yaml:"port,omitempty"`
	Path               string `yaml:"path,omitempty"`
	IntervalSeconds    int    `yaml:"intervalSeconds,omitempty"`
	TimeoutSeconds     int    `yaml:"timeoutSeconds,omitempty"`
	HealthyThreshold   int    `yaml:"healthyThreshold,omitempty"`
	UnhealthyThreshold int    `yaml:"unhealthyThreshold,omitempty"`
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name       string `yaml:"name,omitempty"`
	Protocol   string `yaml:"protocol,omitempty"`
	Port       int    `yaml:"port"`
	TargetPort int    `yaml:"targetPort,omitempty"`
	NodePort   int    `yaml:"nodePort,omitempty"`
}

// EndpointSpec is one static endpoint of a Service.
type EndpointSpec struct {
	IP          string `yaml:"ip"`
	NodeName    string `yaml:"nodeName,omitempty"`
	Ready       bool   `yaml:"ready"`
	Serving     bool   `yaml:"serving"`
	Terminating bool   `yaml:"terminating,omitempty"`
}

// ReadyEndpoints returns ready, serving endpoints on node for the given pods.
func ReadyEndpoints(node string, pods ...*Pod) []EndpointSpec {
	eps := make([]EndpointSpec, 0, len(pods))
	for _, p := range pods {
		eps = append(eps, EndpointSpec{IP: p.IP.String(), NodeName: node, Ready: true, Serving: true})
	}
	return eps
}

// BaseConfig returns a config for a daemon in this sandbox's node namespace: its CIDRs and
// bridge, health on 127.0.0.1:10256 and metrics on 127.0.0.1:10249 (inside the node
// namespace, so sandboxes never collide), no services.
func BaseConfig(nodeName, mode string) *ProxyConfig {
	return &ProxyConfig{
		APIVersion:         "svcproxy.io/v1alpha1",
		Kind:               "ProxyConfig",
		NodeName:           nodeName,
		Mode:               mode,
		ClusterCIDR:        ClusterPrefix.String(),
		PodCIDR:            PodPrefix.String(),
		ServiceCIDR:        ServicePrefix.String(),
		NodePortRange:      "30000-32767",
		Bridge:             BridgeName,
		MetricsBindAddress: "127.0.0.1:10249",
		HealthzBindAddress: "127.0.0.1:10256",
	}
}

// Marshal renders c as YAML.
func (c *ProxyConfig) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// writeFileAtomic writes data to path through a temp file and a rename, so a watcher never
// reads half a file.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
