package chaos_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/exactlyonce/idempotency/internal/chaos"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// TestCheckFlowsCatchesBreaches makes sure CheckFlows is not blind: a
// clean flow key passes, and an answer the key does not replay, or a
// business row written twice, is reported.
func TestCheckFlowsCatchesBreaches(t *testing.T) {
	ctx := context.Background()
	db := testdb.Backend{Name: "sqlite", Driver: "sqlite", Kind: "sqlite"}.Open(t)
	if err := chaos.CreateFlowTables(ctx, db); err != nil {
		t.Fatal(err)
	}
	check := func(answers ...chaos.Answer) (chaos.FlowFigures, []string) {
		t.Helper()
		fig, breaches, err := chaos.CheckFlows(ctx, db, answers, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return fig, breaches
	}
	// A client that gave up before its flow started: the check runs it.
	fig, breaches := check(chaos.Answer{Flow: true, Call: "c1", Key: "flow-1", Class: chaos.ClassFnError})
	if len(breaches) != 0 || fig.RanAtCheck != 1 || fig.ChargesPerKey[1] != 1 {
		t.Fatalf("a clean key: %+v, %q", fig, breaches)
	}
	var charge string
	if err := db.Get(&charge, `SELECT id FROM `+chaos.ProviderTable+` WHERE flow_key = 'flow-1'`); err != nil {
		t.Fatal(err)
	}
	good := chaos.Answer{Flow: true, Call: "c2", Key: "flow-1", Class: chaos.ClassOK, Token: charge, Replayed: true}
	if fig, breaches = check(good); len(breaches) != 0 || fig.Finished != 1 {
		t.Fatalf("a clean key, replayed: %+v, %q", fig, breaches)
	}
	wrong := good
	wrong.Token = "another-charge"
	if _, breaches = check(good, wrong); len(breaches) != 1 || !strings.Contains(breaches[0], "another-charge") {
		t.Errorf("an answer the key does not replay: %q; want it reported", breaches)
	}
	db.MustExec(`INSERT INTO ` + chaos.FlowEffectsTable + ` (k, step, token) VALUES ('flow-1', 'order', 'c9')`)
	if _, breaches = check(good); len(breaches) != 1 || !strings.Contains(breaches[0], "order rows") {
		t.Errorf("an order row written twice: %q; want it reported", breaches)
	}
}
