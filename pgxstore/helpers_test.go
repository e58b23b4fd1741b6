package pgxstore

import (
	"context"
	"hash/fnv"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/exactlyonce/idempotency/dialects"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// backend is the Postgres server the tests run on, reached through pgx.
var backend = testdb.Backend{Name: "pgx", Driver: "pgx", Kind: "postgres"}

// testDSN returns the DSN of a fresh schema, migrated through Up, with the
// charges table that fn writes to in the tests.
func testDSN(t *testing.T) string {
	t.Helper()
	dsn := backend.DSN(t)
	pool := openPool(t, dsn, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Up(ctx, pool); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE charges (k text NOT NULL, amount integer NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return dsn
}

// openPool opens a pool on dsn, after edit changes its configuration. At
// cleanup it checks that no connection is still acquired: every path of
// the driver must give its connection back.
func openPool(t testing.TB, dsn string, edit func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// pgxpool destroys a broken connection in the background, and
		// counts it acquired until it is closed.
		deadline := time.Now().Add(5 * time.Second)
		for pool.Stat().AcquiredConns() != 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("%d connections still acquired at the end of the test", n)
		}
		pool.Close()
	})
	return pool
}

// testPool is a pool on a fresh, migrated schema.
func testPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return openPool(t, testDSN(t), nil)
}

func testDriver(t *testing.T, pool *pgxpool.Pool, cfg dialects.Config) *driver {
	t.Helper()
	if cfg.Table == "" {
		cfg.Table = dialects.DefaultTable
	}
	d, err := newDriver(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// key is a key in the test's scope, with a lock number derived from both
// (any stable hash will do for a test). Each test has a schema of its own,
// but advisory locks are the database's: without the scope, two tests that
// use one key would hold each other's lock.
func key(t *testing.T, k string) dialects.Key {
	h := fnv.New64a()
	_, _ = h.Write([]byte(t.Name() + "\x00" + k))
	return dialects.Key{Scope: t.Name(), Key: k, Lock: int64(h.Sum64())}
}

// count counts rows of a table with k = key, committed, outside any test
// transaction.
func count(t *testing.T, pool *pgxpool.Pool, table, key string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table+` WHERE `+column(table)+` = $1`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func column(table string) string {
	if table == "charges" {
		return "k"
	}
	return "key"
}

// wireProxy forwards TCP connections to a server, counts round trips at
// the wire and, when armed, cuts a connection at the client's next message.
// It knows nothing of the protocol, so it counts what pgx really does
// (prepares and pings included), and it cuts a pipeline whatever names its
// statements go by: on a warm pgx connection the save pipeline names
// prepared statements, and the word COMMIT never crosses the wire.
type wireProxy struct {
	ln     net.Listener
	target string
	trips  atomic.Int64
	cut    atomic.Int32 // a cutMode, for the next message of any client
	mu     sync.Mutex
	conns  []net.Conn
}

type cutMode int32

const (
	noCut cutMode = iota
	// cutBefore drops the client's next message and the connection.
	cutBefore
	// cutAfter forwards the client's next message, then drops the client
	// before the server's answer can reach it.
	cutAfter
)

// startWireProxy listens on a loopback port, forwards to target and stops
// at cleanup.
func startWireProxy(t *testing.T, target string) *wireProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &wireProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *wireProxy) addr() string { return p.ln.Addr().String() }

// Trips is the number of round trips counted so far, on every connection.
func (p *wireProxy) Trips() int64 { return p.trips.Load() }

// Arm cuts the connection that carries the next message a client sends.
func (p *wireProxy) Arm(m cutMode) { p.cut.Store(int32(m)) }

func (p *wireProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		// turn is whose move it is: set when the client speaks, taken when
		// the server answers. It is set before the client's bytes are
		// forwarded, so the answer cannot overtake it.
		var turn atomic.Bool
		go p.upstream(client, server, &turn)
		go func() {
			defer client.Close()
			defer server.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 {
					if turn.Swap(false) {
						p.trips.Add(1)
					}
					if _, err := client.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// upstream forwards what the client sends, and cuts when armed. After
// cutAfter the server's side stays open until the server answers (the
// answer then fails to reach the client, which closes it), so the server is
// not interrupted before it has done what it was sent.
func (p *wireProxy) upstream(client, server net.Conn, turn *atomic.Bool) {
	defer client.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			turn.Store(true)
			switch cutMode(p.cut.Swap(int32(noCut))) {
			case cutBefore:
				_ = server.Close()
				return
			case cutAfter:
				_, _ = server.Write(buf[:n])
				return
			}
			if _, err := server.Write(buf[:n]); err != nil {
				_ = server.Close()
				return
			}
		}
		if err != nil {
			_ = server.Close()
			return
		}
	}
}

func (p *wireProxy) close() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
}
