package mysql_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/dialects"
	idmysql "github.com/exactlyonce/idempotency/dialects/mysql"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestTiDBPessimisticClaim: on a TiDB whose sessions are optimistic, the
// transaction StartTx has made pessimistic holds the key it claims: a
// twin's claim, in a transaction made pessimistic the same way, waits for
// it and reports Held, then Taken once it commits. The session's own mode
// is untouched: the next plain transaction on that connection holds no
// lock, so a plain twin claims the same key beside it, as in optimistic
// mode.
func TestTiDBPessimisticClaim(t *testing.T) {
	ctx := context.Background()
	b := testdb.TiDB("optimistic")
	dsn := b.DSN(t)
	db, other := b.OpenDSN(t, dsn), b.Connect(t, dsn)
	db.SetMaxOpenConns(1) // every statement of db on one connection
	p := idmysql.NewPessimistic(dialects.DefaultTable)
	fp := make([]byte, 32)
	begin := func(db *sqlx.DB, k dialects.Key) (*sqlx.Tx, dialects.Claim, error) {
		t.Helper()
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback() })
		if err := p.StartTx(ctx, tx); err != nil {
			t.Fatalf("StartTx: %v", err)
		}
		c, _, err := p.Claim(ctx, tx, k, fp, time.Hour)
		return tx, c, err
	}

	k := dialects.Key{Scope: "s", Key: "pessimistic"}
	holder, c, err := begin(db, k)
	if err != nil || c != dialects.Claimed {
		t.Fatalf("the first claim: %v, %v", c, err)
	}
	twin, c, err := begin(other, k)
	_ = twin.Rollback()
	if err != nil || c != dialects.Held {
		t.Fatalf("a twin's claim while the key is held: %v, %v; want Held", c, err)
	}
	if ok, err := p.Save(ctx, holder, k, dialects.Record{Fingerprint: fp, Value: []byte("1")}, time.Hour); err != nil || !ok {
		t.Fatalf("save: %v, %v", ok, err)
	}
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	twin, c, err = begin(other, k)
	_ = twin.Rollback()
	if err != nil || c != dialects.Taken {
		t.Fatalf("a twin's claim after the holder committed: %v, %v; want Taken", c, err)
	}

	// The same connection, in a plain transaction: optimistic still.
	var mode string
	if err := db.Get(&mode, `SELECT @@tidb_txn_mode`); err != nil || mode != "optimistic" {
		t.Fatalf("the session's tidb_txn_mode after pessimistic transactions: %q, %v; want optimistic", mode, err)
	}
	d := idmysql.New(dialects.DefaultTable)
	k = dialects.Key{Scope: "s", Key: "plain"}
	claimIn(t, d, db, k, fp, time.Hour)
	plainTwin, err := other.BeginTxx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = plainTwin.Rollback() }()
	if c, _, err := d.Claim(ctx, plainTwin, k, fp, time.Hour); err != nil || c != dialects.Claimed {
		t.Fatalf("a plain twin's claim beside a plain transaction on the same connection: %v, %v; want Claimed (optimistic: nothing locked)", c, err)
	}
}

// TestTiDBStorm: 64 calls at once with one key, on a TiDB whose sessions
// are optimistic. With the default dialect every call runs fn (the first
// to commit wins, the others replay it); with NewPessimistic's, fn runs
// once and the others wait for it and replay. Every call returns the one
// value. The test logs the runs of each.
func TestTiDBStorm(t *testing.T) {
	b := testdb.TiDB("optimistic")
	db := b.Open(t)
	if _, err := db.Exec(testdb.Charges); err != nil {
		t.Fatal(err)
	}
	warm(t, db, 64)
	for _, c := range []struct {
		name    string
		opts    []idempotency.Option
		maxRuns int32
	}{
		{"optimistic", nil, 64},
		{"pessimistic", []idempotency.Option{idempotency.WithDialect(idmysql.NewPessimistic(dialects.DefaultTable))}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := idempotency.New(db, append(c.opts, idempotency.WithWait(time.Minute))...)
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			runs, charges := storm(t, db, s, c.name, 64)
			t.Logf("%s: fn ran %d times for 64 calls with one key, all answered in %v", c.name, runs, time.Since(began).Round(time.Millisecond))
			if runs < 1 || runs > c.maxRuns || charges != 1 {
				t.Errorf("%s: fn ran %d times and %d charges committed; want 1 to %d runs, one charge", c.name, runs, charges, c.maxRuns)
			}
		})
	}
}

// warm opens n connections in db and keeps them, so that calls made at
// once meet each other rather than wait for connections to open.
func warm(t *testing.T, db *sqlx.DB, n int) {
	t.Helper()
	db.SetMaxIdleConns(n)
	conns := make([]*sql.Conn, n)
	for i := range conns {
		c, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// storm makes n calls at once with key and reports how many times fn ran
// and how many charges committed. fn takes 10ms, as work does, so that
// twins come while it runs.
func storm(t *testing.T, db *sqlx.DB, s *idempotency.Store, key string, n int) (runs int32, charges int) {
	t.Helper()
	var ran atomic.Int32
	var wg sync.WaitGroup
	values := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			values[i], errs[i] = idempotency.Do(context.Background(), s, key, nil, func(ctx context.Context, tx *sqlx.Tx) (string, error) {
				r := ran.Add(1)
				time.Sleep(10 * time.Millisecond)
				_, err := tx.ExecContext(ctx, `INSERT INTO charges (ref, amount) VALUES (?, 1)`, key)
				return fmt.Sprint("run ", r), err
			})
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || values[i] != values[0] {
			t.Errorf("call %d: %q, %v; want %q like the first", i, values[i], errs[i], values[0])
		}
	}
	if err := db.Get(&charges, `SELECT COUNT(*) FROM charges WHERE ref = ?`, key); err != nil {
		t.Fatal(err)
	}
	return ran.Load(), charges
}

// BenchmarkTiDBPessimistic: what NewPessimistic costs one caller, on a
// TiDB whose sessions are optimistic, beside the default dialect and beside
// a pool of its own whose DSN makes its sessions pessimistic. Each
// iteration makes one fresh call of each kind, one after the other, so
// that all meet the same load. It reports the median of each, in ns, and
// the ratios of the two pessimistic kinds to the optimistic.
func BenchmarkTiDBPessimistic(b *testing.B) {
	backend := testdb.TiDB("optimistic")
	dsn := backend.DSN(b)
	db := backend.OpenDSN(b, dsn)
	if _, err := db.Exec(testdb.Charges); err != nil {
		b.Fatal(err)
	}
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		b.Fatal(err)
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["tidb_txn_mode"] = "'pessimistic'"
	sessions := backend.Connect(b, cfg.FormatDSN())
	stores := make([]*idempotency.Store, 3)
	for i, o := range []struct {
		db   *sqlx.DB
		opts []idempotency.Option
	}{
		{db, nil},
		{db, []idempotency.Option{idempotency.WithDialect(idmysql.NewPessimistic(dialects.DefaultTable))}},
		{sessions, nil},
	} {
		if stores[i], err = idempotency.New(o.db, o.opts...); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	run := time.Now().UnixNano()
	took := make([][]time.Duration, len(stores))
	for i := 0; b.Loop(); i++ {
		for j, s := range stores {
			key := fmt.Sprint(run, "-", j, "-", i)
			began := time.Now()
			if _, err := idempotency.Do(ctx, s, key, nil, func(ctx context.Context, tx *sqlx.Tx) (int, error) {
				_, err := tx.ExecContext(ctx, `INSERT INTO charges (ref, amount) VALUES (?, 1)`, key)
				return 1, err
			}); err != nil {
				b.Fatal(err)
			}
			took[j] = append(took[j], time.Since(began))
		}
	}
	median := make([]float64, len(took))
	for j, d := range took {
		slices.Sort(d)
		median[j] = float64(d[len(d)/2])
	}
	b.ReportMetric(median[0], "optimistic-ns")
	b.ReportMetric(median[1], "NewPessimistic-ns")
	b.ReportMetric(median[2], "session-pessimistic-ns")
	b.ReportMetric(median[1]/median[0], "NewPessimistic/optimistic")
	b.ReportMetric(median[2]/median[0], "session/optimistic")
}
