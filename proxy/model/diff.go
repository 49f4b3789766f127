package model

import "reflect"

// Changes says what differs between two states. Backends use it for partial syncs: only the
// services in Services need their rules or map entries rewritten, unless Settings is true.
type Changes struct {
	// Settings is true when anything outside the service list changed (CIDRs, node, flags):
	// a backend must then do a full sync.
	Settings bool
	// Services holds every service added, removed or changed.
	Services map[ServiceKey]struct{}
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool { return !c.Settings && len(c.Services) == 0 }

// Diff compares prev (which may be nil: everything changed) with next.
func Diff(prev, next *State) Changes {
	c := Changes{Services: map[ServiceKey]struct{}{}}
	if prev == nil {
		c.Settings = true
		for _, s := range next.Services {
			c.Services[s.Key] = struct{}{}
		}
		return c
	}
	a, b := *prev, *next
	a.Services, b.Services = nil, nil
	a.TriggerTimes, b.TriggerTimes = nil, nil
	c.Settings = !reflect.DeepEqual(a, b)
	old := make(map[ServiceKey]*Service, len(prev.Services))
	for _, s := range prev.Services {
		old[s.Key] = s
	}
	for _, s := range next.Services {
		o, ok := old[s.Key]
		if !ok || !reflect.DeepEqual(o, s) {
			c.Services[s.Key] = struct{}{}
		}
		delete(old, s.Key)
	}
	for k := range old {
		c.Services[k] = struct{}{}
	}
	return c
}
