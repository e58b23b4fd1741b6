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

// goal is a figure an issue asks of one backend and concurrency,
// held against this run's medians.
type goal struct {
	issue   int
	backend string
	c       int
	ratio   ratio
	atLeast bool    // the ratio must be at least value (else at most)
	value   float64 // what the issue asks
	before  float64 // what the issue measured when it was opened; 0 if it gave none
}

// ratio is one of the comparisons the goals are stated in.
type ratio int

const (
	freshBare       ratio = iota // fresh Do ops/s / bare ops/s
	freshBound                   // fresh Do ops/s / bound (bare + one INSERT) ops/s
	replayBare                   // replay Do p50 / bare p50
	replayReadFirst              // replay Do (ReadFirst) p50 / bare p50
	flowByHand                   // flow ops/s / the same work by hand ops/s
	flowReplay                   // replay flow p50 / replay Do p50
)

func (q ratio) String() string {
	return [...]string{"fresh / bare", "fresh / bound", "replay p50 / bare p50", "ReadFirst replay p50 / bare p50",
		"flow / by hand", "flow replay p50 / Do replay p50"}[q]
}

// of computes the ratio from a backend's medians at one concurrency; 0
// when a workload it needs was not run.
func (q ratio) of(get func(workload string) sample) float64 {
	bare := get(wBare)
	switch q {
	case freshBare:
		return throughput(get(wFresh), bare)
	case freshBound:
		return throughput(get(wFresh), get(wFloor))
	case replayBare:
		return latency(get(wReplay), bare)
	case flowByHand:
		return throughput(get(wFlow), get(wByHand))
	case flowReplay:
		return latency(get(wFlowReplay), get(wReplay))
	default:
		return latency(get(wReplayLook), bare)
	}
}

// throughput is num's ops/s over den's; 0 when den was not run.
func throughput(num, den sample) float64 {
	if den.opsPerSec == 0 {
		return 0
	}
	return num.opsPerSec / den.opsPerSec
}

// latency is s's p50 over bare's; 0 when bare was not run.
func latency(s, bare sample) float64 {
	if bare.p50 == 0 {
		return 0
	}
	return float64(s.p50) / float64(bare.p50)
}

// goals are the performance issues' targets. Issue 12: the pgx store against a
// bare native-pgx transaction. Issue 13: MariaDB (16 callers) and SQLite
// (1 caller), with the figures the issue was opened with (one run, 9
// interleaved rounds, medians).
var goals = []goal{
	{12, "pgxstore", 1, freshBare, true, 0.72, 0},
	{12, "pgxstore", 16, freshBare, true, 0.68, 0},
	{12, "pgxstore", 1, replayBare, false, 0.55, 0},
	{12, "pgxstore", 1, replayReadFirst, false, 0.20, 0},
	{13, "mysql+interpolateParams", 16, freshBound, true, 0.80, 0.58},
	{13, "mysql+interpolateParams", 16, replayBare, false, 0.60, 1.33},
	{13, "sqlite", 1, freshBound, true, 0.93, 0.86},
	{13, "sqlite", 1, replayBare, false, 0.20, 0.22},
	{21, "pgxstore", 1, flowByHand, true, 0.70, 0},
	{21, "pgxstore", 16, flowByHand, true, 0.70, 0},
	{21, "pgxstore", 1, flowReplay, false, 1.00, 0},
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
				tp, xBare := fmt.Sprintf("%.0f", s.opsPerSec), fmt.Sprintf("%.2f", s.opsPerSec/bare.opsPerSec)
				if name == wReplayMixed {
					tp, xBare = "—", "—" // its calls are mostly fresh: only its replays' latency counts
				}
				fmt.Fprintf(out, "| %s | %d | %s | %s | %s | %s | %s | %.2f | %s | %s | %s |\n", w.b.name, c, name,
					tp, xBare, ms(s.p50), ms(s.p99), float64(s.p50)/float64(bare.p50), allocs, us(s.cpu), server)
			}
		}
	}
	r.printRatios(benches)
	r.printGoals(benches)

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

// printRatios prints, per backend and concurrency, the ratios the
// performance notes speak of. "bound" is the bare transaction plus one
// INSERT of a key row: what a call that writes its key costs at the least.
// "trip ceiling" is the bound plus one statement that does nothing: what a
// protocol with one round trip more than the bound cannot beat.
func (r *runner) printRatios(benches []*bench) {
	out := r.out
	fmt.Fprintf(out, "\n### Ratios (medians)\n\n")
	fmt.Fprintln(out, "| backend | c | fresh / bare | bound / bare | fresh / bound | trip ceiling / bound | ReadFirst fresh / bare | replay p50 / bare p50 | ReadFirst replay p50 / bare p50 | replay among fresh calls (1 in 10) p50 / bare p50 | flow / by hand | flow replay p50 / Do replay p50 | bench CPU/op fresh, bound | server CPU/op fresh, bound |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, w := range benches {
		for _, c := range r.conc[w.b.name] {
			get := r.medians(w.b.name, c)
			bare, bound, fresh := get(wBare), get(wFloor), get(wFresh)
			if bare.opsPerSec == 0 {
				continue
			}
			cell := func(v float64) string {
				if v == 0 {
					return "—"
				}
				return fmt.Sprintf("%.2f", v)
			}
			per := func(num, den sample) string { return cell(throughput(num, den)) }
			lat := func(name string) string { return cell(latency(get(name), bare)) }
			server := "—"
			if w.b.serverCPU != nil {
				server = us(fresh.serverCPU) + ", " + us(bound.serverCPU)
			}
			fmt.Fprintf(out, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", w.b.name, c,
				per(fresh, bare), per(bound, bare), per(fresh, bound), per(get(wCeiling), bound), per(get(wFreshLookup), bare),
				lat(wReplay), lat(wReplayLook), lat(wReplayMixed), cell(flowByHand.of(get)), cell(flowReplay.of(get)),
				us(fresh.cpu)+", "+us(bound.cpu), server)
		}
	}
}

// printGoals holds this run against the goals of the backends it ran.
func (r *runner) printGoals(benches []*bench) {
	var rows []string
	for _, g := range goals {
		if !slices.ContainsFunc(benches, func(w *bench) bool { return w.b.name == g.backend }) ||
			!slices.Contains(r.conc[g.backend], g.c) {
			continue
		}
		now := g.ratio.of(r.medians(g.backend, g.c))
		if now == 0 {
			continue
		}
		op, ok := "<=", now <= g.value
		if g.atLeast {
			op, ok = ">=", now >= g.value
		}
		before := "—"
		if g.before != 0 {
			before = fmt.Sprintf("%.2f", g.before)
		}
		rows = append(rows, fmt.Sprintf("| %d | %s | %d | %s | %s %.2f | %s | %.2f | %s |",
			g.issue, g.backend, g.c, g.ratio, op, g.value, before, now, verdict(ok)))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(r.out, "\n### Goals of the performance issues (12, 13 and 21)\n\n")
	fmt.Fprintln(r.out, "| issue | backend | c | ratio | goal | when opened | now | |")
	fmt.Fprintln(r.out, "|---:|---|---:|---|---:|---:|---:|---|")
	for _, row := range rows {
		fmt.Fprintln(r.out, row)
	}
}
