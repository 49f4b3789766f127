package ipam

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrGCRefused: CNI GC was given an empty list of valid attachments while the node has pod
// allocations. A runtime that lost its state must not wipe the node, so nothing is freed.
var ErrGCRefused = errors.New("ipam: pod GC refused")

// DefaultPodGCGrace is the default of Options.PodGCGrace.
const DefaultPodGCGrace = 2 * time.Minute

// GCTracker remembers, in memory, since when (on a monotonic clock) each pod allocation has
// been seen missing by one kind of GC (CNI GC's list, or the API's pods). An allocation is
// freed only once it has been missing at every pass for the tracker's grace period: a pass
// that sees it present, or sees it allocated again (new generation), starts the grace again.
// A new process starts with no marks, so a restart only delays freeing. Wall-clock time plays
// no part, so clock jumps either way change nothing. Safe for concurrent use.
type GCTracker struct {
	mu      sync.Mutex
	grace   time.Duration
	mono    func() time.Duration
	missing map[string]gcMark
}

type gcMark struct {
	gen   uint64
	since time.Duration
}

// NewGCTracker returns a tracker with grace period grace (0 or less: DefaultPodGCGrace) on
// monotonic clock mono (nil: the monotonic reading of time.Now, from now).
func NewGCTracker(grace time.Duration, mono func() time.Duration) *GCTracker {
	if grace <= 0 {
		grace = DefaultPodGCGrace
	}
	if mono == nil {
		start := time.Now()
		mono = func() time.Duration { return time.Since(start) }
	}
	return &GCTracker{grace: grace, mono: mono, missing: map[string]gcMark{}}
}

// Reset forgets every mark: every allocation's grace starts again at its next missing pass.
// Cluster GC calls it while its view of the API is stale.
func (t *GCTracker) Reset() {
	t.mu.Lock()
	clear(t.missing)
	t.mu.Unlock()
}

// missingFor marks key (generation gen) missing at now and returns for how long it has been.
func (t *GCTracker) missingFor(key string, gen uint64, now time.Duration) time.Duration {
	m, ok := t.missing[key]
	if !ok || m.gen != gen || now < m.since {
		m = gcMark{gen: gen, since: now}
		t.missing[key] = m
	}
	return now - m.since
}

// gcCap is the most one GC pass frees out of total allocations: half, rounded up (so one
// when there is one or two). A truncated list or a partial API view cannot empty the node in
// one pass; a node really emptied is cleaned over a few passes.
func gcCap(total int) int { return (total + 1) / 2 }

// Collect frees the pod allocations that present says are gone, under t's policy: an
// allocation is freed only after present has said "gone" at every Collect with t for t's
// grace period (measured on t's monotonic clock), oldest-missing first, and at most half of
// the allocations (rounded up) per call. It returns what it freed; freed addresses cool down
// as after ReleasePod.
func (a *PodAllocator) Collect(ctx context.Context, t *GCTracker, present func(PodAllocation) bool) ([]PodAllocation, error) {
	var freed []PodAllocation
	var capped, eligible int
	t.mu.Lock()
	defer t.mu.Unlock()
	err := a.s.update(ctx, func(tx *bolt.Tx) error {
		now, mono := a.s.now(), t.mono()
		type victim struct {
			key     string
			pr      *podRecord
			missing time.Duration
		}
		var victims []victim
		seen := map[string]bool{}
		err := tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			pr := &podRecord{}
			if err := json.Unmarshal(v, pr); err != nil {
				return fmt.Errorf("decode pod record %q: %w", k, err)
			}
			key := string(k)
			seen[key] = true
			if present(pr.allocation()) {
				delete(t.missing, key)
				return nil
			}
			if d := t.missingFor(key, pr.Gen, mono); d >= t.grace {
				victims = append(victims, victim{key, pr, d})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for k := range t.missing {
			if !seen[k] {
				delete(t.missing, k)
			}
		}
		slices.SortFunc(victims, func(x, y victim) int {
			if c := cmp.Compare(y.missing, x.missing); c != 0 {
				return c
			}
			return cmp.Compare(x.key, y.key)
		})
		eligible = len(victims)
		if c := gcCap(len(seen)); len(victims) > c {
			victims, capped = victims[:c], c
		}
		for _, v := range victims {
			if err := a.s.releasePod(tx, v.key, v.pr, now); err != nil {
				return err
			}
			freed = append(freed, v.pr.allocation())
		}
		for _, name := range []string{"pod4", "pod6"} {
			if err := getPool(tx, name).purgeCooled(now, a.s.podCooldown); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: gc: %w", err)
	}
	for _, f := range freed {
		delete(t.missing, podKey(f.Owner.ContainerID, f.Owner.IfName))
		a.s.log.Info("ipam: gc freed pod allocation", "owner", f.Owner.String(), "ips", f.IPs)
	}
	if capped > 0 {
		a.s.log.Warn("ipam: gc capped: freed only part of the allocations it found gone; the rest go at the next passes",
			"freed", capped, "eligible", eligible)
	}
	return freed, nil
}

// GC is CNI GC: it frees the pod allocations whose attachment is not in valid
// (cni.dev/valid-attachments), also those made under earlier pod ranges, under the store's
// CNI GC policy (see Collect): an attachment must have been missing from the list at every
// GC call for Options.PodGCGrace (monotonic, this process) before it is freed, so that an ADD
// newer than the runtime's list keeps its addresses; and one call frees at most half of the
// allocations. An empty valid while the node has allocations frees nothing and fails with
// ErrGCRefused. It returns what it freed; freed addresses cool down as after ReleasePod.
func (a *PodAllocator) GC(ctx context.Context, valid []Attachment) ([]PodAllocation, error) {
	if len(valid) == 0 {
		n := 0
		err := a.s.view(ctx, func(tx *bolt.Tx) error {
			n = tx.Bucket(bucketPods).Stats().KeyN
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("ipam: gc: %w", err)
		}
		if n > 0 {
			a.s.log.Warn("ipam: CNI GC with an empty list of valid attachments refused", "allocations", n)
			return nil, fmt.Errorf("%w: the runtime listed no valid attachment while this node holds %d pod allocations; freeing nothing (a runtime that lost its state must not wipe the node; DEL frees pods one by one)", ErrGCRefused, n)
		}
	}
	keep := make(map[string]bool, len(valid))
	for _, v := range valid {
		keep[podKey(v.ContainerID, v.IfName)] = true
	}
	return a.Collect(ctx, a.s.cniGC, func(al PodAllocation) bool {
		return keep[podKey(al.Owner.ContainerID, al.Owner.IfName)]
	})
}
