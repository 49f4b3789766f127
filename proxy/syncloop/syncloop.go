// Package syncloop drives a proxy.Backend: it takes the newest desired state from any source,
// coalesces bursts of changes, keeps a minimum interval between syncs, retries failed syncs with
// exponential backoff (as full syncs), checks periodically that the programmed rules were not
// tampered with, and forces a full resync on a long timer. It is the only caller of
// Backend.Sync.
package syncloop

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// Options tune the loop. Zero values take the defaults named on each field.
type Options struct {
	// MinInterval is the least time between two syncs (default 1 s); changes arriving
	// sooner are coalesced into the next sync.
	MinInterval time.Duration
	// Period is how often the loop verifies the rules are intact and syncs anything pending
	// (default 30 s).
	Period time.Duration
	// FullPeriod is how often a full resync is forced (default 1 h).
	FullPeriod time.Duration
	// HealthTimeout is how long a queued change may wait to be programmed before the loop
	// stops being live (default 2 x Period, as kube-proxy's healthTimeout).
	HealthTimeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay after a failed sync (defaults 1 s, 30 s).
	MinBackoff, MaxBackoff time.Duration
	Metrics                *metrics.Metrics // may be nil
	Logger                 *slog.Logger     // may be nil
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
}

func (o *Options) defaults() {
	if o.MinInterval <= 0 {
		o.MinInterval = time.Second
	}
	if o.Period <= 0 {
		o.Period = 30 * time.Second
	}
	if o.FullPeriod <= 0 {
		o.FullPeriod = time.Hour
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = 2 * o.Period
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Status is a snapshot of the loop for health checks and `svcproxy status`.
type Status struct {
	Backend string
	// DesiredGeneration counts the states given to Update; AppliedGeneration is the
	// generation of the state programmed by the last successful sync.
	DesiredGeneration, AppliedGeneration uint64
	// PendingSince is when the oldest change not yet programmed was queued (zero if none): a
	// new state, or a full sync requested or forced by a tamper check or the full period. Only
	// a successful sync of everything queued clears it; failed or hung syncs leave it.
	PendingSince time.Time
	LastAttempt  time.Time
	LastSuccess  time.Time
	LastFull     time.Time
	LastError    string
	// ConsecutiveFailures counts failed syncs since the last success.
	ConsecutiveFailures int
	LastResult          proxy.SyncResult
	LastDuration        time.Duration
	// Applied is the state programmed by the last successful sync (read only).
	Applied *model.State
}

// Loop is a running sync loop. Create it with New and start it with Run.
type Loop struct {
	backend proxy.Backend
	opts    Options
	kick    chan struct{}

	mu           sync.Mutex
	desired      *model.State
	desiredGen   uint64
	pendingSince time.Time
	// syncing is true while a sync runs; laterSince is when the first change after the state
	// it programs was queued, which becomes pendingSince when that sync succeeds.
	syncing    bool
	laterSince time.Time
	needFull   bool
	status     Status
}

// New returns a loop for backend b; nothing runs until Run.
func New(b proxy.Backend, opts Options) *Loop {
	opts.defaults()
	return &Loop{backend: b, opts: opts, kick: make(chan struct{}, 1), needFull: true,
		status: Status{Backend: b.Name()}}
}

// Update hands the loop a new desired state (which must not be modified afterwards) and
// returns its generation. It never blocks: the state is programmed by the next sync. A state
// equal to the current desired one (trigger times aside) changes nothing and keeps the
// generation.
func (l *Loop) Update(st *model.State) uint64 {
	l.mu.Lock()
	if l.desired != nil && model.Diff(l.desired, st).Empty() {
		gen := l.desiredGen
		l.mu.Unlock()
		return gen
	}
	l.desired = st
	l.desiredGen++
	gen := l.desiredGen
	l.queuedLocked()
	l.mu.Unlock()
	if m := l.opts.Metrics; m != nil {
		m.LastQueuedTimestamp.SetToCurrentTime()
		m.Services.Set(float64(len(st.Services)))
		m.Endpoints.Set(float64(st.EndpointCount()))
	}
	l.trigger()
	return gen
}

// RequestFullSync makes the next sync a full one and starts it soon.
func (l *Loop) RequestFullSync() {
	l.mu.Lock()
	l.needFull = true
	l.queuedLocked()
	l.mu.Unlock()
	l.trigger()
}

// queuedLocked records that a sync is owed (kube-proxy's QueuedUpdate): the oldest such time
// is kept until a sync succeeds. With no state yet there is nothing to sync, so nothing is owed.
func (l *Loop) queuedLocked() {
	if l.desired == nil {
		return
	}
	now := l.opts.Now()
	if l.pendingSince.IsZero() {
		l.pendingSince = now
	}
	if l.syncing && l.laterSince.IsZero() {
		l.laterSince = now
	}
}

func (l *Loop) trigger() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Status returns a snapshot of the loop.
func (l *Loop) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.status
	s.DesiredGeneration = l.desiredGen
	s.PendingSince = l.pendingSince
	return s
}

// Healthy reports whether the last sync succeeded and the loop is live (see Live). Before the
// first state arrives the loop is healthy but not ready. `svcproxy status` and /readyz use it;
// /livez and /healthz use Live, as kube-proxy does.
func (l *Loop) Healthy() (bool, string) {
	s := l.Status()
	if s.LastError != "" {
		return false, "last sync failed: " + s.LastError
	}
	return Liveness(s, l.opts.Now(), l.opts.HealthTimeout)
}

// Live reports whether the loop is making progress: no change has been queued for
// HealthTimeout or longer without being programmed (a wedged loop, a hung or always failing
// backend). This is kube-proxy's proxier health, behind /livez and /healthz.
func (l *Loop) Live() (bool, string) {
	return Liveness(l.Status(), l.opts.Now(), l.opts.HealthTimeout)
}

// HealthTimeout returns the loop's health timeout (Options.HealthTimeout after defaults).
func (l *Loop) HealthTimeout() time.Duration { return l.opts.HealthTimeout }

// Liveness is the decision behind Live, a pure function of a snapshot and the time: not live
// when s.PendingSince is set and at least timeout before now (kube-proxy: unhealthy when the
// oldest queued update is not younger than healthTimeout). A failed last sync alone does not
// count: its change stays pending and counts once it is old enough.
func Liveness(s Status, now time.Time, timeout time.Duration) (bool, string) {
	if s.PendingSince.IsZero() {
		return true, ""
	}
	if waited := now.Sub(s.PendingSince); waited >= timeout {
		why := "a change has waited " + waited.Round(time.Millisecond).String() + " to be programmed (health timeout " + timeout.String() + ")"
		if s.LastError != "" {
			why += "; last sync failed: " + s.LastError
		}
		return false, why
	}
	return true, ""
}

// Ready reports whether a first sync succeeded.
func (l *Loop) Ready() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.status.LastSuccess.IsZero()
}

// Run syncs until ctx ends. It returns ctx.Err().
func (l *Loop) Run(ctx context.Context) error {
	period := time.NewTicker(l.opts.Period)
	defer period.Stop()
	var retry <-chan time.Time
	// recent holds the start times of the last Burst syncs: a sync may start at once unless
	// Burst syncs already started within MinInterval (a token bucket of Burst, refilled one
	// per MinInterval, like kube-proxy's bounded-frequency runner).
	recent := make([]time.Time, 0, burst)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.kick:
		case <-retry:
		case <-period.C:
			l.verify(ctx)
		}
		// Bounded frequency: wait out the minimum interval; kicks meanwhile coalesce.
		if len(recent) == burst {
			if wait := recent[0].Add(l.opts.MinInterval).Sub(l.opts.Now()); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
		}
		began := l.opts.Now()
		synced, err := l.syncOnce(ctx)
		if synced {
			if len(recent) == burst {
				recent = append(recent[:0], recent[1:]...)
			}
			recent = append(recent, began)
		}
		retry = nil
		if err != nil {
			retry = time.After(l.backoff())
		}
	}
}

// burst is how many syncs may run back to back before MinInterval applies.
const burst = 2

func (l *Loop) backoff() time.Duration {
	l.mu.Lock()
	n := l.status.ConsecutiveFailures
	l.mu.Unlock()
	d := l.opts.MinBackoff
	for i := 1; i < n && d < l.opts.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, l.opts.MaxBackoff)
}

// verify asks the backend whether its rules are intact and forces a full sync when they are not,
// or when the full period has passed.
func (l *Loop) verify(ctx context.Context) {
	intact, err := l.backend.Verify(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err != nil:
		l.opts.Logger.Warn("could not verify programmed rules", "backend", l.backend.Name(), "err", err)
	case !intact && !l.status.LastSuccess.IsZero():
		l.opts.Logger.Warn("programmed rules were changed by someone else; forcing a full sync", "backend", l.backend.Name())
		if l.opts.Metrics != nil {
			l.opts.Metrics.RulesTampered.Inc()
		}
		l.needFull = true
		l.queuedLocked()
	}
	if l.opts.Now().Sub(l.status.LastFull) >= l.opts.FullPeriod {
		l.needFull = true
		l.queuedLocked()
	}
}

// syncOnce programs the desired state if anything needs programming. It reports whether it
// called the backend.
func (l *Loop) syncOnce(ctx context.Context) (bool, error) {
	l.mu.Lock()
	st, gen, full := l.desired, l.desiredGen, l.needFull
	prev := l.status.Applied
	if st == nil || (!full && gen == l.status.AppliedGeneration) {
		l.mu.Unlock()
		return false, nil
	}
	l.syncing, l.laterSince = true, time.Time{}
	l.mu.Unlock()

	var changes model.Changes
	if full {
		changes = model.Diff(nil, st)
	} else {
		changes = model.Diff(prev, st)
		full = changes.Settings
	}
	start := l.opts.Now()
	res, err := l.backend.Sync(ctx, st, changes, full)
	end := l.opts.Now()
	took := end.Sub(start)

	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncing = false
	l.status.LastAttempt = end
	l.status.LastDuration = took
	if m := l.opts.Metrics; m != nil {
		m.ServiceChangesTotal.Add(float64(len(changes.Services)))
	}
	if err != nil {
		l.needFull = true
		l.status.LastError = err.Error()
		l.status.ConsecutiveFailures++
		if m := l.opts.Metrics; m != nil {
			m.SyncFailures.Inc()
		}
		l.opts.Logger.Error("sync failed; the previously programmed rules stay in place", "backend", l.backend.Name(),
			"full", full, "err", err, "failures", l.status.ConsecutiveFailures)
		return true, err
	}
	l.needFull = false
	l.status.Applied = st
	l.status.AppliedGeneration = gen
	l.status.LastSuccess = end
	l.status.LastError = ""
	l.status.ConsecutiveFailures = 0
	l.status.LastResult = res
	if full {
		l.status.LastFull = end
	}
	// What this sync programmed is no longer pending; what was queued meanwhile is, from when
	// it was queued (kube-proxy's Updated).
	if gen == l.desiredGen {
		l.pendingSince = time.Time{}
	} else {
		l.pendingSince = l.laterSince
	}
	if m := l.opts.Metrics; m != nil {
		m.SyncDuration.Observe(took.Seconds())
		if full {
			m.SyncFullDuration.Observe(took.Seconds())
		} else {
			m.SyncPartialDuration.Observe(took.Seconds())
		}
		m.LastSyncTimestamp.Set(float64(end.UnixNano()) / 1e9)
		m.ObjectsWritten.WithLabelValues(l.backend.Name()).Add(float64(res.Objects))
		m.ServiceChangesPending.Set(0)
		for k := range changes.Services {
			if t, ok := st.TriggerTimes[k]; ok && !t.IsZero() && !t.After(end) {
				m.NetworkProgramming.Observe(end.Sub(t).Seconds())
			}
		}
	}
	l.opts.Logger.Debug("synced", "backend", l.backend.Name(), "full", full, "services", res.ServicesWritten,
		"objects", res.Objects, "took", took)
	return true, nil
}
