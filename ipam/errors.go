package ipam

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrExhausted: a range has no free item left (see ExhaustedError).
	ErrExhausted = errors.New("range exhausted")
	// ErrConflict: an explicitly requested item belongs to another owner (see ConflictError).
	ErrConflict = errors.New("already allocated")
	// ErrNotFound: the owner has no allocation.
	ErrNotFound = errors.New("no allocation")
	// ErrLocked: another process has the state directory open.
	ErrLocked = errors.New("state directory is in use by another process")
	// ErrOutOfRange: an explicitly requested item is outside the range it must come from.
	ErrOutOfRange = errors.New("outside the allocation range")
)

// ExhaustedError says that no range of a kind had a free item for an allocation.
type ExhaustedError struct {
	Kind   Kind
	Owner  string       // who asked, e.g. "service default/web"; "" when nobody did (Available)
	Ranges []RangeUsage // the usage of every range that was tried
}

func (e *ExhaustedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ipam: no free %s left", itemNoun(e.Kind))
	if e.Owner != "" {
		fmt.Fprintf(&b, " for %s", e.Owner)
	}
	for i, r := range e.Ranges {
		if i == 0 {
			b.WriteString(" in ")
		} else {
			b.WriteString(", nor in ")
		}
		fmt.Fprintf(&b, "%s range %s (%d usable, %d allocated, %d cooling down)", kindNoun(r.Kind), r.Range, r.Size, r.Used, r.CoolingDown)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrExhausted) true.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// ConflictError says that an explicitly requested item belongs to another owner.
type ConflictError struct {
	Kind  Kind
	Item  string // the requested address or port
	Range string // the range it was requested from
	Owner string // who holds it, e.g. "service default/web"
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("ipam: %s %s (%s range %s) is already allocated to %s", itemNoun(e.Kind), e.Item, kindNoun(e.Kind), e.Range, e.Owner)
}

// Is makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

func itemNoun(k Kind) string {
	switch k {
	case KindPod:
		return "pod IP"
	case KindService:
		return "service VIP"
	}
	return "node port"
}

func kindNoun(k Kind) string {
	if k == KindNodePort {
		return "node port"
	}
	return string(k)
}
