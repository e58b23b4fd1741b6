package main

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

type result struct {
	code           int
	stdout, stderr string
}

func cli(args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

func (r result) must(t *testing.T, code int, args []string, want ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("idempotency %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	all := r.stdout + r.stderr
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("idempotency %s: output lacks %q\nstdout: %s\nstderr: %s", strings.Join(args, " "), w, r.stdout, r.stderr)
		}
	}
}

// stat reads one number from stats' output.
func stat(t *testing.T, out, label string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label) + `\s+(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("stats output has no %q line:\n%s", label, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestCommands runs migrate, migrate status, stats and prune against every
// backend, on a database that starts empty.
func TestCommands(t *testing.T) {
	for _, b := range testdb.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			base := []string{"--dsn", b.DSN(t)}
			if b.Name == "postgres" {
				base = append(base, "--driver", "postgres") // lib/pq; pgx is inferred
			}
			args := func(a ...string) []string { return append(append([]string{}, a...), base...) }

			a := args("stats")
			cli(a...).must(t, 1, a, "table idempotency_keys does not exist", "idempotency migrate")

			a = args("migrate", "status")
			cli(a...).must(t, 0, a, "pending", "00001_idempotency_keys.sql", fmt.Sprintf("%d pending", len(testdb.MigrationFiles(t, b.Kind))))
			a = args("migrate")
			cli(a...).must(t, 0, a, "applied 00001_idempotency_keys.sql")
			cli(a...).must(t, 0, a, "up to date")
			a = args("migrate", "status")
			r := cli(a...)
			r.must(t, 0, a, "applied", "0 pending")
			if strings.Contains(r.stdout, "pending  -") {
				t.Errorf("a migration is still pending:\n%s", r.stdout)
			}

			// 10 expired keys and 3 live ones, written through the library.
			db := b.Connect(t, base[1])
			live, err := idempotency.New(db)
			if err != nil {
				t.Fatal(err)
			}
			short, err := idempotency.New(db, idempotency.WithTTL(time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 13 {
				s := short
				if i >= 10 {
					s = live
				}
				if _, err := idempotency.Do(ctx, s, fmt.Sprintf("k%d", i), i, func(context.Context, *sqlx.Tx) (int, error) { return i, nil }); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(10 * time.Millisecond)

			a = args("stats")
			r = cli(a...)
			r.must(t, 0, a)
			if stat(t, r.stdout, "total") != 13 || stat(t, r.stdout, "expired (prune backlog)") != 10 ||
				stat(t, r.stdout, "live") != 3 || stat(t, r.stdout, "age < 1h") != 13 {
				t.Errorf("stats before prune:\n%s\nwant total 13, expired 10, live 3, all under 1h old", r.stdout)
			}

			// Four batches, three pauses between them: it cannot be quicker.
			const pause = 150 * time.Millisecond
			a = args("prune", "--batch", "3", "--progress", "--pause", pause.String())
			began := time.Now()
			r = cli(a...)
			r.must(t, 0, a, "pruned 10 expired keys from idempotency_keys in 4 batch(es)")
			if took := time.Since(began); took < 3*pause {
				t.Errorf("prune of 4 batches with --pause %v took %v; the pauses were skipped", pause, took)
			}
			if n := strings.Count(r.stderr, "batch "); n != 4 {
				t.Errorf("%d progress lines for 4 batches:\n%s", n, r.stderr)
			}
			a = args("prune")
			r = cli(a...)
			r.must(t, 0, a, "pruned 0 expired keys")
			if r.stderr != "" {
				t.Errorf("prune without a terminal or --progress wrote to stderr: %q", r.stderr)
			}

			a = args("stats")
			r = cli(a...)
			r.must(t, 0, a)
			if stat(t, r.stdout, "total") != 3 || stat(t, r.stdout, "expired (prune backlog)") != 0 {
				t.Errorf("stats after prune:\n%s\nwant total 3, expired 0", r.stdout)
			}
			for i := 10; i < 13; i++ {
				res, err := idempotency.Run(ctx, live, fmt.Sprintf("k%d", i), i, func(context.Context, *sqlx.Tx) (int, error) { return -1, nil })
				if err != nil || !res.Replayed || res.Value != i {
					t.Errorf("live key k%d after prune: %+v, %v; want a replay of %d", i, res, err, i)
				}
			}

			a = args("stats", "--table", "other_keys")
			cli(a...).must(t, 1, a, "table other_keys does not exist", "idempotency migrate")
		})
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	sqlite := testdb.SQLiteDSN(filepath.Join(t.TempDir(), "x.db"))
	for _, tc := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"stats", "--dsn", "postgres://u:secret@127.0.0.1:notaport/db"}, 2, []string{"DSN is not valid for driver pgx"}},
		{[]string{"stats", "--dsn", "root@tcp(127.0.0.1:3306/db"}, 2, []string{"DSN is not valid for driver mysql"}},
		{[]string{"stats", "--driver", "postgres", "--dsn", "postgres://u@127.0.0.1:1/db?sslmode=bogus"}, 2, []string{"DSN is not valid for driver postgres"}},
		{[]string{"stats", "--dsn", "postgres://u@127.0.0.1:1/db?sslmode=disable&connect_timeout=2"}, 1, []string{"cannot reach the database (pgx)", "127.0.0.1:1"}},
		{[]string{"prune", "--driver", "postgres", "--dsn", "postgres://u@127.0.0.1:1/db?sslmode=disable"}, 1, []string{"cannot reach the database (postgres)"}},
		{[]string{"stats", "--dsn", "root@tcp(127.0.0.1:1)/db", "--timeout", "2s"}, 1, []string{"cannot reach the database (mysql)", "127.0.0.1:1"}},
		{[]string{"stats", "--dsn", "file:" + filepath.Join(t.TempDir(), "missing-dir", "x.db")}, 1, []string{"cannot reach the database (sqlite)"}},
		{[]string{"stats", "--dsn", sqlite}, 1, []string{"does not exist", "run 'idempotency migrate'"}},
		{[]string{"stats", "--dsn", "somewhere"}, 2, []string{"--driver"}},
		{[]string{"stats", "--dsn", sqlite, "--driver", "oracle"}, 2, []string{`--driver "oracle"`}},
		{[]string{"stats", "--dsn", sqlite, "--table", "x;drop"}, 2, []string{"WithTable"}},
		{[]string{"migrate", "--dsn", sqlite, "--table", "other"}, 2, []string{"only idempotency_keys"}},
		{[]string{"prune", "--dsn", sqlite, "--batch", "0"}, 2, []string{"--batch 0"}},
		{[]string{"prune", "--dsn", sqlite, "--pause", "-1s"}, 2, []string{"--pause -1s"}},
		{[]string{"frob", "--dsn", sqlite}, 2, []string{`unknown command "frob"`}},
		{[]string{"migrate", "down", "--dsn", sqlite}, 2, []string{`unknown command "migrate down"`}},
		{[]string{"--dsn", sqlite}, 2, []string{"no command"}},
		{[]string{"--nope", "stats"}, 2, []string{"flag provided but not defined: -nope"}},
		{[]string{"-h"}, 0, []string{"migrate status", "-dsn"}},
	} {
		r := cli(tc.args...)
		r.must(t, tc.code, tc.args, tc.want...)
		if strings.Contains(r.stdout+r.stderr, "secret") {
			t.Errorf("idempotency %v printed the password: %s", tc.args, r.stderr)
		}
	}
}

// TestEnvDSN: IDEMPOTENCY_DSN stands in for --dsn. (Not parallel: it sets
// the environment.)
func TestEnvDSN(t *testing.T) {
	t.Setenv("IDEMPOTENCY_DSN", "")
	cli("migrate").must(t, 2, []string{"migrate"}, "pass --dsn or set IDEMPOTENCY_DSN")
	t.Setenv("IDEMPOTENCY_DSN", testdb.SQLiteDSN(filepath.Join(t.TempDir(), "env.db")))
	cli("migrate").must(t, 0, []string{"migrate"}, "applied")
	cli("stats").must(t, 0, []string{"stats"}, "total")
}

func TestInferDriver(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string]string{
		"postgres://u@h/db":                  "pgx",
		"postgresql://u@h/db":                "pgx",
		"host=localhost dbname=x user=u":     "pgx",
		"file:/var/lib/app.db?_pragma=x":     "sqlite",
		"/var/lib/app.db":                    "sqlite",
		"app.sqlite3":                        "sqlite",
		":memory:":                           "sqlite",
		"user:pw@tcp(127.0.0.1:3306)/db":     "mysql",
		"user@unix(/run/mysqld.sock)/db?x=1": "mysql",
	} {
		got, err := inferDriver(dsn)
		if err != nil || got != want {
			t.Errorf("inferDriver(%q) = %q, %v; want %q", dsn, got, err, want)
		}
	}
}
