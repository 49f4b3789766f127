package main

import (
	"os"
	"testing"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/api/podserver/podservertest"
	"github.com/svcproxy/svcproxy/cni/cnitest"
)

// The root tests drive the plugin binary with the reference CNI client cnitool, run inside a
// node network namespace the test made (so the bridge and host veths live there), against a
// pod API server on a unix socket backed by podservertest.MemIPAM.

// binDir holds svcproxy-cni and cnitool, built once by TestMain when running as root.
var binDir string

func TestMain(m *testing.M) { os.Exit(cnitest.RunWithBinaries(m, &binDir)) }

// env is one test's world: a node with the network and a pod API server over MemIPAM.
type env struct {
	*cnitest.Node
	t    *testing.T
	mem  *podservertest.MemIPAM
	srv  *podservertest.Server
	node string
}

func newEnv(t *testing.T, network podserver.Network) *env {
	t.Helper()
	cnitest.RequireRoot(t)
	mem := podservertest.NewMemIPAM(network)
	srv := podservertest.Start(t, mem, network)
	n := cnitest.NewNode(t, binDir, srv.Socket)
	return &env{Node: n, t: t, mem: mem, srv: srv, node: n.Name}
}
