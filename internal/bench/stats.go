package main

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Summary describes a set of samples. Durations are in milliseconds, sizes
// in megabytes, as Unit says.
type Summary struct {
	N      int     `json:"n"`
	Unit   string  `json:"unit"`
	Median float64 `json:"median"`
	P99    float64 `json:"p99"`
	Mean   float64 `json:"mean"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// summarize computes the summary of xs. Percentiles are nearest-rank, so
// with fewer than 100 samples the p99 is the maximum.
func summarize(xs []float64, unit string) Summary {
	s := Summary{N: len(xs), Unit: unit}
	if len(xs) == 0 {
		return s
	}
	sorted := append([]float64(nil), xs...)
	sort.Float64s(sorted)
	sum := 0.0
	for _, x := range sorted {
		sum += x
	}
	s.Mean = sum / float64(len(sorted))
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	s.Median = percentile(sorted, 50)
	s.P99 = percentile(sorted, 99)
	return s
}

// percentile is the nearest-rank percentile of sorted samples.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	if len(sorted)%2 == 0 && p == 50 {
		// The usual median of an even count: the mean of the middle two.
		return (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(rank, 1)
	rank = min(rank, len(sorted))
	return sorted[rank-1]
}

// ms converts a duration to fractional milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fmtMS prints milliseconds with a precision that suits their size.
func fmtMS(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 10000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	default:
		return fmt.Sprintf("%.2f ms", v)
	}
}

// fmtMB prints megabytes.
func fmtMB(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.1f MB", v)
}
