package grpcadapter

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/internal/faultproxy"
	"github.com/exactlyonce/idempotency/internal/testdb"
)

// faultServerEnv, when set to "driver|dsn|addr", makes TestFaultServer
// serve the test service on addr until it is killed: the server process
// that TestFaults starts, kills with SIGKILL and starts again.
const faultServerEnv = "GRPCADAPTER_FAULT_SERVER"

// TestFaultServer is the server process of TestFaults; run alone, it
// skips.
func TestFaultServer(t *testing.T) {
	spec := os.Getenv(faultServerEnv)
	if spec == "" {
		t.Skip("the server process of TestFaults")
	}
	parts := strings.SplitN(spec, "|", 3)
	db, err := sqlx.Open(parts[0], parts[1])
	if err != nil {
		t.Fatal(err)
	}
	store, err := idempotency.New(db)
	if err != nil {
		t.Fatal(err)
	}
	insert := `INSERT INTO charges (ref, amount) VALUES (?, ?)`
	if parts[0] == "postgres" {
		insert = `INSERT INTO charges (ref, amount) VALUES ($1, $2)`
	}
	charge := func(ctx context.Context, tx *sqlx.Tx, ref string, amount int) error {
		_, err := tx.ExecContext(ctx, insert, ref, amount)
		return err
	}
	// In front of the interceptor: every fifth call's reply is lost after
	// its handler committed, as a proxy that drops replies would lose it.
	var n atomic.Int64
	lose := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		reply, err := handler(ctx, req)
		if err == nil && n.Add(1)%5 == 0 {
			return nil, status.Error(codes.Unavailable, "reply lost after the commit")
		}
		return reply, err
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(lose, UnaryServerInterceptor(store)))
	testpb.RegisterPaymentsServer(srv, &payments[*sqlx.Tx]{f: &fixture{}, charge: charge})
	lis, err := net.Listen("tcp", parts[2])
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("serving")
	_ = srv.Serve(lis)
}

// TestFaults: 20 clients with retries make 10 calls each through a proxy
// that delays and cuts connections at random (and once right after a
// request went through), to a server that loses every fifth reply after
// its commit, and whose process is killed with SIGKILL and started again.
// Every call ends with a reply, some of them replays of a commit whose
// reply was lost, and the database holds each call's charge exactly once.
func TestFaults(t *testing.T) {
	for _, b := range testdb.Backends() {
		if b.Name != "postgres" && b.Name != "mysql" {
			continue
		}
		t.Run(b.Name, func(t *testing.T) { testFaults(t, b) })
	}
}

func testFaults(t *testing.T, b testdb.Backend) {
	const clients, calls = 20, 10
	dsn := b.DSN(t)
	db := b.OpenDSN(t, dsn)
	if _, err := db.Exec(testdb.Charges); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	var (
		mu     sync.Mutex
		server *exec.Cmd
	)
	startServer := func() {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFaultServer$")
		cmd.Env = append(os.Environ(), faultServerEnv+"="+b.Driver+"|"+dsn+"|"+addr)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len("serving"))
		if _, err := out.Read(buf); err != nil || string(buf) != "serving" {
			t.Fatalf("the server process did not start: %q, %v", buf, err)
		}
		go func() { _, _ = out.Read(make([]byte, 1<<16)) }()
		mu.Lock()
		server = cmd
		mu.Unlock()
	}
	startServer()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		_ = server.Process.Kill()
		_ = server.Wait()
	})
	proxy, err := faultproxy.Start(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	proxy.SetChaos(&faultproxy.Chaos{DelayProb: 0.05, MaxDelay: 5 * time.Millisecond, CutProb: 0.01})

	var done, replays atomic.Int64
	errs := make(chan error, clients*calls)
	var wg sync.WaitGroup
	for c := range clients {
		conn, err := grpc.NewClient(proxy.Addr(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(RetryServiceConfig),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond}, MinConnectTimeout: time.Second}),
			grpc.WithChainUnaryInterceptor(UnaryClientInterceptor(ClientRetries(100, 300*time.Millisecond))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		client := testpb.NewPaymentsClient(conn)
		wg.Go(func() {
			for i := range calls {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				var header metadata.MD
				_, err := client.CreatePayment(ctx, create(fmt.Sprintf("c%d-%d", c, i), "card", 1), grpc.Header(&header))
				cancel()
				if len(header.Get(ReplayedMetadata)) > 0 {
					replays.Add(1)
				}
				if err != nil {
					errs <- fmt.Errorf("client %d call %d: %w", c, i, err)
				}
				done.Add(1)
			}
		})
	}
	// Once a third of the calls are done: lose a reply after its commit,
	// then kill the server and start it again.
	for done.Load() < clients*calls/3 {
		time.Sleep(10 * time.Millisecond)
	}
	proxy.Arm(faultproxy.CutAfterNext)
	mu.Lock()
	_ = server.Process.Kill()
	_ = server.Wait()
	mu.Unlock()
	startServer()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var refs, rows, keys, twice int
	for q, n := range map[string]*int{
		`SELECT COUNT(DISTINCT ref) FROM charges`:                                              &refs,
		`SELECT COUNT(*) FROM charges`:                                                         &rows,
		`SELECT COUNT(*) FROM idempotency_keys`:                                                &keys,
		`SELECT COUNT(*) FROM (SELECT ref FROM charges GROUP BY ref HAVING COUNT(*) > 1) AS d`: &twice,
	} {
		if err := db.Get(n, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d calls (%d answered by a replay): %d charges, %d keys; proxy faults %+v", clients*calls, replays.Load(), rows, keys, proxy.Stats())
	if replays.Load() == 0 {
		t.Error("no call was answered by a replay: the lost replies were not retried with their key")
	}
	if refs != clients*calls || rows != clients*calls || keys != clients*calls || twice != 0 {
		t.Fatalf("%d calls left %d charges of %d refs (%d charged twice) and %d keys; want each call's charge exactly once", clients*calls, rows, refs, twice, keys)
	}
}
