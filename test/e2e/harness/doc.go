// Package harness runs a real Kubernetes control plane for svcproxy's cluster e2e tests,
// without touching the host's network: etcd and kube-apiserver (built by hack/build-kube.sh)
// run inside a control-plane network namespace the test creates, on an underlay bridge
// (172.31.0.1/24); node namespaces join that bridge through veth pairs and reach
// kube-apiserver at https://172.31.0.1:6443 with an ordinary kubeconfig, so the real
// bin/svcproxy can run in them. The test's own Go clients reach it through a dialer that
// creates its sockets on an OS thread switched into the control-plane namespace.
//
// Every namespace, process and file is the test's own, has a random name and is removed on
// test cleanup; processes are stopped by PID.
package harness
