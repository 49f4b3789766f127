// Package e2e holds svcproxy's cluster end-to-end tests: a real etcd and kube-apiserver
// (test/e2e/harness) in network namespaces the tests create, objects made with client-go, and
// assertions on what svcproxy derives from them. They need root; without root they skip
// unless CI is set. See docs/cluster.md.
package e2e
