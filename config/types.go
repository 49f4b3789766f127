package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// APIVersion and Kind of the ProxyConfig document.
const (
	APIVersion = "svcproxy.io/v1alpha1"
	Kind       = "ProxyConfig"
)

// Defaults of the ProxyConfig settings (see docs/config.md).
const (
	DefaultNamespace          = "default"
	DefaultMode               = ModeAuto
	DefaultStateDir           = "/var/lib/svcproxy"
	DefaultAPISocket          = "/run/svcproxy/svcproxy.sock"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultBridge             = "svc0"
	DefaultMinSyncPeriod      = time.Second
	DefaultSyncPeriod         = 30 * time.Second
	DefaultAffinityTimeout    = 10800 * time.Second
	DefaultIPTablesBackend    = "auto"
	DefaultEBPFPinPath        = "/sys/fs/bpf/svcproxy"
	DefaultPodCooldown        = 30 * time.Second
	DefaultServiceGracePeriod = 10 * time.Minute
	DefaultPodGCGracePeriod   = 2 * time.Minute
)

// DefaultNodePortRange is the Kubernetes default range of node ports.
var DefaultNodePortRange = PortRange{Min: 30000, Max: 32767}

// Mode selects the data-path backend.
type Mode string

// Modes.
const (
	ModeAuto     Mode = "auto"
	ModeIPTables Mode = "iptables"
	ModeEBPF     Mode = "ebpf"
)

// PortRange is an inclusive range of ports.
type PortRange struct{ Min, Max uint16 }

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.Min && p <= r.Max }

// Size is the number of ports in r.
func (r PortRange) Size() int { return int(r.Max) - int(r.Min) + 1 }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// HealthCheck is the active health check of a service's endpoints. An endpoint that fails it
// is not ready. The daemon runs the checks; this package only reads them.
type HealthCheck struct {
	// Type is "tcp" (a connection is opened and closed) or "http" (a GET must answer 2xx/3xx).
	Type string
	// Port is the port to check on each endpoint; 0 means the endpoint's own (target) port.
	Port uint16
	// Path is the HTTP path ("http" only; default "/").
	Path               string
	Interval           time.Duration
	Timeout            time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

// Config is a validated config file: the proxy settings as typed values, and the services it
// declares (turned into a model.State by BuildState).
type Config struct {
	// File is the name the config was read from.
	File string
	// HasProxyConfig reports whether the file held a ProxyConfig document (else every setting
	// is its default).
	HasProxyConfig bool

	NodeName string
	// Zone is this node's topology zone (for topology aware routing); "" when unknown.
	Zone              string
	Mode              Mode
	ClusterCIDRs      []netip.Prefix
	PodCIDRs          []netip.Prefix // this node's, as given at top level; see PodCIDRsFor
	ServiceCIDRs      []netip.Prefix
	NodePortRange     PortRange
	NodePortAddresses []netip.Prefix
	Bridge            string
	MasqueradeAll     bool
	// MetricsBindAddress and HealthzBindAddress are IP:port.
	MetricsBindAddress netip.AddrPort
	HealthzBindAddress netip.AddrPort
	StateDir           string
	APISocket          string
	MinSyncPeriod      time.Duration
	SyncPeriod         time.Duration
	// IPTablesBackend is "auto", "nft" or "legacy": which iptables binary family to drive.
	IPTablesBackend string
	// PodCooldown is how long a freed pod IP waits before reuse (default 30 s; 0 none).
	PodCooldown time.Duration
	// ServiceGracePeriod is how long the VIPs and node ports of a service missing from the
	// config are kept for it (default 10 min).
	ServiceGracePeriod time.Duration
	// PodGCGracePeriod is how long GC (cluster mode and CNI GC) must have found a pod IP
	// allocation missing, on the monotonic clock, before it may free it (default 2 min: the
	// informer cache and the runtime's list can lag).
	PodGCGracePeriod time.Duration
	// EBPFCgroupPath is the cgroup v2 directory the socket-LB hooks attach to; empty means
	// the root of the host's cgroup v2 hierarchy (mounted at /run/svcproxy/cgroupv2 if absent).
	EBPFCgroupPath string
	// EBPFPinPath is the bpffs directory where maps and links are pinned.
	EBPFPinPath string
	// EBPFInterfaces get the per-packet (tc) programs; empty means every interface holding
	// one of the node's IPv4 addresses, except loopback, the pod bridge and veths.
	EBPFInterfaces []string
	// Nodes lists every node of the `nodes` setting (this node too, when listed).
	Nodes []model.Node

	services     []*entry
	slices       []*sliceEntry
	healthChecks map[model.ServiceKey]HealthCheck
}

// ServiceKeys returns the key of every service in the file (ProxyConfig entries and
// Kubernetes Service documents), in file order.
func (c *Config) ServiceKeys() []model.ServiceKey {
	out := make([]model.ServiceKey, 0, len(c.services))
	for _, e := range c.services {
		out = append(out, e.key)
	}
	return out
}

// HealthChecks returns the active health check of every service that has one.
func (c *Config) HealthChecks() map[model.ServiceKey]HealthCheck {
	out := make(map[model.ServiceKey]HealthCheck, len(c.healthChecks))
	for k, v := range c.healthChecks {
		out[k] = v
	}
	return out
}

// PodCIDRsFor returns the pod range(s) of node nodeName: the top-level podCIDR(s) when set,
// else those of its entry in `nodes`.
func (c *Config) PodCIDRsFor(nodeName string) []netip.Prefix {
	if len(c.PodCIDRs) > 0 {
		return c.PodCIDRs
	}
	for _, n := range c.Nodes {
		if n.Name == nodeName {
			return n.PodCIDRs
		}
	}
	return nil
}

// ZoneFor returns the zone of node nodeName: the top-level zone when set, else that of its
// entry in `nodes`.
func (c *Config) ZoneFor(nodeName string) string {
	if c.Zone != "" {
		return c.Zone
	}
	for _, n := range c.Nodes {
		if n.Name == nodeName {
			return n.Zone
		}
	}
	return ""
}

// entry is one service of the file, from a ProxyConfig entry or a Service document, in the
// Kubernetes form that source/kubeconv reads.
type entry struct {
	key  model.ServiceKey
	d    *doc
	path string // path of the service inside its document ("services[2]" or "")
	svc  *corev1.Service
	// static endpoints (ProxyConfig entries), by family.
	static []discoveryv1.Endpoint
	// vipPaths is the path of each of svc.Spec.ClusterIPs, as written.
	vipPaths []string
	// families are the IP families of the service (from its VIPs or the ranges it allocates
	// from): endpoints of other families are refused.
	v4, v6 bool
	// allocFrom is the serviceCIDRs to allocate VIPs from when the service names none.
	allocFrom []netip.Prefix
	// proxyConfig is true for an entry of a ProxyConfig document (else a Service document).
	proxyConfig bool
}

// p maps the path of a field of the Kubernetes form ("spec.ports[0].nodePort") to where it is
// written in the file.
func (e *entry) p(k8sPath string) string {
	if !e.proxyConfig {
		return k8sPath
	}
	switch {
	case k8sPath == "metadata.name":
		return join(e.path, "name")
	case k8sPath == "metadata.namespace":
		return join(e.path, "namespace")
	case k8sPath == "spec.sessionAffinityConfig.clientIP.timeoutSeconds":
		return join(e.path, "sessionAffinityTimeoutSeconds")
	case strings.HasPrefix(k8sPath, "status.loadBalancer.ingress"):
		i := strings.TrimPrefix(k8sPath, "status.loadBalancer.ingress")
		i = strings.TrimSuffix(i, ".ip")
		return e.path + ".loadBalancerIPs" + i
	case strings.HasPrefix(k8sPath, "spec."):
		return join(e.path, strings.TrimPrefix(k8sPath, "spec."))
	case k8sPath == "spec" || k8sPath == "":
		return e.path
	}
	return join(e.path, k8sPath)
}

// sliceEntry is an EndpointSlice document.
type sliceEntry struct {
	d     *doc
	slice *discoveryv1.EndpointSlice
}

// Raw ProxyConfig document, as written. Strings are parsed by validation so that every bad
// value is reported rather than the first.
type rawConfig struct {
	APIVersion         string        `json:"apiVersion"`
	Kind               string        `json:"kind"`
	NodeName           string        `json:"nodeName"`
	Zone               string        `json:"zone"`
	Mode               string        `json:"mode"`
	ClusterCIDR        string        `json:"clusterCIDR"`
	ClusterCIDRs       []string      `json:"clusterCIDRs"`
	PodCIDR            string        `json:"podCIDR"`
	PodCIDRs           []string      `json:"podCIDRs"`
	ServiceCIDR        string        `json:"serviceCIDR"`
	ServiceCIDRs       []string      `json:"serviceCIDRs"`
	NodePortRange      string        `json:"nodePortRange"`
	NodePortAddresses  []string      `json:"nodePortAddresses"`
	Bridge             string        `json:"bridge"`
	MasqueradeAll      bool          `json:"masqueradeAll"`
	MetricsBindAddress string        `json:"metricsBindAddress"`
	HealthzBindAddress string        `json:"healthzBindAddress"`
	StateDir           string        `json:"stateDir"`
	APISocket          string        `json:"apiSocket"`
	MinSyncPeriod      string        `json:"minSyncPeriod"`
	SyncPeriod         string        `json:"syncPeriod"`
	IPTables           *rawIPTables  `json:"iptables"`
	EBPF               *rawEBPF      `json:"ebpf"`
	IPAM               *rawIPAM      `json:"ipam"`
	Nodes              []rawNode     `json:"nodes"`
	Services           []*rawService `json:"services"`
}

type rawIPTables struct {
	Backend string `json:"backend"`
}

type rawIPAM struct {
	PodCooldown        string `json:"podCooldown"`
	ServiceGracePeriod string `json:"serviceGracePeriod"`
	PodGCGracePeriod   string `json:"podGCGracePeriod"`
}

type rawEBPF struct {
	CgroupPath string   `json:"cgroupPath"`
	PinPath    string   `json:"pinPath"`
	Interfaces []string `json:"interfaces"`
}

type rawNode struct {
	Name     string   `json:"name"`
	Address  string   `json:"address"`
	PodCIDR  string   `json:"podCIDR"`
	PodCIDRs []string `json:"podCIDRs"`
	Zone     string   `json:"zone"`
}

type rawService struct {
	Name                          string            `json:"name"`
	Namespace                     string            `json:"namespace"`
	Type                          string            `json:"type"`
	ClusterIP                     string            `json:"clusterIP"`
	ClusterIPs                    []string          `json:"clusterIPs"`
	IPFamilyPolicy                string            `json:"ipFamilyPolicy"`
	ExternalIPs                   []string          `json:"externalIPs"`
	LoadBalancerIPs               []string          `json:"loadBalancerIPs"`
	LoadBalancerSourceRanges      []string          `json:"loadBalancerSourceRanges"`
	SessionAffinity               string            `json:"sessionAffinity"`
	SessionAffinityTimeoutSeconds *int32            `json:"sessionAffinityTimeoutSeconds"`
	ExternalTrafficPolicy         string            `json:"externalTrafficPolicy"`
	InternalTrafficPolicy         string            `json:"internalTrafficPolicy"`
	HealthCheckNodePort           int32             `json:"healthCheckNodePort"`
	TrafficDistribution           string            `json:"trafficDistribution"`
	Ports                         []rawPort         `json:"ports"`
	Selector                      map[string]string `json:"selector"`
	Endpoints                     []rawEndpoint     `json:"endpoints"`
	HealthCheck                   *rawHealthCheck   `json:"healthCheck"`
}

type rawPort struct {
	Name       string              `json:"name"`
	Protocol   string              `json:"protocol"`
	Port       int32               `json:"port"`
	TargetPort *intstr.IntOrString `json:"targetPort"`
	NodePort   int32               `json:"nodePort"`
}

type rawEndpoint struct {
	IP          string   `json:"ip"`
	NodeName    string   `json:"nodeName"`
	Zone        string   `json:"zone"`
	Ready       *bool    `json:"ready"`
	Serving     *bool    `json:"serving"`
	Terminating *bool    `json:"terminating"`
	ZoneHints   []string `json:"zoneHints"`
	NodeHints   []string `json:"nodeHints"`
}

type rawHealthCheck struct {
	Type               string `json:"type"`
	Port               int64  `json:"port"`
	Path               string `json:"path"`
	IntervalSeconds    *int64 `json:"intervalSeconds"`
	TimeoutSeconds     *int64 `json:"timeoutSeconds"`
	HealthyThreshold   *int64 `json:"healthyThreshold"`
	UnhealthyThreshold *int64 `json:"unhealthyThreshold"`
}
