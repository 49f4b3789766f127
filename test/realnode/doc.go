// Package realnode is the real-node test bench (`make e2e-node`): a Kubernetes cluster on
// this machine with real kubelets, and svcproxy deployed on it the way a user deploys it.
//
// The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, all
// v1.37.2 built by hack/build-kube.sh) runs in a network namespace of its own (the e2e
// harness's); each node is a network namespace on the underlay with its own containerd,
// runc and kubelet. No kube-proxy runs anywhere. A node also gets:
//
//   - a mount namespace of its own, in which the paths a node owns are the node's: /var
//     (kubelet's root, /var/lib/svcproxy, /var/log/pods), /run (containerd's state, the
//     daemon API socket, the xtables lock), /etc/cni and /opt/cni (the CNI configuration and
//     plugins the DaemonSet installs), a bpffs of its own on /sys/fs/bpf, and its own cgroup
//     v2 subtree bound over /sys/fs/cgroup/unified. So the shipped DaemonSet's hostPath
//     volumes resolve to the node's own directories, and the eBPF backend's socket hooks,
//     attached at "the host's cgroup v2 root", act on that node's processes only;
//   - a cgroup v1 root per hierarchy (kubelet's cgroupRoot) and the v2 subtree above, which
//     holds every process of the node (containerd, shims, pods, kubelet): stopping a node is
//     one write to cgroup.kill.
//
// kubelet runs with the four host-wide sysctls it insists on shown to it with the values it
// wants (files bound over /proc/sys entries in the node's mount namespace), so it never
// changes the machine. Images are built offline by `make image` and imported into each
// node's containerd. Everything the bench made is removed when the test ends, pass or fail;
// it creates no path on the host outside its temporary directory (/etc and /opt are
// overlays in the node's mount namespace, with the node's changes in its own directory).
//
// Every client of the cluster (kubectl, client-go, load generators) runs inside a namespace
// the bench made: the control-plane namespace, a node, a pod or the external client
// namespace on the underlay.
package realnode
