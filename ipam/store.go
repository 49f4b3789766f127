package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// DBFile is the name of the store's database in the state directory.
const DBFile = "ipam.db"

// Defaults of Options and ServiceOptions.
const (
	DefaultPodCooldown = 30 * time.Second
	DefaultGracePeriod = 10 * time.Minute
	DefaultLockTimeout = 2 * time.Second
)

const schemaVersion = "1"

var (
	bucketMeta = []byte("meta")
	bucketPods = []byte("pods")
	subItems   = []byte("items")
	subUsers   = []byte("users")
	subCursors = []byte("cursors")
	keyVersion = []byte("version")
	poolNames  = []string{"pod4", "pod6", "svc4", "svc6", "nodeport"}
)

// Options tune a Store. The zero value is the production setting.
type Options struct {
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// PodCooldown is how long a freed pod IP waits before it is handed out again; 0 means
	// DefaultPodCooldown, a negative value means no cooldown.
	PodCooldown time.Duration
	// LockTimeout is how long Open waits for another process to release the state directory;
	// 0 means DefaultLockTimeout.
	LockTimeout time.Duration
	// Logger receives a line per release done on the store's own initiative (grace expiry,
	// GC); nil means slog.Default().
	Logger *slog.Logger
	// Mono is the monotonic clock GC measures its grace period on: time elapsed since some
	// fixed point of this process. nil means the monotonic reading of time.Now. Tests inject
	// one that does not follow Now, so that Now can jump.
	Mono func() time.Duration
	// PodGCGrace is how long CNI GC must see an attachment missing from the runtime's list
	// (measured on Mono, by this process) before it frees it; 0 or less means
	// DefaultPodGCGrace.
	PodGCGrace time.Duration
}

// Store is the persistent allocation state of one node, a bbolt database in the state
// directory. Every allocation and release is one fsync'd transaction; the database file is
// locked (flock) so that a second process cannot open it. A Store is safe for concurrent use.
type Store struct {
	// writes counts the read-write transactions that ended (committed or not): a read made
	// while it had a value still holds while it has that value.
	writes      atomic.Uint64
	db          *bolt.DB
	path        string
	now         func() time.Time
	podCooldown time.Duration
	log         *slog.Logger
	// cniGC tracks, for CNI GC, since when each allocation has been missing from the
	// runtime's list.
	cniGC *GCTracker
}

// Open opens (creating it when missing) the store in directory dir. It fails when dir cannot be
// created, when another process holds the store (ErrLocked, after Options.LockTimeout), and when
// the database is damaged or of an unknown schema.
func Open(dir string, opts Options) (*Store, error) {
	if dir == "" {
		return nil, errors.New("ipam: open store: empty state directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: open store: create state directory: %w", err)
	}
	s := &Store{path: filepath.Join(dir, DBFile), now: opts.Now, podCooldown: opts.PodCooldown, log: opts.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	switch {
	case s.podCooldown == 0:
		s.podCooldown = DefaultPodCooldown
	case s.podCooldown < 0:
		s.podCooldown = 0
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.cniGC = NewGCTracker(opts.PodGCGrace, opts.Mono)
	lt := opts.LockTimeout
	if lt <= 0 {
		lt = DefaultLockTimeout
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: lt})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("ipam: open %s: %w (waited %s for its lock)", s.path, ErrLocked, lt)
	}
	if err != nil {
		return nil, fmt.Errorf("ipam: open %s: %w", s.path, err)
	}
	s.db = db
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if err := meta.Put(keyVersion, []byte(schemaVersion)); err != nil {
				return err
			}
		case string(v) != schemaVersion:
			return fmt.Errorf("schema version %q, this svcproxy knows %q", v, schemaVersion)
		}
		if _, err := tx.CreateBucketIfNotExists(bucketPods); err != nil {
			return err
		}
		for _, name := range poolNames {
			b, err := tx.CreateBucketIfNotExists([]byte(name))
			if err != nil {
				return err
			}
			for _, sub := range [][]byte{subItems, subUsers, subCursors} {
				if _, err := b.CreateBucketIfNotExists(sub); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("ipam: initialise %s: %w", s.path, err)
	}
	return s, nil
}

// Close closes the store and releases its lock. Allocators made from it must not be used after.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("ipam: close %s: %w", s.path, err)
	}
	return nil
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Check verifies the database's internal consistency (bbolt's page check) and the store's own
// invariants: every item is held by the owners its user index says, no owner holds two items of
// one pool, and every pod record's addresses are held by that pod. It returns every problem
// found, joined.
func (s *Store) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var errs []error
	err := s.db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			errs = append(errs, fmt.Errorf("bbolt: %w", e))
		}
		for _, name := range poolNames {
			p := getPool(tx, name)
			seen := map[string]string{}
			err := p.items.ForEach(func(k, v []byte) error {
				r, err := decodeRecord(v)
				if err != nil {
					errs = append(errs, fmt.Errorf("pool %s item %x: %w", name, k, err))
					return nil
				}
				for _, u := range r.Users {
					if prev, dup := seen[u.Key]; dup {
						errs = append(errs, fmt.Errorf("pool %s: user %q holds items %x and %x", name, u.Key, prev, k))
					}
					seen[u.Key] = string(k)
					if got := p.users.Get([]byte(u.Key)); string(got) != string(k) {
						errs = append(errs, fmt.Errorf("pool %s: item %x lists user %q whose index says %x", name, k, u.Key, got))
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			err = p.users.ForEach(func(k, v []byte) error {
				if seen[string(k)] != string(v) {
					errs = append(errs, fmt.Errorf("pool %s: index entry %q -> %x has no matching item", name, k, v))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			var pr podRecord
			if err := json.Unmarshal(v, &pr); err != nil {
				errs = append(errs, fmt.Errorf("pod record %q: %w", k, err))
				return nil
			}
			for _, ip := range pr.IPs {
				a := ip.Address.Addr()
				p := getPool(tx, poolName(KindPod, a.Is6()))
				r, err := p.get(ordOfAddr(a), width(a.Is6()))
				if err != nil || r == nil || !r.hasUser(string(k)) {
					errs = append(errs, fmt.Errorf("pod record %q: address %s is not held by it", k, a))
				}
			}
			return nil
		})
	})
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("ipam: check %s: %w", s.path, errors.Join(errs...))
	}
	return nil
}

// update runs fn in one read-write transaction (committed and fsync'd when fn returns nil).
func (s *Store) update(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	defer s.writes.Add(1) // after the transaction, so that no read taken before it looks current
	return s.db.Update(fn)
}

func (s *Store) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// nextGen returns the next generation number: monotonic over the store's life, because the
// sequence is committed in the same transaction as the allocation that uses it.
func nextGen(tx *bolt.Tx) (uint64, error) { return tx.Bucket(bucketMeta).NextSequence() }

// record is the value of an item in a pool. An item with users is allocated; an item without
// users but with FreedAt is cooling down; items absent from the pool are free.
type record struct {
	Owner   string `json:"owner"`         // who holds it, for people and conflict errors
	Service string `json:"svc,omitempty"` // "namespace/name" for service and node port items
	Gen     uint64 `json:"gen"`
	At      int64  `json:"at"` // allocation time, Unix nanoseconds
	Users   []user `json:"users,omitempty"`
	FreedAt int64  `json:"freed,omitempty"` // Unix nanoseconds; set while cooling down
}

// user is one holder of an item: pods and VIPs have one; a node port may be shared by ports of
// one service that differ in protocol.
type user struct {
	Key   string `json:"key"`
	Proto string `json:"proto,omitempty"`
	// Missing is when the user's service left the config (Unix nanoseconds); 0 while present.
	Missing int64 `json:"missing,omitempty"`
}

func (r *record) held() bool { return len(r.Users) > 0 }

func (r *record) hasUser(key string) bool { return r.userIndex(key) >= 0 }

func (r *record) userIndex(key string) int {
	return slices.IndexFunc(r.Users, func(u user) bool { return u.Key == key })
}

// coolingUntil returns when a freed item may be reused; zero when it is not cooling.
func (r *record) coolingUntil(cooldown time.Duration) time.Time {
	if r.held() || r.FreedAt == 0 || cooldown <= 0 {
		return time.Time{}
	}
	return time.Unix(0, r.FreedAt).Add(cooldown)
}

func decodeRecord(v []byte) (*record, error) {
	r := &record{}
	if err := json.Unmarshal(v, r); err != nil {
		return nil, fmt.Errorf("decode allocation record: %w", err)
	}
	return r, nil
}

// pool is one pool's buckets inside a transaction.
type pool struct {
	name                  string
	items, users, cursors *bolt.Bucket
}

func getPool(tx *bolt.Tx, name string) pool {
	b := tx.Bucket([]byte(name))
	return pool{name: name, items: b.Bucket(subItems), users: b.Bucket(subUsers), cursors: b.Bucket(subCursors)}
}

func (p pool) get(o ord, width int) (*record, error) {
	v := p.items.Get(encode(o, width))
	if v == nil {
		return nil, nil
	}
	return decodeRecord(v)
}

func (p pool) put(o ord, width int, r *record) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return p.items.Put(encode(o, width), v)
}

// lookup returns the item user key holds in p.
func (p pool) lookup(key string) (ord, bool) {
	v := p.users.Get([]byte(key))
	if v == nil {
		return ord{}, false
	}
	return decode(v), true
}

// reusable reports whether an item whose record is v may be handed out at now.
func reusable(v []byte, now time.Time, cooldown time.Duration) bool {
	r, err := decodeRecord(v)
	if err != nil || r.held() {
		return false
	}
	until := r.coolingUntil(cooldown)
	return until.IsZero() || !now.Before(until)
}

// findFree returns the first item in [from, to] that is free (or whose cooldown is over).
func (p pool) findFree(width int, from, to ord, now time.Time, cooldown time.Duration) (ord, bool) {
	if from.cmp(to) > 0 {
		return ord{}, false
	}
	c := p.items.Cursor()
	cand := from
	k, v := c.Seek(encode(cand, width))
	for {
		if k == nil || decode(k) != cand || reusable(v, now, cooldown) {
			return cand, true
		}
		if cand == to {
			return ord{}, false
		}
		cand = cand.next()
		k, v = c.Next()
	}
}

// roundRobin returns a free item of [a, b], searching from just after cursor (when cursor is
// in the range) and wrapping around, so that the most recently allocated items come last.
func (p pool) roundRobin(width int, a, b, cursor ord, hasCursor bool, now time.Time, cd time.Duration) (ord, bool) {
	if hasCursor && a.cmp(cursor) <= 0 && cursor.cmp(b) < 0 {
		if o, ok := p.findFree(width, cursor.next(), b, now, cd); ok {
			return o, true
		}
		return p.findFree(width, a, cursor, now, cd)
	}
	return p.findFree(width, a, b, now, cd)
}

// pick returns a free item of sp for a dynamic allocation: the upper band first, round-robin
// from the space's cursor (the item it handed out last).
func (p pool) pick(sp *space, now time.Time, cd time.Duration) (ord, bool) {
	cv := p.cursors.Get([]byte(sp.id))
	cursor, hasCursor := decode(cv), cv != nil
	if sp.split != sp.first {
		if o, ok := p.roundRobin(sp.width, sp.split, sp.last, cursor, hasCursor, now, cd); ok {
			return o, true
		}
		return p.roundRobin(sp.width, sp.first, sp.split.prev(), cursor, hasCursor, now, cd)
	}
	return p.roundRobin(sp.width, sp.first, sp.last, cursor, hasCursor, now, cd)
}

// take records item o of sp as allocated to r (whose Users must hold exactly the new users),
// replacing whatever free or cooling record was there.
func (p pool) take(sp *space, o ord, r *record, moveCursor bool) error {
	if err := p.put(o, sp.width, r); err != nil {
		return err
	}
	k := encode(o, sp.width)
	for _, u := range r.Users {
		if err := p.users.Put([]byte(u.Key), k); err != nil {
			return err
		}
	}
	if moveCursor {
		return p.cursors.Put([]byte(sp.id), k)
	}
	return nil
}

// drop removes user key from item o. An item left without users is deleted, or kept as
// cooling down (FreedAt = now) when cooldown > 0. It reports whether the item became free.
func (p pool) drop(o ord, width int, key string, now time.Time, cooldown time.Duration) (bool, error) {
	r, err := p.get(o, width)
	if err != nil {
		return false, err
	}
	if v := p.users.Get([]byte(key)); v != nil && decode(v) == o {
		if err := p.users.Delete([]byte(key)); err != nil {
			return false, err
		}
	}
	if r == nil {
		return false, nil
	}
	i := r.userIndex(key)
	if i < 0 {
		return false, nil
	}
	r.Users = slices.Delete(r.Users, i, i+1)
	if r.held() {
		return false, p.put(o, width, r)
	}
	if cooldown <= 0 {
		return true, p.items.Delete(encode(o, width))
	}
	r.FreedAt = now.UnixNano()
	return true, p.put(o, width, r)
}

// usage counts the items of sp that are allocated and cooling down at now.
func (p pool) usage(sp *space, now time.Time, cd time.Duration) RangeUsage {
	u := RangeUsage{Kind: sp.kind, Range: sp.id, Size: sp.size()}
	c := p.items.Cursor()
	for k, v := c.Seek(encode(sp.first, sp.width)); k != nil && decode(k).cmp(sp.last) <= 0; k, v = c.Next() {
		r, err := decodeRecord(v)
		if err != nil {
			u.Used++
			continue
		}
		if r.held() {
			u.Used++
		} else if until := r.coolingUntil(cd); !until.IsZero() && now.Before(until) {
			u.CoolingDown++
		}
	}
	u.Free = u.Size - min(u.Size, u.Used+u.CoolingDown)
	return u
}

// purgeCooled deletes the records of items whose cooldown is over.
func (p pool) purgeCooled(now time.Time, cd time.Duration) error {
	var done [][]byte
	err := p.items.ForEach(func(k, v []byte) error {
		if r, err := decodeRecord(v); err == nil && !r.held() {
			if until := r.coolingUntil(cd); until.IsZero() || !now.Before(until) {
				done = append(done, slices.Clone(k))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range done {
		if err := p.items.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// RangeUsage is the usage of one range at one moment.
type RangeUsage struct {
	Kind        Kind   `json:"kind"`
	Range       string `json:"range"` // e.g. "10.244.1.0/24" or "30000-32767"
	Size        uint64 `json:"size"`  // usable items (saturates at 2^64-1 for huge IPv6 ranges)
	Used        uint64 `json:"used"`
	CoolingDown uint64 `json:"coolingDown"`
	Free        uint64 `json:"free"`
}

// Allocation is one allocated (or cooling down) item, for status output.
type Allocation struct {
	Kind  Kind     `json:"kind"`
	Item  string   `json:"item"`  // address or port
	Owner string   `json:"owner"` // e.g. "pod default/web-1 (container 0123456789ab, eth0)" or "service default/web"
	Users []string `json:"users,omitempty"`
	// Generation is the allocation's generation number; a release naming another one is a
	// no-op.
	Generation uint64    `json:"generation"`
	Allocated  time.Time `json:"allocated"`
	// CoolingUntil is set while a freed pod IP cools down (Owner is then the former owner).
	CoolingUntil time.Time `json:"coolingUntil,omitzero"`
	// MissingSince is set when the owning service is gone from the config: the item is freed
	// at MissingSince plus the grace period unless the service comes back.
	MissingSince time.Time `json:"missingSince,omitzero"`
}

// Allocations lists every allocated or cooling-down item of the store (every kind, every
// range, including ranges no longer configured), sorted by kind and item.
func (s *Store) Allocations(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	err := s.view(ctx, func(tx *bolt.Tx) error {
		now := s.now()
		for _, name := range poolNames {
			var err error
			out, err = s.appendAllocations(out, getPool(tx, name), now)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: list allocations: %w", err)
	}
	return out, nil
}

func (s *Store) appendAllocations(out []Allocation, p pool, now time.Time) ([]Allocation, error) {
	kind, v6 := KindService, p.name == "svc6" || p.name == "pod6"
	cd := time.Duration(0)
	switch p.name {
	case "pod4", "pod6":
		kind, cd = KindPod, s.podCooldown
	case "nodeport":
		kind = KindNodePort
	}
	sp := &space{kind: kind, v6: v6}
	err := p.items.ForEach(func(k, v []byte) error {
		r, err := decodeRecord(v)
		if err != nil {
			return fmt.Errorf("pool %s item %x: %w", p.name, k, err)
		}
		a := Allocation{Kind: kind, Item: sp.format(decode(k)), Owner: r.Owner, Generation: r.Gen, Allocated: time.Unix(0, r.At)}
		if !r.held() {
			a.CoolingUntil = r.coolingUntil(cd)
			if a.CoolingUntil.IsZero() || !now.Before(a.CoolingUntil) {
				return nil // cooled down: free
			}
		}
		for _, u := range r.Users {
			a.Users = append(a.Users, u.Key)
			if u.Missing != 0 {
				if t := time.Unix(0, u.Missing); a.MissingSince.IsZero() || t.Before(a.MissingSince) {
					a.MissingSince = t
				}
			}
		}
		out = append(out, a)
		return nil
	})
	return out, err
}
