// Package stats holds the benchmark's small statistics helpers (medians, percentiles,
// spreads of repeated measurements) and a reader for the Prometheus text format, enough to
// take a histogram's sum and count from a /metrics page.
package stats

import (
	"bufio"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Percentile returns the p-th percentile (0..100) of xs by linear interpolation between
// closest ranks; NaN for no values. xs is not modified.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if p <= 0 {
		return s[0]
	}
	if p >= 100 {
		return s[len(s)-1]
	}
	r := p / 100 * float64(len(s)-1)
	lo := int(math.Floor(r))
	hi := int(math.Ceil(r))
	return s[lo] + (s[hi]-s[lo])*(r-float64(lo))
}

// Median is the 50th percentile.
func Median(xs []float64) float64 { return Percentile(xs, 50) }

// Summary describes repeated measurements of one figure.
type Summary struct {
	N      int
	Median float64
	Min    float64
	Max    float64
}

// Summarize returns the median and range of xs.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return Summary{N: len(s), Median: Median(s), Min: s[0], Max: s[len(s)-1]}
}

// Valid reports whether the summary holds at least one value.
func (s Summary) Valid() bool { return s.N > 0 && !math.IsNaN(s.Median) }

// Spread is (max-min)/median, the relative range; 0 for one value.
func (s Summary) Spread() float64 {
	if !s.Valid() || s.Median == 0 {
		return 0
	}
	return (s.Max - s.Min) / math.Abs(s.Median)
}

// Format renders the summary with f for each value: "M (min–max, n=N)", or "M" for one value,
// or "—" for none.
func (s Summary) Format(f func(float64) string) string {
	switch {
	case !s.Valid():
		return "—"
	case s.N == 1:
		return f(s.Median)
	}
	return fmt.Sprintf("%s (%s–%s, n=%d)", f(s.Median), f(s.Min), f(s.Max), s.N)
}

// Ratio returns a/b, NaN when either is missing or b is 0.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

// Seconds formats a duration in seconds with a unit that keeps 2-3 significant digits.
func Seconds(s float64) string {
	if math.IsNaN(s) {
		return "—"
	}
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", s)
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", s)
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", s*1e3)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", s*1e3)
	default:
		return fmt.Sprintf("%.0f µs", s*1e6)
	}
}

// Metrics is a parsed Prometheus text page: the sum of every sample of each series name
// (labels are added up, which is what a histogram's _sum and _count need).
type Metrics map[string]float64

// ParseMetrics reads the Prometheus text exposition format. Comment lines are skipped;
// samples with labels add to their name's total.
func ParseMetrics(text string) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				return nil, fmt.Errorf("metrics line %d: unterminated labels: %q", n, line)
			}
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics line %d: no value: %q", n, line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d: value %q: %w", n, f[0], err)
		}
		m[name] += v
	}
	return m, sc.Err()
}

// Histogram returns a histogram's sum and count, and whether the page has it.
func (m Metrics) Histogram(name string) (sum, count float64, ok bool) {
	sum, ok1 := m[name+"_sum"]
	count, ok2 := m[name+"_count"]
	return sum, count, ok1 && ok2
}

// MeanSince returns the mean of the observations a histogram got between before and m
// ((sum delta)/(count delta)) and how many there were; NaN when there were none.
func (m Metrics) MeanSince(before Metrics, name string) (float64, float64) {
	s1, c1, ok := m.Histogram(name)
	if !ok {
		return math.NaN(), 0
	}
	s0, c0, _ := before.Histogram(name)
	if c1-c0 <= 0 {
		return math.NaN(), 0
	}
	return (s1 - s0) / (c1 - c0), c1 - c0
}
