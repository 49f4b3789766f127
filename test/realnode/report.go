package realnode

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Report collects, per backend and scenario, the requests sent and failed and the figures
// measured, and prints them as one table at the end of the run (make e2e-node's output).
type Report struct {
	mu   sync.Mutex
	rows []reportRow
}

type reportRow struct {
	mode, scenario string
	sent, failed   int
	status         string // ok, FAIL: why
	notes          []string
	took           time.Duration
}

// Add records load results under mode/scenario.
func (r *Report) Add(mode, scenario string, results ...*LoadResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	row := r.row(mode, scenario)
	for _, res := range results {
		if res == nil {
			continue
		}
		row.sent += res.Sent
		row.failed += res.Failed
	}
}

// Note adds a figure or remark to mode/scenario.
func (r *Report) Note(mode, scenario, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	row := r.row(mode, scenario)
	row.notes = append(row.notes, fmt.Sprintf(format, args...))
}

// Finish records the scenario's outcome.
func (r *Report) Finish(mode, scenario string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	row := r.row(mode, scenario)
	row.took = took
	row.status = "ok"
	if err != nil {
		row.status = "FAIL: " + err.Error()
	}
}

func (r *Report) row(mode, scenario string) *reportRow {
	for i := range r.rows {
		if r.rows[i].mode == mode && r.rows[i].scenario == scenario {
			return &r.rows[i]
		}
	}
	r.rows = append(r.rows, reportRow{mode: mode, scenario: scenario, status: "not finished"})
	return &r.rows[len(r.rows)-1]
}

// String renders the table.
func (r *Report) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rows := append([]reportRow(nil), r.rows...)
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].mode < rows[j].mode })
	var sb strings.Builder
	sb.WriteString("realnode results (requests sent / failed per scenario and backend):\n")
	fmt.Fprintf(&sb, "  %-9s %-28s %9s %7s %7s  %s\n", "backend", "scenario", "sent", "failed", "time", "result")
	for _, row := range rows {
		fmt.Fprintf(&sb, "  %-9s %-28s %9d %7d %6.0fs  %s\n", row.mode, row.scenario, row.sent, row.failed, row.took.Seconds(), row.status)
		for _, n := range row.notes {
			fmt.Fprintf(&sb, "  %-9s %-28s   %s\n", "", "", n)
		}
	}
	return sb.String()
}
