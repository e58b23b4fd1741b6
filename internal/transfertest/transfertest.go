// Package transfertest is the money-transfer workload that the framework
// adapters' tests (Gin, Echo) run through their handlers: many clients
// retrying through httpadapter.Transport, with faults on the way to the
// server and, optionally, on the way to the database, and a check, from
// the database alone, that every transfer a client was told of happened
// exactly once and that no money moved twice.
//
// Send makes one request to such a handler, and CheckAsMiddleware checks
// that an adapter keeps httpadapter's keys, scopes, replays and problems.
package transfertest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/httpadapter"
)

// Tables are the workload's tables: accounts with a balance, and one row
// per transfer made, named by the client's ref.
var Tables = []string{
	`CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)`,
	`CREATE TABLE transfers (ref VARCHAR(255) NOT NULL, from_id INTEGER NOT NULL, to_id INTEGER NOT NULL, amount INTEGER NOT NULL)`,
}

// Accounts is how many accounts the workload moves money between, and
// Opening each one's first balance.
const (
	Accounts = 4
	Opening  = 1_000_000
)

// Setup creates the tables on db and opens the accounts.
func Setup(t testing.TB, db *sqlx.DB) {
	t.Helper()
	for _, q := range Tables {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for id := 1; id <= Accounts; id++ {
		if _, err := db.Exec(db.Rebind(`INSERT INTO accounts (id, balance) VALUES (?, ?)`), id, Opening); err != nil {
			t.Fatal(err)
		}
	}
}

// Request is the body of POST /transfers.
type Request struct {
	Ref    string `json:"ref"`
	From   int    `json:"from"`
	To     int    `json:"to"`
	Amount int    `json:"amount"`
}

// Answer is the body of a transfer's 201.
type Answer struct {
	Ref string `json:"ref"`
}

// Execer is a transaction of any kind database/sql has: *sql.Tx, *sqlx.Tx.
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Move makes the transfer in tx: both balances and its row. postgres says
// whether to write $n placeholders.
func Move(ctx context.Context, tx Execer, postgres bool, req Request) error {
	q := func(s string) string {
		if !postgres {
			return s
		}
		n := 0
		var b bytes.Buffer
		for _, c := range s {
			if c == '?' {
				n++
				fmt.Fprintf(&b, "$%d", n)
				continue
			}
			b.WriteRune(c)
		}
		return b.String()
	}
	if _, err := tx.ExecContext(ctx, q(`UPDATE accounts SET balance = balance - ? WHERE id = ?`), req.Amount, req.From); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, q(`UPDATE accounts SET balance = balance + ? WHERE id = ?`), req.Amount, req.To); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, q(`INSERT INTO transfers (ref, from_id, to_id, amount) VALUES (?, ?, ?, ?)`), req.Ref, req.From, req.To, req.Amount)
	return err
}

// Load is how Drive sends its requests.
type Load struct {
	Clients   int // concurrent clients
	PerClient int // requests each, one after another
	// HTTPFaults makes each client's transport drop some requests before
	// they reach the server, cut some while the handler runs, and lose
	// some answers after the server sent them (the transfer committed).
	HTTPFaults bool
}

// Outcome is what the clients were told.
type Outcome struct {
	// Answers maps each request's ref to its final status and whether
	// its body named the ref (a real transfer's answer).
	Answers map[string]Told
	// Faults counts the faults the transports injected.
	Faults int
}

// Told is one request's final answer.
type Told struct {
	Status int
	Named  bool // the body was an Answer with the request's ref
	Err    error
}

// Drive sends l's transfers to url+"/transfers", each with its own key,
// retried by httpadapter.Transport, and returns what the clients got.
func Drive(t testing.TB, url string, l Load) Outcome {
	t.Helper()
	var (
		mu  sync.Mutex
		out = Outcome{Answers: map[string]Told{}}
		wg  sync.WaitGroup
	)
	for c := range l.Clients {
		wg.Go(func() {
			base := &faulty{base: http.DefaultTransport, rnd: rand.New(rand.NewPCG(uint64(c), 23)), on: l.HTTPFaults}
			client := &http.Client{Transport: &httpadapter.Transport{
				Base: base, MaxAttempts: 30, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Second,
			}}
			for i := range l.PerClient {
				req := Request{Ref: fmt.Sprintf("c%d-%d", c, i), From: 1 + (c+i)%Accounts, To: 1 + (c+i+1)%Accounts, Amount: 1 + i%7}
				told := send(client, url, req)
				mu.Lock()
				out.Answers[req.Ref] = told
				mu.Unlock()
			}
			mu.Lock()
			out.Faults += base.faults
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

func send(c *http.Client, url string, req Request) Told {
	body, _ := json.Marshal(req)
	resp, err := c.Post(url+"/transfers", "application/json", bytes.NewReader(body))
	if err != nil {
		return Told{Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Told{Status: resp.StatusCode, Err: err}
	}
	var a Answer
	named := json.Unmarshal(b, &a) == nil && a.Ref == req.Ref
	return Told{Status: resp.StatusCode, Named: named}
}

// Reply is the server's answer to one request of Send.
type Reply struct {
	Status int
	Header http.Header
	Body   string
}

// Replayed reports whether the answer is a replay of a stored response.
func (r Reply) Replayed() bool { return r.Header.Get(httpadapter.ReplayedHeader) == "true" }

// Send makes one request to url's /transfers with body as JSON, key as
// the idempotency key (none when empty) and header as name, value pairs,
// and returns the answer; it fails t when there is none.
func Send(t testing.TB, method, url, key, body string, header ...string) Reply {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, url+"/transfers", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set(httpadapter.KeyHeader, key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return Reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}

// CheckAsMiddleware is what a framework adapter's tests check of a
// handler at url/transfers wrapped with httpadapter's behaviour: scoped
// by the X-Account header, at most 256 request bytes, and holding a
// request with an X-Hold header (it sends on held, then waits for
// release). body is a transfer's JSON; noScope are the headers of a
// request the scope function finds no scope in. Fresh, replayed and
// re-scoped answers, the problems (a reused key, a bad key, no scope, too
// large) and the in-progress 409 of a twin are checked; keys k1 to k4 are
// used.
func CheckAsMiddleware(t testing.TB, url, body string, noScope []string, held <-chan struct{}, release chan<- struct{}) {
	t.Helper()
	acct := func(a string) []string { return []string{"X-Account", a} }

	first := Send(t, http.MethodPost, url, "k1", body, acct("alice")...)
	again := Send(t, http.MethodPost, url, "k1", body, acct("alice")...)
	if first.Status != 201 || first.Replayed() || again.Status != 201 || !again.Replayed() || again.Body != first.Body {
		t.Fatalf("fresh then retry: %d/%v then %d/%v %q", first.Status, first.Replayed(), again.Status, again.Replayed(), again.Body)
	}
	if r := Send(t, http.MethodPost, url, "k1", body, acct("bob")...); r.Status != 201 || r.Replayed() {
		t.Fatalf("the same key in another scope: %d replayed=%v, want a fresh 201", r.Status, r.Replayed())
	}
	want := []struct {
		name, key, body, problem string
		header                   []string
		status                   int
	}{
		{"other body", "k1", `{"ref":"r2","from":1,"to":2,"amount":6}`, httpadapter.ProblemKeyReused, acct("alice"), 422},
		{"bad key", strings.Repeat("k", 256), body, httpadapter.ProblemKeyInvalid, acct("alice"), 400},
		{"no scope", "k2", body, httpadapter.ProblemScopeInvalid, noScope, 500},
		{"too large", "k3", `{"ref":"` + strings.Repeat("x", 300) + `"}`, httpadapter.ProblemRequestTooLarge, acct("alice"), 413},
	}
	for _, w := range want {
		r := Send(t, http.MethodPost, url, w.key, w.body, w.header...)
		if r.Status != w.status || r.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(r.Body, w.problem) {
			t.Errorf("%s: %d %s %q, want %d %s", w.name, r.Status, r.Header.Get("Content-Type"), r.Body, w.status, w.problem)
		}
	}

	// A twin of a request still running: 409 with Retry-After.
	done := make(chan Reply)
	go func() { done <- Send(t, http.MethodPost, url, "k4", body, "X-Account", "alice", "X-Hold", "1") }()
	<-held
	twin := Send(t, http.MethodPost, url, "k4", body, acct("alice")...)
	close(release)
	if r := <-done; r.Status != 201 {
		t.Errorf("the held request: %d", r.Status)
	}
	if twin.Status != 409 || twin.Header.Get("Retry-After") == "" || !strings.Contains(twin.Body, httpadapter.ProblemInProgress) {
		t.Errorf("the twin: %d Retry-After=%q %q, want 409 in-progress with Retry-After", twin.Status, twin.Header.Get("Retry-After"), twin.Body)
	}
}

// errInjected is the transports' network error.
var errInjected = errors.New("transfertest: injected network fault")

// faulty is one client's transport to the server, with faults.
type faulty struct {
	base   http.RoundTripper
	rnd    *rand.Rand // one client's: used from its goroutine alone
	on     bool
	faults int
}

func (f *faulty) RoundTrip(r *http.Request) (*http.Response, error) {
	if !f.on {
		return f.base.RoundTrip(r)
	}
	switch p := f.rnd.Float64(); {
	case p < 0.08: // dropped on the way: the server never sees it
		f.faults++
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, errInjected
	case p < 0.16: // cut while the handler runs: the client hangs up
		f.faults++
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(f.rnd.IntN(3000))*time.Microsecond)
		defer cancel()
		resp, err := f.base.RoundTrip(r.WithContext(ctx))
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		return nil, errInjected
	case p < 0.24: // the answer is lost after the server sent it
		f.faults++
		resp, err := f.base.RoundTrip(r)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		return nil, errInjected
	}
	return f.base.RoundTrip(r)
}

// Tally is what Check found.
type Tally struct {
	Requests    int // refs sent
	OK          int // 2xx answers
	Unbacked2xx int // 2xx answers without the ref in the body, or without its transfer: the bug
	Duplicated  int // refs with more than one transfer row
	Moved       int // transfer rows
	Failed      int // requests whose final answer was not a 2xx (or an error)
	Balanced    bool
}

func (t Tally) String() string {
	return fmt.Sprintf("%d requests: %d answered 2xx, %d of them with no transfer behind them; %d failed for good; %d transfers, %d refs moved more than once; balances add up: %v",
		t.Requests, t.OK, t.Unbacked2xx, t.Failed, t.Moved, t.Duplicated, t.Balanced)
}

// Check counts, from the database alone, what o's answers stand for.
func Check(t testing.TB, db *sqlx.DB, o Outcome) Tally {
	t.Helper()
	rows := map[string]int{}
	var moved []struct {
		Ref   string `db:"ref"`
		Count int    `db:"n"`
	}
	if err := db.Select(&moved, `SELECT ref, COUNT(*) AS n FROM transfers GROUP BY ref`); err != nil {
		t.Fatal(err)
	}
	tally := Tally{Requests: len(o.Answers)}
	for _, m := range moved {
		rows[m.Ref] = m.Count
		tally.Moved += m.Count
		if m.Count > 1 {
			tally.Duplicated++
		}
	}
	for ref, told := range o.Answers {
		switch {
		case told.Err == nil && told.Status/100 == 2:
			tally.OK++
			if !told.Named || rows[ref] == 0 {
				tally.Unbacked2xx++
			}
		default:
			tally.Failed++
		}
	}
	// Every balance is its opening plus what the recorded transfers
	// brought in, minus what they took out: a transfer whose row committed
	// without its updates, or updates without their row (money moved
	// twice, or with no record), shows here.
	var off []int
	q := `SELECT a.balance - ? + COALESCE((SELECT SUM(amount) FROM transfers WHERE from_id = a.id), 0)
		- COALESCE((SELECT SUM(amount) FROM transfers WHERE to_id = a.id), 0) FROM accounts a ORDER BY a.id`
	if err := db.Select(&off, db.Rebind(q), Opening); err != nil {
		t.Fatal(err)
	}
	tally.Balanced = len(off) == Accounts
	for _, d := range off {
		if d != 0 {
			tally.Balanced = false
		}
	}
	return tally
}
