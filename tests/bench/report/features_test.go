package main

import (
	"math"
	"testing"
)

func TestRatioCI(t *testing.T) {
	for _, c := range []struct {
		name    string
		ratios  []float64
		min     float64
		mean    float64
		verdict string
	}{
		{"tight above", []float64{1.01, 0.99, 1.00, 1.02, 0.98}, 0.95, 1.0, "**met**"},
		{"tight below", []float64{0.80, 0.82, 0.81, 0.79, 0.83}, 0.95, 0.81, "**missed**"},
		{"wide, mean above", []float64{0.85, 1.10, 0.95, 1.02, 0.90}, 0.95, 0.96, "**not resolved** (mean at or above)"},
		{"wide, mean below", []float64{0.81, 1.05, 0.85, 0.99, 0.90}, 0.95, 0.92, "**not resolved** (mean below)"},
		{"one round", []float64{1.2}, 0.95, 1.2, "**not resolved** (one round)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := ratioCI(c.ratios)
			if math.Abs(e.mean-c.mean) > 0.01 {
				t.Errorf("mean %.3f, want %.2f", e.mean, c.mean)
			}
			if !math.IsNaN(e.lo) && !(e.lo <= e.mean && e.mean <= e.hi) {
				t.Errorf("interval %.3f–%.3f does not hold the mean %.3f", e.lo, e.hi, e.mean)
			}
			if got := e.verdict(c.min); got != c.verdict {
				t.Errorf("verdict %q, want %q (interval %s)", got, c.verdict, e.interval())
			}
		})
	}
}

// The interval of equal ratios has no width; more rounds of the same
// spread narrow it.
func TestRatioCINarrowsWithRounds(t *testing.T) {
	if e := ratioCI([]float64{0.9, 0.9, 0.9}); math.Abs(e.lo-0.9) > 1e-9 || math.Abs(e.hi-0.9) > 1e-9 {
		t.Errorf("equal ratios: interval %s", e.interval())
	}
	few := ratioCI([]float64{0.9, 1.1, 0.9, 1.1})
	many := ratioCI([]float64{0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1, 0.9, 1.1})
	if many.hi-many.lo >= few.hi-few.lo {
		t.Errorf("12 rounds %s not narrower than 4 rounds %s", many.interval(), few.interval())
	}
}
