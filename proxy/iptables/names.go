package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"net/netip"
	"strconv"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// ChainPrefix starts the name of every chain svcproxy owns, in every table.
const ChainPrefix = "SVCPROXY-"

// Fixed chains. The nat and filter tables each have their own SVCPROXY-SERVICES,
// SVCPROXY-NODEPORTS and SVCPROXY-CANARY.
const (
	ChainServices         = "SVCPROXY-SERVICES"
	ChainExternalServices = "SVCPROXY-EXTERNAL-SERVICES"
	ChainNodePorts        = "SVCPROXY-NODEPORTS"
	ChainPostrouting      = "SVCPROXY-POSTROUTING"
	ChainMarkMasq         = "SVCPROXY-MARK-MASQ"
	ChainMasqNonPod       = "SVCPROXY-MASQ-NONPOD"
	ChainForward          = "SVCPROXY-FORWARD"
	ChainFirewall         = "SVCPROXY-FIREWALL"
	ChainCanary           = "SVCPROXY-CANARY"
)

// Per-service chain kinds. iptables limits chain names to 28 characters; "SVCPROXY-" plus a
// one-letter kind, a dash and 16 hash characters makes 27.
const (
	kindCluster  = "SVCPROXY-S-" // endpoints for Cluster policy (kube-proxy's KUBE-SVC-)
	kindLocal    = "SVCPROXY-L-" // node-local endpoints for Local policy (KUBE-SVL-)
	kindExternal = "SVCPROXY-X-" // external destinations (KUBE-EXT-)
	kindFirewall = "SVCPROXY-F-" // loadBalancerSourceRanges (KUBE-FW-)
	kindEndpoint = "SVCPROXY-E-" // one endpoint: hairpin masquerade + DNAT (KUBE-SEP-)
)

// hashName returns the first 16 characters of base32(sha256(s)), as kube-proxy does.
func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	var enc [56]byte
	base32.StdEncoding.Encode(enc[:], sum[:])
	return string(enc[:16])
}

// portID is the identity of one service port, the input of its chain names:
// "namespace/name:port/PROTO".
func portID(s *model.Service, p *model.ServicePort) string {
	b := make([]byte, 0, len(s.Key.Namespace)+len(s.Key.Name)+len(p.Name)+8)
	b = append(b, s.Key.Namespace...)
	b = append(b, '/')
	b = append(b, s.Key.Name...)
	b = append(b, ':')
	b = append(b, p.Name...)
	b = append(b, '/')
	b = append(b, p.Protocol...)
	return string(b)
}

// portLabel is the human name of a service port for comments: "namespace/name:port", or
// "namespace/name" for an unnamed port.
func portLabel(s *model.Service, p *model.ServicePort) string {
	if p.Name == "" {
		return s.Key.Namespace + "/" + s.Key.Name
	}
	return s.Key.Namespace + "/" + s.Key.Name + ":" + p.Name
}

// ServiceChainNames returns the names of the per-service chains svcproxy may write for port p
// of s ("S" cluster, "L" local, "X" external, "F" firewall), for inspection and tests.
func ServiceChainNames(s *model.Service, p *model.ServicePort) (cluster, local, external, firewall string) {
	h := hashName(portID(s, p))
	return kindCluster + h, kindLocal + h, kindExternal + h, kindFirewall + h
}

// EndpointChainName returns the name of the chain of endpoint ep of port p of s.
func EndpointChainName(s *model.Service, p *model.ServicePort, ep model.Endpoint) string {
	return kindEndpoint + hashName(endpointID(portID(s, p), ep.AddrPort()))
}

func endpointID(pid string, ap netip.AddrPort) string {
	b := make([]byte, 0, len(pid)+48)
	b = append(b, pid...)
	b = append(b, '>')
	b = ap.Addr().AppendTo(b)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(ap.Port()), 10)
	return string(b)
}

// nameCache remembers hashes across syncs, so a partial sync of 10,000 services does not
// hash every endpoint again.
type nameCache struct {
	ports map[string]*portNames
	// used counts endpoint lookups since the last sweep; size counts cached endpoint names.
	used, size int
}

type portNames struct {
	hash string
	eps  map[netip.AddrPort]string
}

// port returns the names cache of port id, creating it with its hash.
func (c *nameCache) port(id string) *portNames {
	if pn, ok := c.ports[id]; ok {
		return pn
	}
	pn := &portNames{hash: hashName(id)}
	if c.ports == nil {
		c.ports = make(map[string]*portNames)
	}
	c.ports[id] = pn
	return pn
}

// endpoint returns the full chain name of endpoint ap of port id.
func (c *nameCache) endpoint(pn *portNames, id string, ap netip.AddrPort) string {
	c.used++
	if n, ok := pn.eps[ap]; ok {
		return n
	}
	n := kindEndpoint + hashName(endpointID(id, ap))
	if pn.eps == nil {
		pn.eps = make(map[netip.AddrPort]string, 4)
	}
	pn.eps[ap] = n
	c.size++
	return n
}

// sweep is called after a full plan: when the cache holds far more endpoint names than the
// plan used, it is dropped, so names of removed services do not accumulate without bound.
func (c *nameCache) sweep() {
	if c.size > 2*c.used+1024 {
		c.ports, c.size = nil, 0
	}
	c.used = 0
}
