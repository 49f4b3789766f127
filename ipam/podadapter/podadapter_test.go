package podadapter

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/ipam"
)

// TestAdapter drives the real store through the podserver interface.
func TestAdapter(t *testing.T) {
	ctx := context.Background()
	s, err := ipam.Open(t.TempDir(), ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := s.NewPodAllocator([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/30"), netip.MustParsePrefix("fd00:1::/64")}, "node1")
	if err != nil {
		t.Fatal(err)
	}
	var d podserver.PodIPAM = New(a)
	pod := podserver.Pod{Attachment: podserver.Attachment{ContainerID: "c1", IfName: "eth0"}, Namespace: "default", Name: "web", UID: "uid-web"}
	got, err := d.Allocate(ctx, pod)
	if err != nil || len(got) != 2 || got[0].String() != "10.244.1.2" || got[1].String() != "fd00:1::2" {
		t.Fatalf("Allocate = %v, %v", got, err)
	}
	if again, err := d.Check(ctx, pod.Attachment); err != nil || len(again) != 2 || again[0] != got[0] {
		t.Fatalf("Check = %v, %v", again, err)
	}
	if err := d.Ready(ctx); !errors.Is(err, podserver.ErrExhausted) || !strings.Contains(err.Error(), "10.244.1.0/30") {
		t.Fatalf("Ready with a full IPv4 range = %v, want podserver.ErrExhausted naming the range", err)
	}
	_, err = d.Allocate(ctx, podserver.Pod{Attachment: podserver.Attachment{ContainerID: "c2", IfName: "eth0"}})
	if !errors.Is(err, podserver.ErrExhausted) || !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("Allocate on a full range = %v, want both ErrExhausted", err)
	}
	if _, err := d.Check(ctx, podserver.Attachment{ContainerID: "nope", IfName: "eth0"}); !errors.Is(err, podserver.ErrNotFound) {
		t.Fatalf("Check(unknown) = %v, want podserver.ErrNotFound", err)
	}
	if err := d.Release(ctx, podserver.Attachment{ContainerID: "nope", IfName: "eth0"}); err != nil {
		t.Fatalf("Release(unknown) = %v", err)
	}
	if rel, err := d.GC(ctx, nil); !errors.Is(err, podserver.ErrGCRefused) || len(rel) != 0 {
		t.Fatalf("GC(empty list) with a pod allocated = %+v, %v; want nothing freed and podserver.ErrGCRefused", rel, err)
	}
	if st, err := a.Status(ctx); err != nil || len(st.Pods) != 1 || st.Pods[0].Owner.UID != "uid-web" {
		t.Fatalf("Status = %+v, %v; want the pod with its UID", st.Pods, err)
	}
	if r := New(a).Ranges(); r[0].Prefix.String() != "10.244.1.0/30" || r[0].Gateway.String() != "10.244.1.1" || r[1].Gateway.String() != "fd00:1::1" {
		t.Fatalf("Ranges = %+v", r)
	}
}
