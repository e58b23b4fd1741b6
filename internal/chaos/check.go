package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
)

// ReadLogs reads every worker log (*.log) in dir. A last line cut short by
// a kill is skipped: its call's answer was never whole, so nobody got it.
func ReadLogs(dir string) ([]Answer, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return nil, err
	}
	var all []Answer
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var a Answer
			if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
				continue
			}
			all = append(all, a)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return all, nil
}

// stored is a key's committed record as the database holds it.
type stored struct {
	value  []byte
	failed bool
}

// State is what the database holds after a run.
type State struct {
	Keys    map[string]stored   // committed key rows of Scope
	Effects map[string][]string // business rows: key -> tokens
}

// Touched returns every key the answers or the state name, sorted.
func Touched(st *State, answers []Answer) []string {
	set := map[string]bool{}
	for _, a := range answers {
		if a.Key != "" && !a.Flow {
			set[a.Key] = true
		}
	}
	for k := range st.Keys {
		set[k] = true
	}
	for k := range st.Effects {
		set[k] = true
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ReadState reads the key table and the business table.
func ReadState(ctx context.Context, db *sqlx.DB) (*State, error) {
	st := &State{Keys: map[string]stored{}, Effects: map[string][]string{}}
	q := db.Rebind(`SELECT ` + quoteKey(db) + `, value, failed FROM idempotency_keys WHERE scope = ?`)
	rows, err := db.QueryContext(ctx, q, Scope)
	if err != nil {
		return nil, fmt.Errorf("read keys: %w", err)
	}
	for rows.Next() {
		var (
			k      []byte
			r      stored
			failed any
		)
		if err := rows.Scan(&k, &r.value, &failed); err != nil {
			rows.Close()
			return nil, err
		}
		r.failed = truthy(failed)
		st.Keys[string(k)] = r
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	erows, err := db.QueryContext(ctx, `SELECT k, token FROM `+EffectsTable)
	if err != nil {
		return nil, fmt.Errorf("read effects: %w", err)
	}
	defer erows.Close()
	for erows.Next() {
		var k, tok string
		if err := erows.Scan(&k, &tok); err != nil {
			return nil, err
		}
		st.Effects[k] = append(st.Effects[k], tok)
	}
	return st, erows.Err()
}

func quoteKey(db *sqlx.DB) string {
	if db.DriverName() == "mysql" {
		return "`key`"
	}
	return `"key"`
}

func truthy(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case int64:
		return x != 0
	case []byte:
		return len(x) > 0 && x[0] != '0' && x[0] != 'f'
	case string:
		return x != "" && x != "0" && x != "f" && x != "false"
	}
	return false
}

// Check verifies the invariants from the database and the logs alone:
//
//  1. every committed key has exactly one business row, written by the call
//     whose value is stored, and every business row has its committed key
//     (no duplicate effect, no effect without its key);
//  2. a key holding a final failure has no business row;
//  3. no committed key row is a bare claim without a value;
//  4. every answer a client got equals the stored record (no lost
//     acknowledged write, no answer the database disowns);
//  5. a call that failed with any error but ErrOutcomeUnknown committed
//     nothing (so a key whose calls all failed has no business row);
//  6. no call was answered ErrParamsMismatch (params never change).
//
// It returns one line per breach.
func Check(st *State, answers []Answer) []string {
	var breaches []string
	breach := func(format string, args ...any) {
		if len(breaches) < 200 {
			breaches = append(breaches, fmt.Sprintf(format, args...))
		}
	}
	tokens := map[string]string{} // key -> token of the committed call (value or final)
	keys := make([]string, 0, len(st.Keys))
	for k := range st.Keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r := st.Keys[k]
		effects := st.Effects[k]
		switch {
		case r.value == nil:
			breach("key %s: committed row without a value (a claim committed on its own)", k)
		case r.failed:
			var f struct{ Code string }
			if err := json.Unmarshal(r.value, &f); err != nil {
				breach("key %s: stored failure %q does not decode: %v", k, r.value, err)
			}
			tokens[k] = f.Code
			if len(effects) != 0 {
				breach("key %s: final failure stored, yet %d business rows %v", k, len(effects), effects)
			}
		default:
			var v Receipt
			if err := json.Unmarshal(r.value, &v); err != nil {
				breach("key %s: stored value %q does not decode: %v", k, r.value, err)
				continue
			}
			tokens[k] = v.Token
			if v.Key != k || v.Amount != Amount(k) {
				breach("key %s: stored value %s belongs to another call", k, r.value)
			}
			if len(effects) != 1 {
				breach("key %s: %d business rows %v, want exactly 1", k, len(effects), effects)
			} else if effects[0] != v.Token {
				breach("key %s: business row by call %s, stored value by call %s", k, effects[0], v.Token)
			}
		}
	}
	for k, effects := range st.Effects {
		if _, ok := st.Keys[k]; !ok {
			breach("key %s: %d business rows %v without a committed key", k, len(effects), effects)
		}
	}
	for _, a := range answers {
		if a.Call == "" || a.Flow {
			continue // a fault, or a flow's (see CheckFlows)
		}
		r, ok := st.Keys[a.Key]
		switch a.Class {
		case ClassOK:
			switch {
			case !ok || r.failed:
				breach("lost acknowledged write: call %s got %s for key %s (replayed=%v), the database holds none", a.Call, a.Token, a.Key, a.Replayed)
			case tokens[a.Key] != a.Token || a.Amount != Amount(a.Key):
				breach("call %s got value of call %s for key %s, the database holds call %s's", a.Call, a.Token, a.Key, tokens[a.Key])
			}
		case ClassFinal:
			if !ok || !r.failed || tokens[a.Key] != a.Code {
				breach("call %s got final failure %q for key %s, the database holds %q (failed=%v)", a.Call, a.Code, a.Key, r.value, r.failed)
			}
		case ClassMismatch:
			breach("call %s for key %s: ErrParamsMismatch with equal params: %s", a.Call, a.Key, a.Err)
		}
		if a.Class != ClassOK && a.Class != ClassFinal && a.Class != ClassUnknown && ok && tokens[a.Key] == a.Call {
			breach("call %s for key %s failed (%s: %s), yet its write committed", a.Call, a.Key, a.Class, a.Err)
		}
		if a.Class == ClassOK && !a.Replayed && a.Token != a.Call {
			breach("call %s for key %s ran fn, yet answered call %s's value", a.Call, a.Key, a.Token)
		}
	}
	return breaches
}

// Resolution counts how the final retry of each key went.
type Resolution struct {
	Keys, Replayed, Ran, Final int
	Stuck                      []string
}

// Resolve calls every key once more, as a client retry would, and reports
// keys that neither replay nor run (stuck). Its own calls are checked by the
// next Check: pass the returned answers along.
func Resolve(ctx context.Context, db *sqlx.DB, keys []string, wait time.Duration) (Resolution, []Answer, error) {
	s, err := idempotency.New(db, idempotency.WithWait(wait))
	if err != nil {
		return Resolution{}, nil, err
	}
	s = s.Scope(Scope)
	var (
		res     = Resolution{Keys: len(keys)}
		answers []Answer
	)
	for _, key := range keys {
		id := "resolve." + key
		a := Answer{Call: id, Key: key}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := idempotency.Run(cctx, s, key, Params{Key: key, Amount: Amount(key)}, func(ctx context.Context, tx *sqlx.Tx) (Receipt, error) {
			_, err := tx.ExecContext(ctx, tx.Rebind(`INSERT INTO `+EffectsTable+` (k, token) VALUES (?, ?)`), key, id)
			return Receipt{Key: key, Amount: Amount(key), Token: id}, err
		})
		cancel()
		var fe *idempotency.FinalError
		switch {
		case err == nil:
			a.Class, a.Token, a.Amount, a.Replayed = ClassOK, r.Value.Token, r.Value.Amount, r.Replayed
			if r.Replayed {
				res.Replayed++
			} else {
				res.Ran++
			}
		case errors.As(err, &fe):
			a.Class, a.Code = ClassFinal, fe.Code
			res.Final++
		default:
			a.Class, a.Err = ClassError, err.Error()
			res.Stuck = append(res.Stuck, fmt.Sprintf("key %s: a retry neither replays nor runs: %v", key, err))
		}
		answers = append(answers, a)
	}
	return res, answers, nil
}
