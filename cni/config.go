// Package cni is the library behind the svcproxy-cni plugin: it parses the plugin's network
// configuration and CNI_ARGS, turns the daemon's pod allocation into a CNI result (pure code in
// config.go and result.go), wires the pod's veth to the node bridge with netlink (link_linux.go)
// and implements the CNI commands over the daemon's pod API (plugin.go).
package cni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultAPISocket is the daemon's socket when the config names none.
const DefaultAPISocket = "/run/svcproxy/svcproxy.sock"

// HostVethPrefix starts the name of every node-side veth the plugin makes.
const HostVethPrefix = "svc"

// NetConf is the plugin's network configuration (one entry of the conflist's plugins).
type NetConf struct {
	types.PluginConf
	// APISocket is the daemon's unix socket (default DefaultAPISocket).
	APISocket string `json:"apiSocket,omitempty"`
	// RuntimeConfig carries the capability arguments the runtime injects.
	RuntimeConfig RuntimeConfig `json:"runtimeConfig,omitempty"`
}

// RuntimeConfig holds the capability arguments svcproxy-cni understands.
type RuntimeConfig struct {
	// Labels are the pod's labels (capability "labels").
	Labels map[string]string `json:"labels,omitempty"`
}

// ParseConfig decodes the plugin's stdin configuration and its prevResult (if any). It fails
// with a *types.Error (code 7, invalid network config) when the JSON is malformed.
func ParseConfig(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "svcproxy-cni: cannot parse network configuration", err.Error())
	}
	if conf.APISocket == "" {
		conf.APISocket = DefaultAPISocket
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "svcproxy-cni: cannot parse prevResult", err.Error())
	}
	return conf, nil
}

// PodArgs is the pod identity a runtime passes in CNI_ARGS.
type PodArgs struct {
	Namespace string // K8S_POD_NAMESPACE
	Name      string // K8S_POD_NAME
	UID       string // K8S_POD_UID (containerd and CRI-O pass it): pod IP GC matches by UID
}

// ParsePodArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from CNI_ARGS ("K=V;K=V"), ignoring
// every other key. It fails on a pair without "=".
func ParsePodArgs(cniArgs string) (PodArgs, error) {
	var p PodArgs
	if cniArgs == "" {
		return p, nil
	}
	for _, pair := range strings.Split(cniArgs, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return p, types.NewError(types.ErrInvalidEnvironmentVariables, "svcproxy-cni: invalid CNI_ARGS", fmt.Sprintf("pair %q has no '='", pair))
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p, nil
}

// HostVethName is the node-side veth of an attachment: HostVethPrefix and 12 hex characters
// of the SHA-256 of "containerID/ifName" (15 characters, the kernel's limit), so the name is
// the same on every call for one attachment and differs between attachments.
func HostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:12]
}
