package idempotency

import (
	"fmt"
	"time"
)

// flowConfig is the flows' part of a store's configuration; zero values
// mean the defaults.
type flowConfig struct {
	lease    time.Duration
	interval time.Duration
}

const (
	defaultLease             = 30 * time.Second
	defaultCompleterInterval = 30 * time.Second
)

func (c flowConfig) leaseOrDefault() time.Duration {
	if c.lease == 0 {
		return defaultLease
	}
	return c.lease
}

func (c flowConfig) intervalOrDefault() time.Duration {
	if c.interval == 0 {
		return defaultCompleterInterval
	}
	return c.interval
}

// WithLease sets how long a run of a flow owns its key without recording
// progress: each step's transaction extends the lease, by the database's
// clock, from its start and again from its end. Once a lease has run out,
// a retry with the same key or RunCompleter takes the flow over with a
// new fencing token, and the old owner can record nothing more. Make it
// longer than the slowest step or call; the default is 30 seconds.
func WithLease(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("idempotency: WithLease(%v): the lease must be at least 1ms", d)
		}
		c.flow.lease = d
		return nil
	}
}

// WithCompleterInterval sets how often RunCompleter looks for flows to
// resume; each wait is drawn at random between half of it and all of it,
// so that instances started together do not look in step. The default is
// 30 seconds.
func WithCompleterInterval(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("idempotency: WithCompleterInterval(%v): the interval must be at least 1ms", d)
		}
		c.flow.interval = d
		return nil
	}
}

// FlowEventKind says what happened to a flow.
type FlowEventKind string

// The kinds of FlowEvent.
const (
	FlowStarted      FlowEventKind = "started"       // a run inserted the flow's row (token 1)
	FlowTakenOver    FlowEventKind = "taken_over"    // a retry took a flow over after its lease ran out
	FlowResumed      FlowEventKind = "resumed"       // RunCompleter took a flow over and resumes it
	FlowStepRecorded FlowEventKind = "step_recorded" // a step or call ran and its value was recorded
	FlowStepReplayed FlowEventKind = "step_replayed" // a recorded step or call returned its value without running
	FlowFinished     FlowEventKind = "finished"      // the flow's value, or its final failure (Err), is stored under its key
	FlowStopped      FlowEventKind = "stopped"       // a run ended with an error (Err) or a panic; the flow stays resumable
	FlowGaveUp       FlowEventKind = "gave_up"       // RunCompleter stored a final failure after too many resumes
)

// FlowEvent describes one event of a flow, for the Flow hook.
type FlowEvent struct {
	Kind       FlowEventKind
	Flow       string // the flow's name
	Scope, Key string
	Step       string // the step or call, for FlowStepRecorded and FlowStepReplayed
	Token      int64  // the fencing token of the run
	Resumes    int    // takeovers so far, for FlowTakenOver, FlowResumed and FlowGaveUp
	Err        error
}
