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
		cpu:       time.Duration(f(func(s sample) float64 { return float64(s.cpu) })),
		serverCPU: time.Duration(f(func(s sample) float64 { return float64(s.serverCPU) })),
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

// medians returns the median sample of a workload of backend b at
// concurrency c.
func (r *runner) medians(b string, c int) func(workload string) sample {
	return func(workload string) sample { return med(r.samples[id(b, c, workload)]) }
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

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
	fmt.Fprintln(out, "| backend | c | workload | ops/s | x bare ops/s | p50 | p99 | p50 / bare p50 | allocs/op | bench CPU/op | server CPU/op |")
	fmt.Fprintln(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, w := range benches {
		for _, c := range r.conc[w.b.name] {
			bare := med(r.samples[id(w.b.name, c, wBare)])
			for _, name := range r.workloads {
				s := med(r.samples[id(w.b.name, c, name)])
				allocs, server := "—", "—"
				if c == 1 {
					allocs = fmt.Sprintf("%.0f", s.allocs)
				}
				if w.b.serverCPU != nil {
					server = us(s.serverCPU)
				}
				tp := fmt.Sprintf("%.0f", s.opsPerSec)
				if name == wReplayMixed {
					tp = "—" // nine fresh calls to a replay
				}
				fmt.Fprintf(out, "| %s | %d | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %s |\n", w.b.name, c, name,
					tp, s.opsPerSec/bare.opsPerSec, ms(s.p50), ms(s.p99), float64(s.p50)/float64(bare.p50), allocs, us(s.cpu), server)
			}
		}
	}
	r.printIssue13(benches)

	fmt.Fprintf(out, "\n### Ratios against the targets\n\n")
	fmt.Fprintln(out, "| backend | c | fresh Do / bare | floor / bare | ReadFirst fresh / bare | target | replay Do p50 / bare p50 | ReadFirst replay p50 / bare p50 | replay target 0.20 |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---|---:|---:|---|")
	for _, w := range benches {
		for _, c := range r.conc[w.b.name] {
			get := r.medians(w.b.name, c)
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
		trips := slices.DeleteFunc(slices.Clone(workloads), func(w string) bool { return w == wReplayMixed })
		fmt.Fprintln(out, "| backend | "+strings.Join(trips, " | ")+" |")
		fmt.Fprintln(out, "|---|"+strings.Repeat("---:|", len(trips)))
		for _, w := range benches {
			t, ok := r.trips[w.b.name]
			if !ok {
				continue
			}
			fmt.Fprintf(out, "| %s |", w.b.name)
			for _, name := range workloads {
				if name == wReplayMixed {
					continue
				}
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

// issue13 is a goal of issue 13 and the figures it was opened with (one
// run, 9 interleaved rounds, medians).
type issue13 struct {
	backend            string
	c                  int
	freshBound, replay float64 // targets: fresh/bound at least, replay p50/bare p50 at most
	before             [4]float64
}

var issue13Targets = []issue13{
	{"mysql+interpolateParams", 16, 0.80, 0.60, [4]float64{0.39, 0.64, 0.58, 1.33}},
	{"sqlite", 1, 0.93, 0.20, [4]float64{0.65, 0.75, 0.86, 0.22}},
}

// printIssue13 prints what issue 13 asks for: a fresh call against the
// bound (the bare transaction plus one INSERT of the key row), and a replay
// with default options against the bare transaction, beside the figures the
// issue was opened with. "trip ceiling" is the bound plus one statement
// that does nothing: what a protocol with one round trip more than the
// bound (a claim before fn, through database/sql) cannot beat.
func (r *runner) printIssue13(benches []*bench) {
	out := r.out
	fmt.Fprintf(out, "\n### Issue 13: fresh calls against the bound, default replays against the bare transaction\n\n")
	fmt.Fprintln(out, "| backend | c | | fresh / bare | bound / bare | fresh / bound | trip ceiling / bound | replay p50 / bare p50 | replay among fresh calls (1 in 10) p50 / bare p50 | bench CPU/op fresh, bound | server CPU/op fresh, bound |")
	fmt.Fprintln(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, w := range benches {
		for _, c := range r.conc[w.b.name] {
			get := r.medians(w.b.name, c)
			bare, bound, fresh := get(wBare), get(wFloor), get(wFresh)
			if bare.opsPerSec == 0 || bound.opsPerSec == 0 || fresh.opsPerSec == 0 {
				continue
			}
			var goal *issue13
			for i, t := range issue13Targets {
				if t.backend == w.b.name && t.c == c {
					goal = &issue13Targets[i]
				}
			}
			if goal != nil {
				b := goal.before
				fmt.Fprintf(out, "| %s | %d | before (issue) | %.2f | %.2f | %.2f | — | %.2f | — | — | — |\n", w.b.name, c, b[0], b[1], b[2], b[3])
			}
			ratio := func(name string, of float64) string {
				s := get(name)
				if s.opsPerSec == 0 {
					return "—"
				}
				return fmt.Sprintf("%.2f", s.opsPerSec/of)
			}
			lat := func(name string) (float64, string) {
				s := get(name)
				if s.p50 == 0 {
					return 0, "—"
				}
				v := float64(s.p50) / float64(bare.p50)
				return v, fmt.Sprintf("%.2f", v)
			}
			fb := fresh.opsPerSec / bound.opsPerSec
			rv, replay := lat(wReplay)
			_, mixed := lat(wReplayMixed)
			freshCell := fmt.Sprintf("%.2f", fb)
			if goal != nil {
				freshCell += fmt.Sprintf(" (>= %.2f %s)", goal.freshBound, verdict(fb >= goal.freshBound))
				if replay != "—" {
					replay += fmt.Sprintf(" (<= %.2f %s)", goal.replay, verdict(rv <= goal.replay))
				}
			}
			server := "—"
			if w.b.serverCPU != nil {
				server = us(fresh.serverCPU) + ", " + us(bound.serverCPU)
			}
			fmt.Fprintf(out, "| %s | %d | now | %.2f | %.2f | %s | %s | %s | %s | %s | %s |\n", w.b.name, c,
				fresh.opsPerSec/bare.opsPerSec, bound.opsPerSec/bare.opsPerSec, freshCell, ratio(wCeiling, bound.opsPerSec),
				replay, mixed, us(fresh.cpu)+", "+us(bound.cpu), server)
		}
	}
}
