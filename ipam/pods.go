package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// PodOwner identifies a pod attachment (CNI's containerID + ifname) and says which pod it is.
type PodOwner struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Namespace   string `json:"namespace,omitempty"`
	Name        string `json:"name,omitempty"`
	// UID is the pod's UID (CNI_ARGS K8S_POD_UID, or looked up in the API by namespace/name
	// at allocation); empty in records made before it was kept, and outside Kubernetes.
	UID    string            `json:"uid,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

func (o PodOwner) String() string {
	id := o.ContainerID
	if len(id) > 12 {
		id = id[:12]
	}
	if o.Name == "" {
		return fmt.Sprintf("container %s (%s)", id, o.IfName)
	}
	return fmt.Sprintf("pod %s/%s (container %s, %s)", o.Namespace, o.Name, id, o.IfName)
}

// Attachment names a pod attachment, as in CNI's cni.dev/valid-attachments.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// PodIP is one address of a pod.
type PodIP struct {
	// Address is the pod's address with its range's prefix length, e.g. 10.244.1.5/24.
	Address netip.Prefix `json:"address"`
	// Gateway is the range's gateway, the node bridge's address (the range's first usable
	// address), e.g. 10.244.1.1.
	Gateway netip.Addr `json:"gateway"`
}

// PodAllocation is what a pod attachment holds.
type PodAllocation struct {
	Owner PodOwner `json:"owner"`
	// IPs holds one address per address family of the allocator's ranges, in the order the
	// ranges were given.
	IPs []PodIP `json:"ips"`
	// Generation is the allocation's generation; ReleasePodGeneration and ReleasePodIP with an
	// older one are no-ops.
	Generation uint64    `json:"generation"`
	Allocated  time.Time `json:"allocated"`
}

// podRecord is the value of a pod attachment in the pods bucket.
type podRecord struct {
	Owner PodOwner `json:"owner"`
	Gen   uint64   `json:"gen"`
	At    int64    `json:"at"`
	IPs   []PodIP  `json:"ips"`
}

func (r *podRecord) allocation() PodAllocation {
	return PodAllocation{Owner: r.Owner, IPs: slices.Clone(r.IPs), Generation: r.Gen, Allocated: time.Unix(0, r.At)}
}

func podKey(containerID, ifname string) string { return "pod:" + containerID + "/" + ifname }

// PodAllocator hands out pod IPs from a node's pod ranges (podCIDRs). Make it with
// Store.NewPodAllocator; it is safe for concurrent use.
type PodAllocator struct {
	s        *Store
	nodeName string
	ranges   []*space   // as given
	families [][]*space // ranges grouped by address family, families in order of first appearance
}

// NewPodAllocator returns the allocator of pod ranges podCIDRs (one or more, IPv4 and/or IPv6;
// several ranges of one family form one set: an address is taken from the first range with a
// free one). nodeName is put in the model.Pods that Pods returns. Allocations made under other
// ranges earlier stay in the store (Status of the Store lists them; ReleasePod and GC free
// them). It fails when a range is invalid, too small, or overlaps another.
func (s *Store) NewPodAllocator(podCIDRs []netip.Prefix, nodeName string) (*PodAllocator, error) {
	if len(podCIDRs) == 0 {
		return nil, errors.New("ipam: pod allocator: no pod range (podCIDR) given")
	}
	a := &PodAllocator{s: s, nodeName: nodeName}
	for _, p := range podCIDRs {
		sp, err := podSpace(p)
		if err != nil {
			return nil, err
		}
		for _, o := range a.ranges {
			if o.prefix.Overlaps(sp.prefix) {
				return nil, fmt.Errorf("ipam: pod ranges %s and %s overlap", o.id, sp.id)
			}
		}
		a.ranges = append(a.ranges, sp)
		placed := false
		for i, f := range a.families {
			if f[0].v6 == sp.v6 {
				a.families[i] = append(f, sp)
				placed = true
			}
		}
		if !placed {
			a.families = append(a.families, []*space{sp})
		}
	}
	return a, nil
}

// Ranges returns the allocator's pod ranges.
func (a *PodAllocator) Ranges() []netip.Prefix {
	out := make([]netip.Prefix, len(a.ranges))
	for i, sp := range a.ranges {
		out[i] = sp.prefix
	}
	return out
}

// Gateways returns the gateway (bridge address, with its range's prefix length) of each pod
// range, e.g. 10.244.1.1/24.
func (a *PodAllocator) Gateways() []netip.Prefix {
	out := make([]netip.Prefix, len(a.ranges))
	for i, sp := range a.ranges {
		out[i] = netip.PrefixFrom(sp.gateway, sp.prefix.Bits())
	}
	return out
}

// rangeOf returns the allocator's range holding addr, or nil.
func (a *PodAllocator) rangeOf(addr netip.Addr) *space {
	for _, sp := range a.ranges {
		if sp.prefix.Contains(addr) && sp.contains(ordOfAddr(addr)) {
			return sp
		}
	}
	return nil
}

func validateAttachment(containerID, ifname string) error {
	if containerID == "" || ifname == "" {
		return fmt.Errorf("ipam: pod attachment needs a container ID and an interface name (got %q, %q)", containerID, ifname)
	}
	if strings.ContainsAny(containerID+ifname, "/\x00") {
		return fmt.Errorf("ipam: pod attachment %q/%q: '/' and NUL are not allowed", containerID, ifname)
	}
	return nil
}

// AllocatePod returns the addresses of attachment (owner.ContainerID, owner.IfName): one per
// address family of the allocator's ranges, each with its prefix length and gateway. It is
// idempotent: an attachment that has addresses gets them back (its namespace, name and labels
// are updated when given). A new address is taken round-robin after the one handed out last,
// skipping addresses that cool down after a release. It fails with an *ExhaustedError
// (errors.Is ErrExhausted) naming the ranges when a family has no free address; then nothing
// is allocated.
func (a *PodAllocator) AllocatePod(ctx context.Context, owner PodOwner) (*PodAllocation, error) {
	if err := validateAttachment(owner.ContainerID, owner.IfName); err != nil {
		return nil, err
	}
	key := podKey(owner.ContainerID, owner.IfName)
	// Fast path: an unchanged repeat needs no write (and no fsync).
	var out *PodAllocation
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		pr, err := getPodRecord(tx, key)
		if err != nil || pr == nil || !a.satisfies(tx, key, pr) || !sameMeta(pr.Owner, owner) {
			return err
		}
		al := pr.allocation()
		out = &al
		return nil
	})
	if err != nil || out != nil {
		return out, wrapPodErr(owner, err)
	}
	err = a.s.update(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		pr, err := getPodRecord(tx, key)
		if err != nil {
			return err
		}
		if pr == nil {
			pr = &podRecord{At: now.UnixNano()}
		}
		pr.Owner = mergeMeta(pr.Owner, owner)
		ips := make([]PodIP, 0, len(a.families))
		kept := map[netip.Addr]bool{}
		var gen uint64
		for _, fam := range a.families {
			if ip, ok := a.held(tx, key, pr, fam); ok {
				ips = append(ips, ip)
				kept[ip.Address.Addr()] = true
				continue
			}
			if gen == 0 {
				if gen, err = nextGen(tx); err != nil {
					return err
				}
			}
			ip, err := a.take(tx, key, pr.Owner, fam, gen, now)
			if err != nil {
				return err
			}
			ips = append(ips, ip)
		}
		// Addresses outside the current ranges (the podCIDR changed) go back to their pool.
		for _, ip := range pr.IPs {
			if ad := ip.Address.Addr(); !kept[ad] {
				if _, err := getPool(tx, poolName(KindPod, ad.Is6())).drop(ordOfAddr(ad), width(ad.Is6()), key, now, a.s.podCooldown); err != nil {
					return err
				}
			}
		}
		if gen != 0 {
			// One allocation, one generation: addresses kept from before take the new one too.
			for ad := range kept {
				p := getPool(tx, poolName(KindPod, ad.Is6()))
				r, err := p.get(ordOfAddr(ad), width(ad.Is6()))
				if err != nil {
					return err
				}
				r.Gen = gen
				if err := p.put(ordOfAddr(ad), width(ad.Is6()), r); err != nil {
					return err
				}
			}
			pr.Gen, pr.At = gen, now.UnixNano()
		}
		pr.IPs = ips
		if err := putPodRecord(tx, key, pr); err != nil {
			return err
		}
		al := pr.allocation()
		out = &al
		return nil
	})
	if err != nil {
		return nil, wrapPodErr(owner, err)
	}
	return out, nil
}

func wrapPodErr(o PodOwner, err error) error {
	var ee *ExhaustedError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	return fmt.Errorf("ipam: allocate for %s: %w", o, err)
}

func sameMeta(have, want PodOwner) bool {
	return (want.Namespace == "" || want.Namespace == have.Namespace) &&
		(want.Name == "" || want.Name == have.Name) &&
		(want.UID == "" || want.UID == have.UID) &&
		(want.Labels == nil || maps.Equal(want.Labels, have.Labels))
}

func mergeMeta(have, want PodOwner) PodOwner {
	have.ContainerID, have.IfName = want.ContainerID, want.IfName
	if want.Namespace != "" {
		have.Namespace = want.Namespace
	}
	if want.Name != "" {
		have.Name = want.Name
	}
	if want.UID != "" {
		have.UID = want.UID
	}
	if want.Labels != nil {
		have.Labels = maps.Clone(want.Labels)
	}
	return have
}

// satisfies reports whether pr holds an address in each family of the allocator and nothing
// else.
func (a *PodAllocator) satisfies(tx *bolt.Tx, key string, pr *podRecord) bool {
	if len(pr.IPs) != len(a.families) {
		return false
	}
	for _, fam := range a.families {
		if _, ok := a.held(tx, key, pr, fam); !ok {
			return false
		}
	}
	return true
}

// held returns the address pr holds in family fam, if any.
func (a *PodAllocator) held(tx *bolt.Tx, key string, pr *podRecord, fam []*space) (PodIP, bool) {
	for _, ip := range pr.IPs {
		ad := ip.Address.Addr()
		sp := a.rangeOf(ad)
		if sp == nil || sp.v6 != fam[0].v6 {
			continue
		}
		r, err := getPool(tx, sp.pool).get(ordOfAddr(ad), sp.width)
		if err == nil && r != nil && r.hasUser(key) {
			return PodIP{Address: netip.PrefixFrom(ad, sp.prefix.Bits()), Gateway: sp.gateway}, true
		}
	}
	return PodIP{}, false
}

// take allocates an address of family fam to key.
func (a *PodAllocator) take(tx *bolt.Tx, key string, owner PodOwner, fam []*space, gen uint64, now time.Time) (PodIP, error) {
	p := getPool(tx, fam[0].pool)
	for _, sp := range fam {
		o, ok := p.pick(sp, now, a.s.podCooldown)
		if !ok {
			continue
		}
		r := &record{Owner: owner.String(), Gen: gen, At: now.UnixNano(), Users: []user{{Key: key}}}
		if err := p.take(sp, o, r, true); err != nil {
			return PodIP{}, err
		}
		return PodIP{Address: netip.PrefixFrom(addrOfOrd(o, sp.v6), sp.prefix.Bits()), Gateway: sp.gateway}, nil
	}
	e := &ExhaustedError{Kind: KindPod, Owner: owner.String()}
	for _, sp := range fam {
		e.Ranges = append(e.Ranges, p.usage(sp, now, a.s.podCooldown))
	}
	return PodIP{}, e
}

func getPodRecord(tx *bolt.Tx, key string) (*podRecord, error) {
	v := tx.Bucket(bucketPods).Get([]byte(key))
	if v == nil {
		return nil, nil
	}
	pr := &podRecord{}
	if err := json.Unmarshal(v, pr); err != nil {
		return nil, fmt.Errorf("decode pod record %q: %w", key, err)
	}
	return pr, nil
}

func putPodRecord(tx *bolt.Tx, key string, pr *podRecord) error {
	v, err := json.Marshal(pr)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketPods).Put([]byte(key), v)
}

// releasePod frees every address of pod record pr (key) that still names it, and deletes pr.
func (s *Store) releasePod(tx *bolt.Tx, key string, pr *podRecord, now time.Time) error {
	for _, ip := range pr.IPs {
		ad := ip.Address.Addr()
		if _, err := getPool(tx, poolName(KindPod, ad.Is6())).drop(ordOfAddr(ad), width(ad.Is6()), key, now, s.podCooldown); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketPods).Delete([]byte(key))
}

// ReleasePod frees the addresses of attachment (containerID, ifname); they cool down before
// reuse. An unknown attachment is a success (it returns nil, nil); otherwise it returns what
// was freed. It fails only when the store fails.
func (a *PodAllocator) ReleasePod(ctx context.Context, containerID, ifname string) (*PodAllocation, error) {
	return a.release(ctx, containerID, ifname, func(*podRecord) bool { return true })
}

// ReleasePodGeneration is ReleasePod that frees nothing (returning nil, nil) unless the
// attachment's allocation has generation gen: a late release cannot free addresses handed out
// again since.
func (a *PodAllocator) ReleasePodGeneration(ctx context.Context, containerID, ifname string, gen uint64) (*PodAllocation, error) {
	return a.release(ctx, containerID, ifname, func(pr *podRecord) bool { return pr.Gen == gen })
}

func (a *PodAllocator) release(ctx context.Context, containerID, ifname string, ok func(*podRecord) bool) (*PodAllocation, error) {
	if err := validateAttachment(containerID, ifname); err != nil {
		return nil, err
	}
	key := podKey(containerID, ifname)
	var out *PodAllocation
	err := a.s.update(ctx, func(tx *bolt.Tx) error {
		pr, err := getPodRecord(tx, key)
		if err != nil || pr == nil || !ok(pr) {
			return err
		}
		al := pr.allocation()
		out = &al
		return a.s.releasePod(tx, key, pr, a.s.now())
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: release %s/%s: %w", containerID, ifname, err)
	}
	return out, nil
}

// ReleasePodIP frees the pod allocation that holds addr if that allocation was made with
// generation gen (all of its addresses go, as with ReleasePod); otherwise (addr free, cooling,
// or handed out again since) it is a no-op returning nil, nil.
func (a *PodAllocator) ReleasePodIP(ctx context.Context, addr netip.Addr, gen uint64) (*PodAllocation, error) {
	addr = addr.Unmap()
	var out *PodAllocation
	err := a.s.update(ctx, func(tx *bolt.Tx) error {
		r, err := getPool(tx, poolName(KindPod, addr.Is6())).get(ordOfAddr(addr), width(addr.Is6()))
		if err != nil || r == nil || !r.held() || r.Gen != gen {
			return err
		}
		key := r.Users[0].Key
		pr, err := getPodRecord(tx, key)
		if err != nil || pr == nil {
			return err
		}
		al := pr.allocation()
		out = &al
		return a.s.releasePod(tx, key, pr, a.s.now())
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: release pod IP %s: %w", addr, err)
	}
	return out, nil
}

// CheckPod returns the allocation of attachment (containerID, ifname) after checking that the
// store still gives each of its addresses to it and that they lie in the allocator's ranges. It
// fails with ErrNotFound for an unknown attachment, and with an error saying what is wrong
// otherwise (CNI CHECK reports it).
func (a *PodAllocator) CheckPod(ctx context.Context, containerID, ifname string) (*PodAllocation, error) {
	if err := validateAttachment(containerID, ifname); err != nil {
		return nil, err
	}
	key := podKey(containerID, ifname)
	var out *PodAllocation
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		pr, err := getPodRecord(tx, key)
		if err != nil {
			return err
		}
		if pr == nil {
			return ErrNotFound
		}
		for _, ip := range pr.IPs {
			ad := ip.Address.Addr()
			if a.rangeOf(ad) == nil {
				return fmt.Errorf("address %s is in no pod range of this node (%s)", ad, a.rangesString())
			}
			r, err := getPool(tx, poolName(KindPod, ad.Is6())).get(ordOfAddr(ad), width(ad.Is6()))
			if err != nil {
				return err
			}
			if r == nil || !r.hasUser(key) {
				return fmt.Errorf("address %s is not recorded as held by this attachment", ad)
			}
		}
		if len(pr.IPs) != len(a.families) {
			return fmt.Errorf("attachment has %d addresses, the node's pod ranges (%s) want %d", len(pr.IPs), a.rangesString(), len(a.families))
		}
		al := pr.allocation()
		out = &al
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: check %s/%s: %w", containerID, ifname, err)
	}
	return out, nil
}

func (a *PodAllocator) rangesString() string {
	ids := make([]string, len(a.ranges))
	for i, sp := range a.ranges {
		ids[i] = sp.id
	}
	return strings.Join(ids, ", ")
}

// PodUsage is the pod allocator's status.
type PodUsage struct {
	Ranges []RangeUsage    `json:"ranges"`
	Pods   []PodAllocation `json:"pods"`
	Items  []Allocation    `json:"items"` // every pod IP allocated or cooling down
}

// Status returns the usage of each pod range (size, used, free, cooling down) and every pod
// allocation with its owner.
func (a *PodAllocator) Status(ctx context.Context) (PodUsage, error) {
	var u PodUsage
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		for _, sp := range a.ranges {
			u.Ranges = append(u.Ranges, getPool(tx, sp.pool).usage(sp, now, a.s.podCooldown))
		}
		var err error
		for _, name := range []string{"pod4", "pod6"} {
			if u.Items, err = a.s.appendAllocations(u.Items, getPool(tx, name), now); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			pr := &podRecord{}
			if err := json.Unmarshal(v, pr); err != nil {
				return fmt.Errorf("decode pod record %q: %w", k, err)
			}
			u.Pods = append(u.Pods, pr.allocation())
			return nil
		})
	})
	if err != nil {
		return PodUsage{}, fmt.Errorf("ipam: pod status: %w", err)
	}
	return u, nil
}

// Available returns nil when every address family of the allocator has a free address in one
// of its ranges, else an *ExhaustedError (CNI STATUS fails with it).
func (a *PodAllocator) Available(ctx context.Context) error {
	return a.s.view(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		for _, fam := range a.families {
			p := getPool(tx, fam[0].pool)
			e := &ExhaustedError{Kind: KindPod}
			for _, sp := range fam {
				u := p.usage(sp, now, a.s.podCooldown)
				if u.Free > 0 {
					e = nil
					break
				}
				e.Ranges = append(e.Ranges, u)
			}
			if e != nil {
				return e
			}
		}
		return nil
	})
}

// Pods returns the pods registered through AllocatePod, one model.Pod per container (its
// attachments' addresses together), with the namespace, name and labels given at ADD, so that
// the daemon can match them against service selectors. Sorted by namespace, name, address.
func (a *PodAllocator) Pods(ctx context.Context) ([]model.Pod, error) {
	byContainer := map[string]*model.Pod{}
	var order []string
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			pr := &podRecord{}
			if err := json.Unmarshal(v, pr); err != nil {
				return fmt.Errorf("decode pod record %q: %w", k, err)
			}
			p := byContainer[pr.Owner.ContainerID]
			if p == nil {
				p = &model.Pod{Namespace: pr.Owner.Namespace, Name: pr.Owner.Name, NodeName: a.nodeName, Ready: true}
				byContainer[pr.Owner.ContainerID] = p
				order = append(order, pr.Owner.ContainerID)
			}
			if p.Labels == nil && pr.Owner.Labels != nil {
				p.Labels = maps.Clone(pr.Owner.Labels)
			}
			for _, ip := range pr.IPs {
				p.IPs = append(p.IPs, ip.Address.Addr())
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: list pods: %w", err)
	}
	out := make([]model.Pod, 0, len(order))
	for _, id := range order {
		p := byContainer[id]
		slices.SortFunc(p.IPs, netip.Addr.Compare)
		out = append(out, *p)
	}
	slices.SortStableFunc(out, func(x, y model.Pod) int {
		if c := strings.Compare(x.Namespace, y.Namespace); c != 0 {
			return c
		}
		if c := strings.Compare(x.Name, y.Name); c != 0 {
			return c
		}
		if len(x.IPs) > 0 && len(y.IPs) > 0 {
			return x.IPs[0].Compare(y.IPs[0])
		}
		return 0
	})
	return out, nil
}
