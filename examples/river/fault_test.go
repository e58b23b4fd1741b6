package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// childEnv, when set, makes the test binary run the example's command line
// instead of the tests: the fault test's API and worker processes. Its
// value is a childSpec in JSON.
const childEnv = "RIVER_EXAMPLE_CHILD"

// childSpec is a child's command line and where it kills itself.
type childSpec struct {
	Args []string `json:"args"`
	// Kill is "api-after-commit": SIGKILL as the API is about to answer a
	// fresh call, after its COMMIT; or "worker-after-calls:N": SIGKILL once
	// N jobs have made their provider call, before River marks any done.
	Kill string `json:"kill,omitempty"`
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(child(spec))
	}
	os.Exit(m.Run())
}

func child(spec string) int {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	var h hooks
	switch kill := s.Kill; {
	case kill == "api-after-commit":
		h.api = killBeforeFreshAnswer
	case strings.HasPrefix(kill, "worker-after-calls:"):
		n, err := strconv.Atoi(strings.TrimPrefix(kill, "worker-after-calls:"))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "child: bad kill point %q\n", kill)
			return 2
		}
		h.worker = []rivertype.Middleware{&killAfterCalls{n: int64(n)}}
	case kill != "":
		fmt.Fprintf(os.Stderr, "child: unknown kill point %q\n", kill)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := run(ctx, s.Args, os.Stdout, h); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// killSelf ends this process as kill -9 does.
func killSelf() {
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}

// killBeforeFreshAnswer kills the API process when the middleware starts to
// answer a call it ran: after the COMMIT of the charge, the job and the key,
// before a byte of the answer leaves. Replays are answered.
func killBeforeFreshAnswer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&killingWriter{ResponseWriter: w}, r)
	})
}

type killingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *killingWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	if code < 300 && w.Header().Get(httpadapter.ReplayedHeader) != "true" {
		killSelf()
	}
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *killingWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK) // net/http's implicit status
	return w.ResponseWriter.Write(b)
}

// killAfterCalls holds every job after its provider call succeeded, so River
// cannot mark it done, and kills the process once n jobs are held.
type killAfterCalls struct {
	river.MiddlewareDefaults
	n, held int64
}

func (k *killAfterCalls) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if err := doInner(ctx); err != nil {
		return err
	}
	if atomic.AddInt64(&k.held, 1) >= k.n {
		killSelf()
	}
	select {} // until the kill
}

// proc is a child process of the fault test.
type proc struct {
	ctx    context.Context // bounds the waits for it
	name   string
	cmd    *exec.Cmd
	addr   string        // its first line of output, for the API: where it listens
	stderr *lockedWriter // over errBuf
	errBuf bytes.Buffer
	done   chan error
}

// log returns what p has written to stderr so far.
func (p *proc) log() string {
	p.stderr.mu.Lock()
	defer p.stderr.mu.Unlock()
	return p.errBuf.String()
}

// start starts the example's command line args in a child process, and
// waits for its first line of output, which says it is ready.
func start(ctx context.Context, t *testing.T, name, kill string, args ...string) *proc {
	t.Helper()
	spec, _ := json.Marshal(childSpec{Args: args, Kill: kill})
	p := &proc{ctx: ctx, name: name, cmd: exec.Command(os.Args[0]), done: make(chan error, 1)}
	p.stderr = &lockedWriter{w: &p.errBuf}
	p.cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if strings.Contains(p.log(), "WARNING: DATA RACE") {
			t.Errorf("%s: a data race:\n%s", p.name, p.log())
		}
	})
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		_, _ = io.Copy(io.Discard, stdout)
		p.done <- p.cmd.Wait()
	}()
	var line string
	select {
	case l, ok := <-first:
		if !ok {
			t.Fatalf("%s ended before it was ready: %v\n%s", name, p.wait(t), p.log())
		}
		line = l
	case <-ctx.Done():
		t.Fatalf("%s: not ready: %v\n%s", name, ctx.Err(), p.log())
	}
	if _, addr, found := strings.Cut(line, "listening on "); found {
		p.addr = addr
	}
	return p
}

// wait waits for p to end and returns how it ended.
func (p *proc) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the next wait, and the cleanup
		return err
	case <-p.ctx.Done():
		t.Fatalf("%s: still running: %v\n%s", p.name, p.ctx.Err(), p.log())
		return nil
	}
}

// killed waits for p to end and fails the test unless it ended by SIGKILL.
func (p *proc) killed(t *testing.T) {
	t.Helper()
	err := p.wait(t)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("%s: ended with %v, want SIGKILL\n%s", p.name, err, p.log())
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("%s: ended with %v, want SIGKILL\n%s", p.name, err, p.log())
	}
}

// stop ends p as a deployment would (SIGTERM) and fails the test unless it
// stopped cleanly.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t); err != nil {
		t.Fatalf("%s: stopped with %v\n%s", p.name, err, p.log())
	}
}

// TestFaults kills the API between its COMMIT and its answer, and the worker
// between its provider call and River marking the job done, on SQLite and
// on Postgres through database/sql and through the pgx store. Afterwards
// each key has one charge row and one job, completed; the provider made one
// charge per key; and every retry of an API call was answered with the
// first answer.
func TestFaults(t *testing.T) {
	t.Parallel()
	for _, driver := range []string{"sqlite", "pgx", "pgxstore"} {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			faults(t, driver)
		})
	}
}

func faults(t *testing.T, driver string) {
	// A bound on a run that hangs, not a timing the test asserts.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dsn := newDSN(t, driver)
	db := inspect(t, driver, dsn)
	a, err := open(ctx, driver, dsn) // the test's own view, through River
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	if err := a.migrate(ctx); err != nil {
		t.Fatal(err)
	}
	prov := newProvider(nil)
	provSrv := httptest.NewServer(prov)
	defer provSrv.Close()

	const customer = "cus_faults"
	keys := []string{"order-1", "order-2", "order-3"}
	req := ChargeRequest{Amount: 17_00, Currency: "EUR"}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	post := func(api *proc, key string) (*http.Response, Charge, error) {
		return postCharge(ctx, client, api.addr, customer, key, req)
	}
	apiArgs := []string{"api", "-driver", driver, "-dsn", dsn, "-addr", "127.0.0.1:0"}

	// The API: every fresh call commits, then the process dies before it
	// answers. The client has no answer and retries with the same key, on
	// the restarted API, which replays the committed answer.
	var apiKills, retries int
	answers := map[string]Charge{}
	replay := func(api *proc, key string) {
		t.Helper()
		retries++
		resp, c, err := post(api, key)
		if err != nil || resp.StatusCode != http.StatusCreated || resp.Header.Get(httpadapter.ReplayedHeader) != "true" {
			t.Fatalf("retry of %s: %v, %v; want 201 replayed\n%s", key, resp, err, api.log())
		}
		if first, ok := answers[key]; ok && c != first {
			t.Fatalf("retry of %s: %+v, then %+v", key, first, c)
		}
		answers[key] = c
	}
	api := start(ctx, t, "api", "api-after-commit", apiArgs...)
	for _, key := range keys {
		if resp, _, err := post(api, key); err == nil {
			t.Fatalf("%s: the API answered %s; want it killed before its answer", key, resp.Status)
		}
		api.killed(t)
		apiKills++
		api = start(ctx, t, "api", "api-after-commit", apiArgs...)
		replay(api, key)
	}
	for _, key := range keys { // once more each, on the last API process
		replay(api, key)
	}
	api.stop(t)

	// Each call committed once: a charge, a key and a job, not yet worked.
	for _, key := range keys {
		if n := count(t, db, `SELECT COUNT(*) FROM charges WHERE customer = ? AND idempotency_key = ? AND id = ?`, customer, key, answers[key].ID); n != 1 {
			t.Fatalf("%s: %d charge rows with the answered id %s, want 1", key, n, answers[key].ID)
		}
	}
	jobs := jobRows(ctx, t, a)
	if len(jobs) != len(keys) || count(t, db, `SELECT COUNT(*) FROM charges`) != len(keys) {
		t.Fatalf("after the API: %d jobs (%v), %d charges; want %d of each", len(jobs), jobs, count(t, db, `SELECT COUNT(*) FROM charges`), len(keys))
	}

	// The worker: every job makes its provider call, and the process dies
	// before River marks any of them done.
	const rescueAfter = 5 * time.Second
	workerArgs := []string{"worker", "-driver", driver, "-dsn", dsn, "-provider", provSrv.URL,
		"-workers", strconv.Itoa(len(keys)), "-job-timeout", rescueAfter.String(), "-rescue-after", rescueAfter.String()}
	w := start(ctx, t, "worker", fmt.Sprintf("worker-after-calls:%d", len(keys)), workerArgs...)
	w.killed(t)
	killedAt := time.Now()
	byKey, charges := prov.stats()
	before := map[string]int{} // requests per key before the kill: 1, unless a call outlived -job-timeout and was retried
	for _, key := range keys {
		s := byKey[idempotency.DownstreamKey(customer, key, stepCollect)]
		if s.Requests < 1 || s.ChargeID == "" {
			t.Fatalf("%s: at the provider before the kill: %+v; want a request, charged", key, s)
		}
		before[key] = s.Requests
	}
	for _, j := range jobRows(ctx, t, a) {
		if j.State != rivertype.JobStateRunning {
			t.Fatalf("after the worker's kill: job %+v; want running (River never heard back)", j)
		}
	}
	if charges != len(keys) {
		t.Fatalf("provider made %d charges, want %d", charges, len(keys))
	}

	// A new worker. River's rescuer runs a job again once it has been
	// running for rescueAfter; it looks when its client becomes River's
	// leader (at once, or when the dead worker's lease ends) and every 30 s
	// after, so wait out rescueAfter first rather than miss the first look.
	time.Sleep(time.Until(killedAt.Add(rescueAfter)))
	w = start(ctx, t, "worker", "", workerArgs...)
	for {
		jobs = jobRows(ctx, t, a)
		done := 0
		for _, j := range jobs {
			if j.State == rivertype.JobStateCompleted {
				done++
			}
		}
		if done == len(keys) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("jobs not done: %+v\nworker:\n%s", jobs, w.log())
		case <-time.After(200 * time.Millisecond):
		}
	}
	w.stop(t)

	// The invariants, from the database and the provider alone.
	byKey, charges = prov.stats()
	requests, runs := map[string]int{}, map[string]int{}
	for _, key := range keys {
		dk := idempotency.DownstreamKey(customer, key, stepCollect)
		s := byKey[dk]
		requests[key] = s.Requests
		if n := count(t, db, `SELECT COUNT(*) FROM charges WHERE customer = ? AND idempotency_key = ?`, customer, key); n != 1 {
			t.Errorf("%s: %d charge rows, want 1", key, n)
		}
		var mine []jobRow
		for _, j := range jobs {
			if j.Args.Customer == customer && j.Args.Key == key {
				mine = append(mine, j)
			}
		}
		if len(mine) == 1 {
			runs[key] = mine[0].Attempt
		}
		if len(mine) != 1 || mine[0].Args.ChargeID != answers[key].ID || mine[0].Attempt < 2 ||
			mine[0].Output.ProviderID != s.ChargeID || !mine[0].Output.Replayed {
			t.Errorf("%s: jobs %+v; want one, for charge %s, done at a run after the kill with the provider's replay of %s",
				key, mine, answers[key].ID, s.ChargeID)
		}
		if s.Requests <= before[key] || s.ChargeID == "" {
			t.Errorf("%s: at the provider %+v; want more than the %d requests before the kill, with key %s, and one charge",
				key, s, before[key], dk)
		}
	}
	if count(t, db, `SELECT COUNT(*) FROM idempotency_keys`) != len(keys) || count(t, db, `SELECT COUNT(*) FROM charges`) != len(keys) ||
		len(jobs) != len(keys) || charges != len(keys) || len(byKey) != len(keys) {
		t.Errorf("keys=%d charges=%d jobs=%d provider charges=%d provider keys=%d; want %d each",
			count(t, db, `SELECT COUNT(*) FROM idempotency_keys`), count(t, db, `SELECT COUNT(*) FROM charges`), len(jobs), charges, len(byKey), len(keys))
	}
	t.Logf("%s: %d keys; API killed %d times between COMMIT and answer, %d retries, all replayed; "+
		"worker killed once after %d provider calls; provider requests per key %v, charges per key 1 (%d in all); "+
		"jobs: %d, one per key, all completed, runs per job %v",
		driver, len(keys), apiKills, retries, len(keys), requests, charges, len(jobs), runs)
}

// jobRow is a collect job as the test reads it.
type jobRow struct {
	ID      int64
	State   rivertype.JobState
	Attempt int
	Args    CollectArgs
	Output  Collected
}

// jobRows reads the collect jobs through River, oldest first.
func jobRows(ctx context.Context, t *testing.T, a app) []jobRow {
	t.Helper()
	js, err := a.jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	jobs := make([]jobRow, len(js))
	for i, j := range js {
		jobs[i] = jobRow{ID: j.ID, State: j.State, Attempt: j.Attempt, Args: args(j)}
		if out := j.Output(); out != nil {
			if err := json.Unmarshal(out, &jobs[i].Output); err != nil {
				t.Fatalf("job %d's output %s: %v", j.ID, out, err)
			}
		}
	}
	return jobs
}
