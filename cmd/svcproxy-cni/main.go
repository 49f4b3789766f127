// Command svcproxy-cni is the svcproxy CNI plugin (spec 1.1: ADD, DEL, CHECK, GC, STATUS,
// VERSION). It asks the running svcproxy daemon for pod IPs over its unix socket and wires the
// pod's veth to the node bridge. See docs/cni.md; the work is done in package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/svcproxy/svcproxy/cni"
)

func main() {
	p := &cni.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), cni.VersionInfo(), cni.About)
}
