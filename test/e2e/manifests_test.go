package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// manifest is one YAML document of deploy/kubernetes, parsed strictly into its typed object.
type manifest struct {
	file string
	doc  []byte
	obj  runtime.Object
	gvk  schema.GroupVersionKind
	name string
	ns   string
}

// newTyped returns an empty object of every kind the manifests may hold.
func newTyped(gvk schema.GroupVersionKind) (runtime.Object, bool) {
	switch gvk {
	case corev1.SchemeGroupVersion.WithKind("ServiceAccount"):
		return &corev1.ServiceAccount{}, true
	case corev1.SchemeGroupVersion.WithKind("ConfigMap"):
		return &corev1.ConfigMap{}, true
	case rbacv1.SchemeGroupVersion.WithKind("ClusterRole"):
		return &rbacv1.ClusterRole{}, true
	case rbacv1.SchemeGroupVersion.WithKind("ClusterRoleBinding"):
		return &rbacv1.ClusterRoleBinding{}, true
	case appsv1.SchemeGroupVersion.WithKind("DaemonSet"):
		return &appsv1.DaemonSet{}, true
	}
	return nil, false
}

// loadManifests reads every *.yaml under deploy/kubernetes. Unknown kinds, unknown or
// duplicate fields fail the test.
func loadManifests(t *testing.T) []manifest {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in deploy/kubernetes: %v", err)
	}
	sort.Strings(files)
	var out []manifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: document %d: %v", f, i, err)
			}
			gvk := schema.FromAPIVersionAndKind(tm.APIVersion, tm.Kind)
			obj, ok := newTyped(gvk)
			if !ok {
				t.Fatalf("%s: document %d: unexpected kind %s", f, i, gvk)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s: document %d (%s): strict parse: %v", f, i, gvk.Kind, err)
			}
			meta := obj.(metav1.Object)
			out = append(out, manifest{file: filepath.Base(f), doc: doc, obj: obj, gvk: gvk, name: meta.GetName(), ns: meta.GetNamespace()})
		}
	}
	return out
}

func stripComments(doc []byte) []byte {
	var b bytes.Buffer
	for _, l := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.Bytes()
}

func find[T runtime.Object](t *testing.T, ms []manifest) T {
	t.Helper()
	var zero T
	for _, m := range ms {
		if o, ok := m.obj.(T); ok {
			return o
		}
	}
	t.Fatalf("no %T in deploy/kubernetes", zero)
	return zero
}

// TestManifestsParse checks the manifests without a cluster: strict parsing, the ProxyConfig in
// the ConfigMap, and that the DaemonSet's mounts and privileges match what the config asks for.
func TestManifestsParse(t *testing.T) {
	ms := loadManifests(t)
	kinds := map[string]int{}
	for _, m := range ms {
		kinds[m.gvk.Kind]++
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"} {
		if kinds[k] != 1 {
			t.Errorf("%d %s objects, want 1", kinds[k], k)
		}
	}

	// The ConfigMap holds a valid ProxyConfig with settings only.
	cm := find[*corev1.ConfigMap](t, ms)
	raw, ok := cm.Data["config.yaml"]
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml", cm.Name)
	}
	cfg, err := config.Parse("configmap.yaml:config.yaml", []byte(raw))
	if err != nil {
		t.Fatalf("ProxyConfig in the ConfigMap: %v", err)
	}
	if !cfg.HasProxyConfig || cfg.NodeName != "" || len(cfg.PodCIDRs) != 0 || len(cfg.Nodes) != 0 || len(cfg.ServiceKeys()) != 0 {
		t.Errorf("ConfigMap ProxyConfig must hold settings only: nodeName %q podCIDRs %v nodes %v services %v",
			cfg.NodeName, cfg.PodCIDRs, cfg.Nodes, cfg.ServiceKeys())
	}

	ds := find[*appsv1.DaemonSet](t, ms)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("DaemonSet is not hostNetwork")
	}
	sa := find[*corev1.ServiceAccount](t, ms)
	if spec.ServiceAccountName != sa.Name || ds.Namespace != sa.Namespace {
		t.Errorf("DaemonSet runs as %s/%s, ServiceAccount is %s/%s", ds.Namespace, spec.ServiceAccountName, sa.Namespace, sa.Name)
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 1 {
		t.Fatalf("want 1 container and 1 init container, got %d and %d", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	// Connected UDP sockets in pods are destroyed inside the pods' network namespaces, which
	// the runtime binds under /run/netns: mounted with HostToContainer propagation, so that
	// namespaces made later appear (found on the real-node bench: without it, and without
	// CAP_SYS_PTRACE for /proc/PID/ns/net, pods kept sending to a deleted backend).
	netnsOK := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/run/netns" && m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationHostToContainer {
			netnsOK = true
		}
	}
	if !netnsOK {
		t.Error("svcproxy container does not mount /run/netns with HostToContainer propagation")
	}
	if spec.HostPID {
		t.Error("DaemonSet with hostPID: not needed (pods' namespaces come from /run/netns)")
	}
	// The API server's address must come from the svcproxy-apiserver ConfigMap, never silently
	// fall back to the kubernetes Service VIP that svcproxy itself programs (after a node
	// reboot nothing would answer there).
	for _, key := range []string{"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} {
		found := false
		for _, e := range c.Env {
			if e.Name != key {
				continue
			}
			found = true
			ref := e.ValueFrom
			if ref == nil || ref.ConfigMapKeyRef == nil || ref.ConfigMapKeyRef.Name != "svcproxy-apiserver" {
				t.Errorf("%s does not come from ConfigMap svcproxy-apiserver", key)
			} else if o := ref.ConfigMapKeyRef.Optional; o != nil && *o {
				t.Errorf("%s: ConfigMap svcproxy-apiserver is optional: without it the pod would use the VIP it programs", key)
			}
		}
		if !found {
			t.Errorf("svcproxy container does not set %s", key)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("svcproxy container has no securityContext.capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("svcproxy container is privileged")
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, string(c))
	}
	sort.Strings(caps)
	if want := []string{"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}; !slices.Equal(caps, want) {
		t.Errorf("capabilities %v, want %v", caps, want)
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Error("capabilities are not dropped to the listed ones")
	}

	// Mounts: hostPath volume path -> container mount, read-only or not.
	hostPaths := map[string]string{} // volume name -> host path
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	type mount struct {
		path string
		ro   bool
	}
	mounts := func(c corev1.Container) map[string]mount { // host path -> mount
		out := map[string]mount{}
		for _, m := range c.VolumeMounts {
			if hp, ok := hostPaths[m.Name]; ok {
				out[hp] = mount{m.MountPath, m.ReadOnly}
			}
		}
		return out
	}
	main := mounts(c)
	for hp, wantRO := range map[string]bool{
		"/run/xtables.lock":         false,
		"/run/netns":                true,
		"/sys/fs/bpf":               false,
		cfg.StateDir:                false,
		filepath.Dir(cfg.APISocket): false,
		"/sys/fs/cgroup":            true,
	} {
		m, ok := main[hp]
		if !ok {
			t.Errorf("svcproxy container does not mount host %s", hp)
			continue
		}
		if m.path != hp {
			t.Errorf("host %s mounted at %s, want the same path (the config names it)", hp, m.path)
		}
		if m.ro != wantRO {
			t.Errorf("host %s readOnly=%v, want %v", hp, m.ro, wantRO)
		}
	}
	init := mounts(spec.InitContainers[0])
	for _, hp := range []string{"/opt/cni/bin", "/etc/cni/net.d"} {
		if _, ok := init[hp]; !ok {
			t.Errorf("install-cni does not mount host %s", hp)
		}
	}
	if isc := spec.InitContainers[0].SecurityContext; isc == nil || isc.Capabilities == nil ||
		!slices.Contains(isc.Capabilities.Drop, "ALL") || len(isc.Capabilities.Add) != 0 {
		t.Error("install-cni must drop every capability")
	}
	var nodeNameEnv bool
	for _, e := range c.Env {
		if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
			nodeNameEnv = true
		}
	}
	if !nodeNameEnv {
		t.Error("NODE_NAME is not set from spec.nodeName")
	}
	var cfgMounted bool
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name && slices.Contains(c.Args, "--config="+filepath.Join(m.MountPath, "config.yaml")) {
					cfgMounted = true
				}
			}
		}
	}
	if !cfgMounted {
		t.Errorf("the ConfigMap is not mounted where --config points (args %v)", c.Args)
	}

	// Least privilege: read-only verbs on the watched resources, events to write, no wildcard.
	cr := find[*rbacv1.ClusterRole](t, ms)
	allowed := map[string][]string{
		"services": {"list", "watch"}, "endpointslices": {"list", "watch"}, "nodes": {"list", "watch"},
		"pods": {"list", "watch"}, "events": {"create", "patch"},
	}
	for _, r := range cr.Rules {
		for _, res := range r.Resources {
			ok, known := allowed[res]
			if !known {
				t.Errorf("ClusterRole grants %v on %s", r.Verbs, res)
				continue
			}
			for _, v := range r.Verbs {
				if !slices.Contains(ok, v) {
					t.Errorf("ClusterRole grants %s on %s", v, res)
				}
			}
		}
		if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
			t.Errorf("ClusterRole rule %+v has a wildcard", r)
		}
	}
	crb := find[*rbacv1.ClusterRoleBinding](t, ms)
	if crb.RoleRef.Name != cr.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("ClusterRoleBinding %+v does not bind %s to %s/%s", crb, cr.Name, sa.Namespace, sa.Name)
	}
}

// apply sends one manifest to the API server with server-side apply and strict field
// validation; dryRun makes it a server-side dry run.
func apply(ctx context.Context, dyn dynamic.Interface, mapper *restmapper.DeferredDiscoveryRESTMapper, m manifest, dryRun bool) error {
	mapping, err := mapper.RESTMapping(m.gvk.GroupKind(), m.gvk.Version)
	if err != nil {
		return fmt.Errorf("mapping %s: %w", m.gvk, err)
	}
	body, err := yaml.YAMLToJSON(m.doc)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "svcproxy-e2e", FieldValidation: "Strict", Force: ptr(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
	if m.ns != "" {
		ri = dyn.Resource(mapping.Resource).Namespace(m.ns)
	}
	if _, err := ri.Patch(ctx, m.name, types.ApplyPatchType, body, opts); err != nil {
		return fmt.Errorf("%s %s (%s): %w", m.gvk.Kind, m.name, m.file, err)
	}
	return nil
}

func newApplier(t *testing.T, c *harness.Cluster) (dynamic.Interface, *restmapper.DeferredDiscoveryRESTMapper) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

// TestManifestsServerDryRun applies every manifest to a real kube-apiserver with server-side
// dry run and strict field validation: the API server's own validation (and admission) accepts
// them as they are.
func TestManifestsServerDryRun(t *testing.T) {
	ms := loadManifests(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dyn, mapper := newApplier(t, c)
	for _, m := range ms {
		if err := apply(ctx, dyn, mapper, m, true); err != nil {
			t.Errorf("server-side dry run: %v", err)
		}
	}
	// A dry run creates nothing.
	if _, err := c.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "svcproxy", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DaemonSet exists after a dry run: %v", err)
	}
	// The same path rejects a manifest with a misspelt field, so the check above can fail.
	bad := ms[0]
	bad.doc = append(append([]byte{}, bad.doc...), []byte("\nnotAField: 1\n")...)
	if err := apply(ctx, dyn, mapper, bad, true); err == nil {
		t.Errorf("a manifest with an unknown field was accepted")
	}
}
