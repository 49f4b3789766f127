package ipam

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// ServiceOptions tune a ServiceAllocator.
type ServiceOptions struct {
	// ServiceCIDRs are the configured service ranges, reported by Status (ServiceIP accepts any
	// range and reports it too from then on).
	ServiceCIDRs []netip.Prefix
	// NodePortRange is where node ports and health-check node ports come from; the zero value
	// means DefaultNodePortRange.
	NodePortRange PortRange
	// GracePeriod is how long the VIPs and node ports of a service missing from the newest
	// config are kept for it; 0 means DefaultGracePeriod, a negative value frees them at once.
	GracePeriod time.Duration
}

// ServiceAllocator hands out service VIPs and node ports for the standalone config, backed by
// the store: a service keeps its VIP and node ports across reloads and restarts, and gets them
// back when it returns within the grace period. It implements config.Allocator and is safe for
// concurrent use.
//
// Protocol with the config loader: for each config, call Retain with the config's services
// and ServiceIP / NodePort / HealthCheckNodePort for everything it holds (explicit values
// included, that is how they are reserved), in either order (config.BuildState calls Retain
// first). A service missing from the Retain list starts its grace period at that Retain.
// Items of retained services that were not asked for between the previous two Retain calls
// (a removed port, a health-check port no longer needed) start theirs too: with Retain first,
// that is at the reload after the one that dropped them.
//
// Asking again for what a service already holds, and a Retain that changes nothing (the reload
// of an unchanged config), commit no write transaction; the allocator remembers what it last
// read, and trusts it only while no write transaction has ended on the store since.
type ServiceAllocator struct {
	s         *Store
	nodePorts *space
	grace     time.Duration

	mu      sync.Mutex
	ranges  map[netip.Prefix]*space
	order   []netip.Prefix
	touched map[string]bool // user keys asked for since the last Retain
	calls   int             // allocation calls since the last Retain
	// memo holds heldBy's answers by pool and user key, for the keys asked for since the last
	// Retain; memoPrev those of the cycle before (entries unused for a whole cycle are dropped).
	memo, memoPrev map[string]heldMemo
	// swept holds the records decodeSwept decoded in the current sweep, by their bytes;
	// sweptPrev those of the sweep before.
	swept, sweptPrev map[string]*record
}

// Package ipam does not import package config, so that it builds and tests on its own;
// ipam/configcheck asserts at compile time that *ServiceAllocator implements config.Allocator.

// NewServiceAllocator returns the store's service VIP and node port allocator. It fails when a
// range in opts is invalid.
func (s *Store) NewServiceAllocator(opts ServiceOptions) (*ServiceAllocator, error) {
	r := opts.NodePortRange
	if r == (PortRange{}) {
		r = DefaultNodePortRange
	}
	np, err := nodePortSpace(r)
	if err != nil {
		return nil, err
	}
	a := &ServiceAllocator{s: s, nodePorts: np, grace: opts.GracePeriod, ranges: map[netip.Prefix]*space{}, touched: map[string]bool{},
		memo: map[string]heldMemo{}, swept: map[string]*record{}}
	if a.grace == 0 {
		a.grace = DefaultGracePeriod
	}
	for _, c := range opts.ServiceCIDRs {
		if _, err := a.serviceRange(c); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// SetNodePortRange changes the range node ports are allocated from (the config's
// nodePortRange changed). Ports already held outside it are replaced when next asked for
// without an explicit value; explicit ones outside it are refused. It fails on an invalid range.
func (a *ServiceAllocator) SetNodePortRange(r PortRange) error {
	np, err := nodePortSpace(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.nodePorts = np
	a.mu.Unlock()
	return nil
}

// NodePortRange returns the range node ports are allocated from.
func (a *ServiceAllocator) NodePortRange() PortRange {
	a.mu.Lock()
	defer a.mu.Unlock()
	return PortRange{uint16(a.nodePorts.first.lo), uint16(a.nodePorts.last.lo)}
}

func (a *ServiceAllocator) serviceRange(cidr netip.Prefix) (*space, error) {
	cidr = cidr.Masked()
	a.mu.Lock()
	defer a.mu.Unlock()
	if sp := a.ranges[cidr]; sp != nil {
		return sp, nil
	}
	sp, err := serviceSpace(cidr)
	if err != nil {
		return nil, err
	}
	a.ranges[cidr] = sp
	a.order = append(a.order, cidr)
	return sp, nil
}

func (a *ServiceAllocator) touch(key string) {
	a.mu.Lock()
	a.touched[key] = true
	a.calls++
	a.mu.Unlock()
}

// itemReq is one request for a VIP or node port.
type itemReq struct {
	key     string // user key, unique per pool
	proto   string // node ports of services only: lets ports of one service share a number
	service string // "namespace/name"
	owner   string // for people
	want    ord
	hasWant bool
}

// ServiceIP returns the VIP of service key in range cidr (config.Allocator): want when it is
// valid (reserved for the service; a *ConflictError naming the owner when another service holds
// it, ErrOutOfRange when it is not a usable address of cidr), else the VIP the service already
// has in cidr, else a new one from the upper band of cidr first (an *ExhaustedError naming the
// range when cidr is full). A service holds one VIP per address family: a new one replaces
// the old.
func (a *ServiceAllocator) ServiceIP(key model.ServiceKey, cidr netip.Prefix, want netip.Addr) (netip.Addr, error) {
	sp, err := a.serviceRange(cidr)
	if err != nil {
		return netip.Addr{}, err
	}
	req := itemReq{key: "vip:" + key.String(), service: key.String(), owner: "service " + key.String()}
	if want.IsValid() {
		want = want.Unmap()
		if want.Is6() != sp.v6 {
			return netip.Addr{}, fmt.Errorf("ipam: service VIP %s of %s is not in service range %s: %w", want, key, sp.id, ErrOutOfRange)
		}
		req.want, req.hasWant = ordOfAddr(want), true
	}
	o, err := a.allocate(context.Background(), sp, req)
	if err != nil {
		return netip.Addr{}, err
	}
	return addrOfOrd(o, sp.v6), nil
}

// NodePort returns the node port of port key (config.Allocator): want when non-zero (reserved;
// a *ConflictError naming the owner when another service holds it, ErrOutOfRange when outside
// the node port range), else the one it already has, else a new one from the upper band of the
// range first. Ports of one service that differ in protocol may share a number.
func (a *ServiceAllocator) NodePort(key model.PortKey, want uint16) (uint16, error) {
	req := itemReq{key: "np:" + key.String(), proto: string(key.Protocol), service: key.Service.String()}
	req.owner = fmt.Sprintf("service %s port %s", key.Service, portName(key))
	return a.nodePort(req, want)
}

// HealthCheckNodePort is NodePort for the health-check node port of service key.
func (a *ServiceAllocator) HealthCheckNodePort(key model.ServiceKey, want uint16) (uint16, error) {
	req := itemReq{key: "hc:" + key.String(), service: key.String(), owner: "health check of service " + key.String()}
	return a.nodePort(req, want)
}

func portName(k model.PortKey) string {
	if k.Port == "" {
		return string(k.Protocol)
	}
	return k.Port + "/" + string(k.Protocol)
}

func (a *ServiceAllocator) nodePort(req itemReq, want uint16) (uint16, error) {
	if want != 0 {
		req.want, req.hasWant = ord{0, uint64(want)}, true
	}
	a.mu.Lock()
	sp := a.nodePorts
	a.mu.Unlock()
	o, err := a.allocate(context.Background(), sp, req)
	if err != nil {
		return 0, err
	}
	return uint16(o.lo), nil
}

// allocate serves a VIP or node port request in space sp.
func (a *ServiceAllocator) allocate(ctx context.Context, sp *space, req itemReq) (ord, error) {
	a.touch(req.key)
	// Read-only first: what the user already holds is answered without a write transaction,
	// and without any transaction when nothing was written since it was last read.
	mk := sp.pool + "\x00" + req.key
	m, known := a.memoized(mk)
	if known && m.held && m.gen == a.s.writes.Load() && sp.contains(m.cur) && (!req.hasWant || req.want == m.cur) {
		return m.cur, nil
	}
	gen := a.s.writes.Load()
	var got ord
	var raw []byte
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		p := getPool(tx, sp.pool)
		cur, ok := p.lookup(req.key)
		if !ok || !sp.contains(cur) || (req.hasWant && req.want != cur) {
			return nil
		}
		if v := p.items.Get(encode(cur, sp.width)); v != nil {
			got, raw = cur, bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return ord{}, err
	}
	if raw != nil {
		held, err := a.heldBy(mk, req.key, m, known, heldMemo{raw: raw, cur: got, gen: gen})
		if err != nil || held {
			return got, err
		}
	}
	got = ord{}
	err = a.s.update(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		p := getPool(tx, sp.pool)
		cur, has := p.lookup(req.key)
		if has {
			if r, err := p.get(cur, sp.width); err != nil {
				return err
			} else if r == nil || !r.hasUser(req.key) {
				has = false
			}
		}
		if req.hasWant {
			if !sp.contains(req.want) {
				return fmt.Errorf("ipam: %s %s requested by %s is outside %s (usable %s-%s): %w",
					itemNoun(sp.kind), sp.format(req.want), req.owner, sp, sp.format(sp.first), sp.format(sp.last), ErrOutOfRange)
			}
			if has && cur == req.want {
				got = cur
				return clearMissing(p, sp.width, cur, req.key)
			}
			r, err := p.get(req.want, sp.width)
			if err != nil {
				return err
			}
			if r != nil && r.held() && a.expired(r, now) {
				if _, err := a.freeExpired(p, sp.width, req.want, r, now); err != nil {
					return err
				}
				r = nil
			}
			if r != nil && r.held() {
				if !canShare(r, req) {
					return &ConflictError{Kind: sp.kind, Item: sp.format(req.want), Range: sp.id, Owner: r.Owner}
				}
				r.Users = append(r.Users, user{Key: req.key, Proto: req.proto})
				if err := p.put(req.want, sp.width, r); err != nil {
					return err
				}
				if err := p.users.Put([]byte(req.key), encode(req.want, sp.width)); err != nil {
					return err
				}
			} else if err := a.takeNew(tx, p, sp, req, req.want, now, false); err != nil {
				return err
			}
			if has {
				if _, err := p.drop(cur, sp.width, req.key, now, 0); err != nil {
					return err
				}
			}
			got = req.want
			return nil
		}
		if has && sp.contains(cur) {
			got = cur
			return clearMissing(p, sp.width, cur, req.key)
		}
		if has {
			if _, err := p.drop(cur, sp.width, req.key, now, 0); err != nil {
				return err
			}
		}
		o, ok := p.pick(sp, now, 0)
		if !ok {
			// Full: free what outlived its grace period, then try again.
			if freed, err := a.sweepPool(p, sp.kind, sp.v6, now, nil); err != nil {
				return err
			} else if len(freed) > 0 {
				o, ok = p.pick(sp, now, 0)
			}
		}
		if !ok {
			return &ExhaustedError{Kind: sp.kind, Owner: req.owner, Ranges: []RangeUsage{p.usage(sp, now, 0)}}
		}
		got = o
		return a.takeNew(tx, p, sp, req, o, now, true)
	})
	if err != nil {
		var ce *ConflictError
		var ee *ExhaustedError
		if errors.As(err, &ce) || errors.As(err, &ee) || errors.Is(err, ErrOutOfRange) {
			return ord{}, err
		}
		return ord{}, fmt.Errorf("ipam: allocate for %s: %w", req.owner, err)
	}
	return got, nil
}

// heldMemo is what the read-only path of allocate last found for one user key: the bytes of
// the record of the item cur the user's index pointed at, whether they show the user holding
// it (not missing), and the store's write count before that read.
type heldMemo struct {
	raw  []byte
	cur  ord
	held bool
	gen  uint64
}

// memoized returns the memo of pool-and-user key mk, if any.
func (a *ServiceAllocator) memoized(mk string) (heldMemo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.memo[mk]
	if !ok {
		if m, ok = a.memoPrev[mk]; ok {
			a.memo[mk] = m
		}
	}
	return m, ok
}

// heldBy reports whether the record just read (now.raw, of item now.cur) shows user key
// holding the item, and remembers it as mk's memo. The answer depends on the bytes alone:
// when they equal those of the previous memo (prev, when known), they are not decoded again.
func (a *ServiceAllocator) heldBy(mk, key string, prev heldMemo, known bool, now heldMemo) (bool, error) {
	if known && bytes.Equal(prev.raw, now.raw) {
		now.held = prev.held
	} else {
		r, err := decodeRecord(now.raw)
		if err != nil {
			return false, err
		}
		i := r.userIndex(key)
		now.held = i >= 0 && r.Users[i].Missing == 0
	}
	a.mu.Lock()
	a.memo[mk] = now
	a.mu.Unlock()
	return now.held, nil
}

func (a *ServiceAllocator) takeNew(tx *bolt.Tx, p pool, sp *space, req itemReq, o ord, now time.Time, dynamic bool) error {
	gen, err := nextGen(tx)
	if err != nil {
		return err
	}
	r := &record{Owner: req.owner, Service: req.service, Gen: gen, At: now.UnixNano(), Users: []user{{Key: req.key, Proto: req.proto}}}
	return p.take(sp, o, r, dynamic)
}

// canShare reports whether node port record r may also serve req: ports of one service that
// differ in protocol may share a number (as in Kubernetes); health-check ports never share.
func canShare(r *record, req itemReq) bool {
	if req.proto == "" || r.Service != req.service {
		return false
	}
	for _, u := range r.Users {
		if u.Proto == "" || u.Proto == req.proto {
			return false
		}
	}
	return true
}

func clearMissing(p pool, width int, o ord, key string) error {
	r, err := p.get(o, width)
	if err != nil || r == nil {
		return err
	}
	i := r.userIndex(key)
	if i < 0 || r.Users[i].Missing == 0 {
		return nil
	}
	r.Users[i].Missing = 0
	return p.put(o, width, r)
}

// userExpired reports whether u's grace period is over at now.
func (a *ServiceAllocator) userExpired(u user, now time.Time) bool {
	if u.Missing == 0 {
		return false
	}
	return a.grace < 0 || !now.Before(time.Unix(0, u.Missing).Add(a.grace))
}

// expired reports whether every user of r outlived its grace period.
func (a *ServiceAllocator) expired(r *record, now time.Time) bool {
	for _, u := range r.Users {
		if !a.userExpired(u, now) {
			return false
		}
	}
	return r.held()
}

// freeExpired drops the users of item o (record r) whose grace is over; it reports whether
// the item became free.
func (a *ServiceAllocator) freeExpired(p pool, width int, o ord, r *record, now time.Time) (bool, error) {
	free := false
	for _, u := range slices.Clone(r.Users) {
		if a.userExpired(u, now) {
			f, err := p.drop(o, width, u.Key, now, 0)
			if err != nil {
				return false, err
			}
			free = free || f
		}
	}
	return free, nil
}

// sweepRecord marks the users of r missing per rs (when non-nil) and reports whether r changes
// or has a user whose grace is over.
func (a *ServiceAllocator) sweepRecord(r *record, now time.Time, rs *retainSet) bool {
	changed := false
	for i, u := range r.Users {
		if rs != nil && u.Missing == 0 && (!rs.services[r.Service] || (rs.cycle && !rs.touched[u.Key])) {
			r.Users[i].Missing = now.UnixNano()
			changed = true
		}
		if a.userExpired(r.Users[i], now) {
			changed = true
		}
	}
	return changed
}

// sweepNeeded reports whether sweepPool would change anything in p.
func (a *ServiceAllocator) sweepNeeded(p pool, now time.Time, rs *retainSet) (bool, error) {
	errFound := errors.New("found")
	err := p.items.ForEach(func(k, v []byte) error {
		r, err := a.decodeSwept(v)
		if err != nil {
			return fmt.Errorf("pool %s item %x: %w", p.name, k, err)
		}
		if a.sweepRecord(r, now, rs) {
			return errFound
		}
		return nil
	})
	if errors.Is(err, errFound) {
		return true, nil
	}
	return false, err
}

// decodeSwept decodes item record v for sweepPool, remembering the records of the last two
// sweeps by their bytes: a sweep over records that did not change decodes none. The record
// returned is the caller's own.
func (a *ServiceAllocator) decodeSwept(v []byte) (*record, error) {
	a.mu.Lock()
	r, ok := a.swept[string(v)]
	if !ok {
		if r, ok = a.sweptPrev[string(v)]; ok {
			a.swept[string(v)] = r
		}
	}
	a.mu.Unlock()
	if !ok {
		var err error
		if r, err = decodeRecord(v); err != nil {
			return nil, err
		}
		a.mu.Lock()
		a.swept[string(v)] = r
		a.mu.Unlock()
	}
	c := *r
	c.Users = slices.Clone(r.Users)
	return &c, nil
}

// retainSet says which users stay (a Retain in progress); nil means expiry only.
type retainSet struct {
	services map[string]bool
	touched  map[string]bool
	cycle    bool // allocation calls were made since the previous Retain
}

// sweepPool marks users missing per rs (when non-nil) and frees those whose grace is over,
// returning the freed items.
func (a *ServiceAllocator) sweepPool(p pool, kind Kind, v6 bool, now time.Time, rs *retainSet) ([]Allocation, error) {
	type change struct {
		o ord
		r *record
	}
	width := itemWidth(kind, v6)
	var changes []change
	err := p.items.ForEach(func(k, v []byte) error {
		r, err := a.decodeSwept(v)
		if err != nil {
			return fmt.Errorf("pool %s item %x: %w", p.name, k, err)
		}
		if a.sweepRecord(r, now, rs) {
			changes = append(changes, change{decode(k), r})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sp := &space{kind: kind, v6: v6}
	var freed []Allocation
	for _, c := range changes {
		if err := p.put(c.o, width, c.r); err != nil {
			return nil, err
		}
		var gone []string
		for _, u := range c.r.Users {
			if a.userExpired(u, now) {
				gone = append(gone, u.Key)
			}
		}
		free, err := a.freeExpired(p, width, c.o, c.r, now)
		if err != nil {
			return nil, err
		}
		if len(gone) > 0 {
			freed = append(freed, Allocation{Kind: kind, Item: sp.format(c.o), Owner: c.r.Owner, Users: gone,
				Generation: c.r.Gen, Allocated: time.Unix(0, c.r.At)})
			a.s.log.Info("ipam: grace period over, released", "kind", kind, "item", sp.format(c.o), "owner", c.r.Owner, "users", gone, "itemFree", free)
		}
	}
	return freed, nil
}

var servicePools = []struct {
	name string
	kind Kind
	v6   bool
}{{"svc4", KindService, false}, {"svc6", KindService, true}, {"nodeport", KindNodePort, false}}

// Retain tells the allocator which services the newest good config holds (config.Allocator):
// the VIPs and node ports of every other service, and those of retained services that were
// not asked for since the previous Retain, start their grace period (the time is stored, so
// it survives restarts); whatever outlived its grace period is freed. Errors are logged; use
// RetainContext to get them.
func (a *ServiceAllocator) Retain(services []model.ServiceKey) {
	if _, err := a.RetainContext(context.Background(), services); err != nil {
		a.s.log.Error("ipam: retain services", "err", err)
	}
}

// RetainContext is Retain returning what it freed, and its error.
func (a *ServiceAllocator) RetainContext(ctx context.Context, services []model.ServiceKey) ([]Allocation, error) {
	a.mu.Lock()
	rs := &retainSet{services: make(map[string]bool, len(services)), touched: a.touched, cycle: a.calls > 0}
	a.touched, a.calls = map[string]bool{}, 0
	a.memo, a.memoPrev = make(map[string]heldMemo, len(a.memo)), a.memo
	a.mu.Unlock()
	for _, k := range services {
		rs.services[k.String()] = true
	}
	freed, err := a.sweep(ctx, rs)
	if err != nil {
		// Nothing was marked: let the next Retain see this cycle's requests too.
		a.mu.Lock()
		for k := range rs.touched {
			a.touched[k] = true
		}
		a.calls++
		a.mu.Unlock()
		return nil, fmt.Errorf("ipam: retain services: %w", err)
	}
	return freed, nil
}

// Sweep frees the VIPs and node ports whose grace period is over and returns them. Retain and
// Run call it; allocation calls it when a range is full.
func (a *ServiceAllocator) Sweep(ctx context.Context) ([]Allocation, error) {
	freed, err := a.sweep(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("ipam: sweep: %w", err)
	}
	return freed, nil
}

func (a *ServiceAllocator) sweep(ctx context.Context, rs *retainSet) ([]Allocation, error) {
	a.mu.Lock()
	a.swept, a.sweptPrev = make(map[string]*record, len(a.swept)), a.swept
	a.mu.Unlock()
	// Read-only first: a sweep that changes nothing (the reload of an unchanged config) costs
	// no write transaction.
	needed := false
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		for _, sp := range servicePools {
			n, err := a.sweepNeeded(getPool(tx, sp.name), now, rs)
			if err != nil || n {
				needed = n
				return err
			}
		}
		return nil
	})
	if err != nil || !needed {
		return nil, err
	}
	var freed []Allocation
	err = a.s.update(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		freed = nil
		for _, sp := range servicePools {
			f, err := a.sweepPool(getPool(tx, sp.name), sp.kind, sp.v6, now, rs)
			if err != nil {
				return err
			}
			freed = append(freed, f...)
		}
		return nil
	})
	return freed, err
}

// Run calls Sweep every interval until ctx is done, so that grace periods end on time even when
// no config is loaded. Errors are logged.
func (a *ServiceAllocator) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := a.Sweep(ctx); err != nil && ctx.Err() == nil {
				a.s.log.Error("ipam: sweep", "err", err)
			}
		}
	}
}

// ReleaseService frees at once every VIP and node port of service key, and returns them.
func (a *ServiceAllocator) ReleaseService(ctx context.Context, key model.ServiceKey) ([]Allocation, error) {
	var freed []Allocation
	err := a.s.update(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		freed = nil
		for _, spd := range servicePools {
			p := getPool(tx, spd.name)
			width := itemWidth(spd.kind, spd.v6)
			sp := &space{kind: spd.kind, v6: spd.v6}
			type hit struct {
				o ord
				r *record
			}
			var hits []hit
			err := p.items.ForEach(func(k, v []byte) error {
				r, err := decodeRecord(v)
				if err == nil && r.held() && r.Service == key.String() {
					hits = append(hits, hit{decode(k), r})
				}
				return err
			})
			if err != nil {
				return err
			}
			for _, h := range hits {
				var keys []string
				for _, u := range h.r.Users {
					keys = append(keys, u.Key)
					if _, err := p.drop(h.o, width, u.Key, now, 0); err != nil {
						return err
					}
				}
				freed = append(freed, Allocation{Kind: spd.kind, Item: sp.format(h.o), Owner: h.r.Owner, Users: keys, Generation: h.r.Gen, Allocated: time.Unix(0, h.r.At)})
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: release service %s: %w", key, err)
	}
	return freed, nil
}

// ServiceUsage is the service allocator's status.
type ServiceUsage struct {
	Ranges []RangeUsage `json:"ranges"` // each known service range, then the node port range
	Items  []Allocation `json:"items"`  // every VIP and node port held, with its owner
}

// Status returns the usage of each known service range and of the node port range, and every
// VIP and node port with its owner (and, for a service gone from the config, since when).
func (a *ServiceAllocator) Status(ctx context.Context) (ServiceUsage, error) {
	a.mu.Lock()
	spaces := make([]*space, 0, len(a.order)+1)
	for _, c := range a.order {
		spaces = append(spaces, a.ranges[c])
	}
	spaces = append(spaces, a.nodePorts)
	a.mu.Unlock()
	var u ServiceUsage
	err := a.s.view(ctx, func(tx *bolt.Tx) error {
		now := a.s.now()
		for _, sp := range spaces {
			u.Ranges = append(u.Ranges, getPool(tx, sp.pool).usage(sp, now, 0))
		}
		var err error
		for _, sp := range servicePools {
			if u.Items, err = a.s.appendAllocations(u.Items, getPool(tx, sp.name), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ServiceUsage{}, fmt.Errorf("ipam: service status: %w", err)
	}
	return u, nil
}
