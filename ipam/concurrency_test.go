package ipam

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// TestConcurrentPods runs many goroutines allocating and releasing in one process and checks,
// as it goes, that no address is ever held by two live owners.
func TestConcurrentPods(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{PodCooldown: -1})
	a := podAlloc(t, s, "node1", "10.244.1.0/26", "fd00:10:244:1::/122") // 61 and 62 usable
	const workers, ops = 16, 60
	var mu sync.Mutex
	holder := map[string]string{} // address -> container ID, for live allocations only
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			var held []*PodAllocation
			for i := range ops {
				if len(held) >= 3 || (i%3 == 2 && len(held) > 0) {
					al := held[0]
					held = held[1:]
					mu.Lock() // forget the owner before the address can be handed out again
					for _, ip := range al.IPs {
						delete(holder, ip.Address.Addr().String())
					}
					mu.Unlock()
					if _, err := a.ReleasePod(ctx, al.Owner.ContainerID, "eth0"); err != nil {
						errs <- err
						return
					}
					continue
				}
				cid := fmt.Sprintf("w%d-%d", w, i)
				al, err := a.AllocatePod(ctx, owner(cid))
				if err != nil {
					errs <- err
					return
				}
				if again, err := a.AllocatePod(ctx, owner(cid)); err != nil || again.Generation != al.Generation {
					errs <- fmt.Errorf("repeat allocation for %s: %v, %v", cid, again, err)
					return
				}
				mu.Lock()
				for _, ip := range al.IPs {
					k := ip.Address.Addr().String()
					if o, dup := holder[k]; dup {
						mu.Unlock()
						errs <- fmt.Errorf("%s handed to %s while %s holds it", k, cid, o)
						return
					}
					holder[k] = cid
				}
				mu.Unlock()
				held = append(held, al)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var inStore int
	for _, p := range st.Pods {
		for _, ip := range p.IPs {
			inStore++
			if holder[ip.Address.Addr().String()] != p.Owner.ContainerID {
				t.Errorf("store gives %s to %s, test thinks %q", ip.Address, p.Owner.ContainerID, holder[ip.Address.Addr().String()])
			}
		}
	}
	if inStore != len(holder) {
		t.Errorf("store holds %d addresses, test expects %d", inStore, len(holder))
	}
}

// TestConcurrentServices: concurrent dynamic and explicit VIP requests never share an address.
func TestConcurrentServices(t *testing.T) {
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/24")
	const n = 64
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	var conflicts sync.Map
	for i := range n {
		wg.Go(func() {
			want := netip.Addr{}
			if i%4 == 0 { // every fourth asks for one of four contested lower-band VIPs
				want = netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + i%16/4)})
			}
			vip, err := a.ServiceIP(svcKey(fmt.Sprint("s", i)), cidr, want)
			if err != nil {
				conflicts.Store(i, err)
				return
			}
			got[i] = vip
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, vip := range got {
		if !vip.IsValid() {
			continue
		}
		if j, dup := seen[vip]; dup {
			t.Fatalf("%v handed to s%d and s%d", vip, j, i)
		}
		seen[vip] = i
	}
	var nConf int
	conflicts.Range(func(k, v any) bool {
		nConf++
		if !strings.Contains(v.(error).Error(), "already allocated to service default/s") {
			t.Errorf("s%d: %v, want a conflict naming the owner", k, v)
		}
		return true
	})
	if len(seen)+nConf != n || len(seen) != n-nConf {
		t.Fatalf("%d VIPs and %d conflicts for %d services", len(seen), nConf, n)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestCheckDetectsDoubleOwner makes sure the invariant check the crash test relies on sees a
// user holding two items and an index that disagrees with the items.
func TestCheckDetectsDoubleOwner(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	al, err := a.AllocatePod(ctx, owner("a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		p := getPool(tx, "pod4")
		r := &record{Owner: "forged", Gen: al.Generation, Users: []user{{Key: podKey("a", "eth0")}}}
		v, _ := json.Marshal(r)
		return p.items.Put(encode(ordOfAddr(netip.MustParseAddr("10.244.1.99")), 4), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "holds items") {
		t.Fatalf("Check on a store where one owner holds two addresses = %v", err)
	}
}
