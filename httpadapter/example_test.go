package httpadapter_test

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/httpadapter"
)

// A service that calls idempotency.Run from its own handler (in Gin, Echo,
// or behind a gRPC gateway) answers its errors with the middleware's
// table: ProblemFor and WriteProblem.
func ExampleProblemFor() {
	var store *idempotency.Store // from idempotency.New
	type charge struct {
		ID     string `json:"id"`
		Amount int    `json:"amount"`
	}
	http.HandleFunc("POST /charges", func(w http.ResponseWriter, r *http.Request) {
		var in charge
		key, err := httpadapter.ParseKey(r.Header.Get(httpadapter.KeyHeader))
		if err != nil {
			httpadapter.WriteProblem(w, httpadapter.ProblemFor(err)) // 400 key-invalid
			return
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, "malformed JSON", http.StatusBadRequest)
			return
		}
		res, err := idempotency.Run(r.Context(), store, key, in, func(ctx context.Context, tx *sqlx.Tx) (charge, error) {
			_, err := tx.ExecContext(ctx, `INSERT INTO charges (amount) VALUES ($1)`, in.Amount)
			return charge{ID: "ch_1", Amount: in.Amount}, err
		})
		if err != nil {
			p := httpadapter.ProblemFor(err)
			if p.Type == httpadapter.ProblemStoreFailed && r.Context().Err() != nil {
				p = httpadapter.ProblemFor(r.Context().Err()) // the request's context ended
			}
			if res.Replayed {
				w.Header().Set(httpadapter.ReplayedHeader, "true") // a stored final failure
			}
			httpadapter.WriteProblem(w, p)
			return
		}
		if res.Replayed {
			w.Header().Set(httpadapter.ReplayedHeader, "true")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(res.Value)
	})
}
