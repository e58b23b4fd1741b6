package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// med is the median sample of a workload's rounds, field by field.
func med(ss []sample) sample {
	if len(ss) == 0 {
		return sample{}
	}
	f := func(get func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = get(s)
		}
		slices.Sort(v)
		if len(v)%2 == 0 {
			return (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
		return v[len(v)/2]
	}
	return sample{
		opsPerSec: f(func(s sample) float64 { return s.opsPerSec }),
		p50:       time.Duration(f(func(s sample) float64 { return float64(s.p50) })),
		p99:       time.Duration(f(func(s sample) float64 { return float64(s.p99) })),
		allocs:    f(func(s sample) float64 { return s.allocs }),
	}
}

func medDur(ss []stormSample, get func(stormSample) time.Duration) time.Duration {
	v := make([]time.Duration, len(ss))
	for i, s := range ss {
		v[i] = get(s)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

// target is one goal of the issue that a measurement is held against.
type target struct {
	backend string
	c       int
	min     float64 // fresh/bare throughput
}

var targets = []target{
	{"pgx", 1, 0.75}, {"pgx", 16, 0.65},
	{"mysql", 16, 0.62}, {"mysql+interpolateParams", 16, 0.62},
	{"sqlite", 1, 0.80},
}

func (r *runner) print(benches []*bench) {
	out := r.out
	fmt.Fprintf(out, "\n### Throughput and latency (medians of %d rounds, %d calls each)\n\n", r.rounds, r.ops)
	fmt.Fprintln(out, "| backend | c | workload | ops/s | x bare ops/s | p50 | p99 | p50 / bare p50 | allocs/op |")
	fmt.Fprintln(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|")
	for _, w := range benches {
		for _, c := range r.conc {
			bare := med(r.samples[id(w.b.name, c, wBare)])
			for _, name := range r.workloads {
				s := med(r.samples[id(w.b.name, c, name)])
				allocs := "—"
				if c == 1 {
					allocs = fmt.Sprintf("%.0f", s.allocs)
				}
				fmt.Fprintf(out, "| %s | %d | %s | %.0f | %.2f | %s | %s | %.2f | %s |\n", w.b.name, c, name,
					s.opsPerSec, s.opsPerSec/bare.opsPerSec, ms(s.p50), ms(s.p99), float64(s.p50)/float64(bare.p50), allocs)
			}
		}
	}

	fmt.Fprintf(out, "\n### Ratios against the targets\n\n")
	fmt.Fprintln(out, "| backend | c | fresh Do / bare | floor / bare | ReadFirst fresh / bare | target | replay Do p50 / bare p50 | ReadFirst replay p50 / bare p50 | replay target 0.20 |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---|---:|---:|---|")
	for _, w := range benches {
		for _, c := range r.conc {
			get := func(name string) sample { return med(r.samples[id(w.b.name, c, name)]) }
			bare := get(wBare)
			if bare.opsPerSec == 0 {
				continue
			}
			tp := func(name string) float64 { return get(name).opsPerSec / bare.opsPerSec }
			lat := func(name string) float64 { return float64(get(name).p50) / float64(bare.p50) }
			goal := "—"
			for _, t := range targets {
				if t.backend == w.b.name && t.c == c {
					goal = fmt.Sprintf(">= %.2f %s", t.min, verdict(tp(wFresh) >= t.min))
				}
			}
			fmt.Fprintf(out, "| %s | %d | %.2f | %.2f | %.2f | %s | %.2f | %.2f | %s |\n", w.b.name, c,
				tp(wFresh), tp(wFloor), tp(wFreshLookup), goal, lat(wReplay), lat(wReplayLook), verdict(lat(wReplay) <= 0.2))
		}
	}

	if len(r.trips) > 0 {
		fmt.Fprintf(out, "\n### Round trips per call (counted at the wire, one connection)\n\n")
		fmt.Fprintln(out, "| backend | "+strings.Join(workloads, " | ")+" |")
		fmt.Fprintln(out, "|---|"+strings.Repeat("---:|", len(workloads)))
		for _, w := range benches {
			t, ok := r.trips[w.b.name]
			if !ok {
				continue
			}
			fmt.Fprintf(out, "| %s |", w.b.name)
			for _, name := range workloads {
				fmt.Fprintf(out, " %.1f |", t[name])
			}
			fmt.Fprintln(out)
		}
	}

	if len(r.storms) > 0 {
		fmt.Fprintf(out, "\n### Duplicate storm: %d calls on one key, pool of %d connections (medians of %d rounds)\n\n", r.stormN, r.stormConns, r.rounds)
		fmt.Fprintln(out, "| backend | winner | losers p50 | losers p99 | losers max | max - winner | fn runs (max) | rows committed | errors |")
		fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, w := range benches {
			ss := r.storms[w.b.name]
			if len(ss) == 0 {
				continue
			}
			runs, errs, rows := 0, 0, 0
			var firstErr error
			for _, s := range ss {
				runs = max(runs, s.fnRuns)
				rows = max(rows, s.rows)
				errs += s.errs
				if firstErr == nil {
					firstErr = s.firstErr
				}
			}
			e := fmt.Sprint(errs)
			if firstErr != nil {
				e += fmt.Sprintf(" (%v)", firstErr)
			}
			fmt.Fprintf(out, "| %s | %s | %s | %s | %s | %s | %d | %d | %s |\n", w.b.name,
				ms(medDur(ss, func(s stormSample) time.Duration { return s.winner })),
				ms(medDur(ss, func(s stormSample) time.Duration { return s.p50 })),
				ms(medDur(ss, func(s stormSample) time.Duration { return s.p99 })),
				ms(medDur(ss, func(s stormSample) time.Duration { return s.max })),
				ms(medDur(ss, func(s stormSample) time.Duration { return s.max - s.winner })),
				runs, rows, e)
		}
	}
}

func (r *runner) printErrors() {
	if len(r.errors) == 0 {
		return
	}
	fmt.Fprintf(r.out, "\n### Errors\n\n")
	for _, e := range r.errors {
		fmt.Fprintf(r.out, "- %s\n", e)
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}
