//go:build unix

package idempotency_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// The fault test of flows: a child process runs a flow and is killed
// (SIGKILL) at a point of it, or stopped (SIGSTOP) past its lease and
// continued; the parent's completer then finishes the flow. The provider
// keeps its own tables, so charges are counted where they are made, not
// from the library's.

const faultLease = 700 * time.Millisecond

// faultTables are the business table and the provider's.
var faultTables = []string{
	`CREATE TABLE fault_rows (ref VARCHAR(255) NOT NULL)`,
	`CREATE TABLE provider_calls (k VARCHAR(64) NOT NULL)`,
	`CREATE TABLE provider_charges (k VARCHAR(64) NOT NULL PRIMARY KEY)`,
}

// faultFlow writes an order row, authorizes with the provider, writes a
// receipt row. at runs at each named point, where the child stops.
func faultFlow(db *sqlx.DB, at func(string)) *idempotency.Flow[string, string, *sqlx.Tx] {
	write := func(ctx context.Context, tx *sqlx.Tx, ref string) error {
		_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO fault_rows (ref) VALUES (?)`), ref)
		return err
	}
	return idempotency.NewFlow("fault", func(ctx context.Context, s *idempotency.Steps[*sqlx.Tx], ref string) (string, error) {
		if _, err := idempotency.Step(s, "order", func(ctx context.Context, tx *sqlx.Tx) (bool, error) {
			err := write(ctx, tx, ref+"/order")
			at("step-before-commit")
			return true, err
		}); err != nil {
			return "", err
		}
		at("step-after-commit")
		auth, err := idempotency.Call(s, "authorize", func(ctx context.Context, key string) (string, error) {
			at("call-during")
			// The provider honours keys: a key it has seen is answered
			// again, not charged again.
			if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO provider_calls (k) VALUES (?)`), key); err != nil {
				return "", err
			}
			var n int
			if err := db.GetContext(ctx, &n, db.Rebind(`SELECT COUNT(*) FROM provider_charges WHERE k = ?`), key); err != nil {
				return "", err
			}
			if n == 0 {
				if _, err := db.ExecContext(ctx, db.Rebind(`INSERT INTO provider_charges (k) VALUES (?)`), key); err != nil {
					return "", err
				}
			}
			at("call-after-return")
			return "auth-" + key[:8], nil
		})
		if err != nil {
			return "", err
		}
		at("paused")
		v, err := idempotency.Step(s, "receipt", func(ctx context.Context, tx *sqlx.Tx) (string, error) {
			return auth, write(ctx, tx, ref+"/receipt")
		})
		at("before-finish")
		return v, err
	})
}

// TestHelperFlowChild is the child process of TestFlowFaults.
func TestHelperFlowChild(t *testing.T) {
	driver, dsn, point := os.Getenv("FLOW_CHILD_DRIVER"), os.Getenv("FLOW_CHILD_DSN"), os.Getenv("FLOW_CHILD_POINT")
	if dsn == "" {
		t.Skip("runs as a child of TestFlowFaults")
	}
	db, err := sqlx.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	store, err := idempotency.New(db, idempotency.WithLease(faultLease))
	if err != nil {
		t.Fatal(err)
	}
	f := faultFlow(db, func(at string) {
		if at != point {
			return
		}
		fmt.Println("READY", at)
		if at == "paused" {
			time.Sleep(time.Second) // the parent stops the process meanwhile
			return
		}
		select {} // the parent kills the process here
	})
	_, err = f.Do(context.Background(), store, "k", "r")
	if errors.Is(err, idempotency.ErrFlowTakenOver) {
		fmt.Println("TAKEN OVER")
		return
	}
	fmt.Println("RESULT", err)
}

// TestFlowFaults: a flow whose owner is killed before or after a step's
// COMMIT, during a call, after a call returned but before it was recorded,
// or before the flow's end, is finished by a completer with each business
// row written once and the provider charging once; an owner stopped past
// its lease while the completer takes over records nothing once continued.
func TestFlowFaults(t *testing.T) {
	points := []string{"step-before-commit", "step-after-commit", "call-during", "call-after-return", "before-finish", "paused"}
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			for _, point := range points {
				t.Run(point, func(t *testing.T) { faultCase(t, b, point) })
			}
		})
	}
}

func faultCase(t *testing.T, b testdb.Backend, point string) {
	ctx := context.Background()
	dsn := b.DSN(t)
	db := b.OpenDSN(t, dsn)
	for _, q := range faultTables {
		db.MustExec(q)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperFlowChild$", "-test.v")
	cmd.Env = append(os.Environ(), "FLOW_CHILD_DRIVER="+b.Driver, "FLOW_CHILD_DSN="+dsn, "FLOW_CHILD_POINT="+point)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	ready := false
	for !ready && lines.Scan() {
		ready = strings.HasPrefix(lines.Text(), "READY "+point)
	}
	if !ready {
		_ = cmd.Wait()
		t.Fatalf("the child ended before %s", point)
	}

	var ev struct{ resumed, gaveUp int }
	store, err := idempotency.New(db, idempotency.WithLease(faultLease), idempotency.WithCompleterInterval(20*time.Millisecond),
		idempotency.WithHooks(idempotency.Hooks{Flow: func(_ context.Context, e idempotency.FlowEvent) {
			switch e.Kind {
			case idempotency.FlowResumed:
				ev.resumed++ // the completer runs on one goroutine
			case idempotency.FlowGaveUp:
				ev.gaveUp++
			}
		}}))
	if err != nil {
		t.Fatal(err)
	}
	f := faultFlow(db, func(string) {})
	if point == "paused" {
		if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	} else {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}

	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- idempotency.RunCompleter(cctx, store, f) }()
	deadline := time.Now().Add(30 * time.Second)
	for count(t, db, `SELECT COUNT(*) FROM idempotency_flows`) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the completer did not finish the flow in 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	if point == "paused" {
		if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		taken := false
		for lines.Scan() {
			taken = taken || lines.Text() == "TAKEN OVER"
		}
		_ = cmd.Wait()
		if !taken {
			t.Error("the stopped owner, continued, did not learn that it lost the flow")
		}
	}

	r, err := f.Run(ctx, store, "k", "r")
	if err != nil || !r.Replayed || !strings.HasPrefix(r.Value, "auth-") {
		t.Errorf("after the completer: %+v, %v; want its value replayed", r, err)
	}
	orders := count(t, db, `SELECT COUNT(*) FROM fault_rows WHERE ref = 'r/order'`)
	receipts := count(t, db, `SELECT COUNT(*) FROM fault_rows WHERE ref = 'r/receipt'`)
	charges := count(t, db, `SELECT COUNT(*) FROM provider_charges`)
	calls := count(t, db, `SELECT COUNT(*) FROM provider_calls`)
	if orders != 1 || receipts != 1 || charges != 1 || ev.resumed != 1 || ev.gaveUp != 0 {
		t.Errorf("%d order rows, %d receipt rows, %d provider charges, %d resumes, %d give-ups; want 1, 1, 1, 1, 0",
			orders, receipts, charges, ev.resumed, ev.gaveUp)
	}
	t.Logf("%s: provider called %d times for 1 charge", point, calls)
}
