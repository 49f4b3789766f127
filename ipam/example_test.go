package ipam_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/proxy/model"
)

func Example() {
	dir, _ := os.MkdirTemp("", "ipam-example")
	defer os.RemoveAll(dir)
	ctx := context.Background()

	store, err := ipam.Open(dir, ipam.Options{})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	// Pod IPs for svcproxy-cni.
	pods, _ := store.NewPodAllocator([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/30")}, "node1")
	al, _ := pods.AllocatePod(ctx, ipam.PodOwner{ContainerID: "0123456789abcdef", IfName: "eth0",
		Namespace: "default", Name: "web-1", Labels: map[string]string{"app": "web"}})
	fmt.Println(al.IPs[0].Address, "via", al.IPs[0].Gateway)
	_, err = pods.AllocatePod(ctx, ipam.PodOwner{ContainerID: "fedcba9876543210", IfName: "eth0", Namespace: "default", Name: "web-2"})
	fmt.Println(err)

	// VIPs and node ports for the standalone config (a config.Allocator).
	svcs, _ := store.NewServiceAllocator(ipam.ServiceOptions{})
	web := model.ServiceKey{Namespace: "default", Name: "web"}
	vip, _ := svcs.ServiceIP(web, netip.MustParsePrefix("10.96.0.0/16"), netip.Addr{})
	fmt.Println("web VIP", vip)
	_, err = svcs.ServiceIP(model.ServiceKey{Namespace: "default", Name: "db"}, netip.MustParsePrefix("10.96.0.0/16"), vip)
	fmt.Println(err)
	np, _ := svcs.NodePort(model.PortKey{Service: web, Port: "http", Protocol: model.TCP}, 0)
	fmt.Println("web node port", np)
	svcs.Retain([]model.ServiceKey{web})

	// Output:
	// 10.244.1.2/30 via 10.244.1.1
	// ipam: no free pod IP left for pod default/web-2 (container fedcba987654, eth0) in pod range 10.244.1.0/30 (1 usable, 1 allocated, 0 cooling down)
	// web VIP 10.96.1.1
	// ipam: service VIP 10.96.1.1 (service range 10.96.0.0/16) is already allocated to service default/web
	// web node port 30086
}
