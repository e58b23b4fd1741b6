package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/exactlyonce/idempotency/internal/testdb/scratch"
	"github.com/exactlyonce/idempotency/migrations"
)

// ErrNoServer says a private server cannot be started here (binaries or
// the system user are missing).
var ErrNoServer = errors.New("chaos: cannot start a private database server")

// Server is a private database server the run may restart: never the
// shared one other tests use.
type Server struct {
	Kind string // "postgres" or "mysql"
	DSN  string // of the server's default database, for the "pgx" or "mysql" driver
	dir  string
	port int

	mu                   sync.Mutex
	proc                 *exec.Cmd // mariadbd
	start, restart, stop func() error
}

// Postgres binaries and MariaDB binaries the private servers use.
var (
	PGBin       = "/usr/lib/postgresql/15/bin"
	MariaDBD    = "/usr/sbin/mariadbd"
	MariaDBInst = "/usr/bin/mariadb-install-db"
)

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ownedDir makes a temporary directory owned by the system user name, which
// the server runs as (it refuses to run as root).
func ownedDir(name string) (string, *user.User, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return "", nil, fmt.Errorf("%w: no %s user: %v", ErrNoServer, name, err)
	}
	dir, err := os.MkdirTemp("", "idempotency-chaos-"+name+"-")
	if err != nil {
		return "", nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(dir, uid, gid); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, u, nil
}

// serverDir checks that the server's binaries are there, and returns a
// directory for its files, owned by the system user it runs as, and a free
// port.
func serverDir(account string, bins ...string) (dir string, port int, err error) {
	for _, bin := range bins {
		if _, err := os.Stat(bin); err != nil {
			return "", 0, fmt.Errorf("%w: %v", ErrNoServer, err)
		}
	}
	if dir, _, err = ownedDir(account); err != nil {
		return "", 0, err
	}
	if port, err = freePort(); err != nil {
		os.RemoveAll(dir)
		return "", 0, err
	}
	return dir, port, nil
}

func asUser(name string, args ...string) *exec.Cmd {
	if os.Geteuid() == 0 {
		return exec.Command("runuser", append([]string{"-u", name, "--"}, args...)...)
	}
	return exec.Command(args[0], args[1:]...)
}

func runOut(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", cmd.String(), err, out)
	}
	return nil
}

// StartPostgres starts a private PostgreSQL server on a free port.
func StartPostgres(ctx context.Context) (*Server, error) {
	initdb := filepath.Join(PGBin, "initdb")
	dir, port, err := serverDir("postgres", initdb)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := runOut(asUser("postgres", initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// fsync=off is safe here: the fault is a killed server process, and
	// the OS keeps what it wrote. It is not an OS crash test.
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 -c shared_buffers=32MB", port, dir)
	pgctl := filepath.Join(PGBin, "pg_ctl")
	s := &Server{Kind: "postgres", dir: dir, port: port,
		DSN: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)}
	if err := runOut(asUser("postgres", pgctl, "-D", data, "-o", opts, "-l", filepath.Join(dir, "log"), "-w", "start")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s.restart = func() error {
		return runOut(asUser("postgres", pgctl, "-D", data, "-m", "immediate", "-w", "-l", filepath.Join(dir, "log"), "restart"))
	}
	s.stop = func() error {
		err := runOut(asUser("postgres", pgctl, "-D", data, "-m", "immediate", "-w", "stop"))
		return errors.Join(err, os.RemoveAll(dir))
	}
	return s, nil
}

// StartMariaDB starts a private MariaDB server on a free port.
func StartMariaDB(ctx context.Context) (*Server, error) {
	dir, port, err := serverDir("mysql", MariaDBD, MariaDBInst)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := runOut(exec.Command(MariaDBInst, "--no-defaults", "--datadir="+data, "--user=mysql",
		"--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Kind: "mysql", dir: dir, port: port,
		DSN: fmt.Sprintf("root@tcp(127.0.0.1:%d)/", port)}
	s.start = func() error {
		// innodb_flush_log_at_trx_commit=2 writes the log at each commit
		// and leaves flushing to the OS: a killed server loses nothing.
		cmd := exec.Command(MariaDBD, "--no-defaults", "--datadir="+data, "--user=mysql",
			"--port="+strconv.Itoa(port), "--bind-address=127.0.0.1", "--socket="+filepath.Join(dir, "sock"),
			"--pid-file="+filepath.Join(dir, "pid"), "--log-error="+filepath.Join(dir, "err.log"),
			"--skip-grant-tables", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
			"--innodb-flush-log-at-trx-commit=2", "--max-connections=300", "--skip-name-resolve")
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() { _ = cmd.Wait() }()
		s.mu.Lock()
		s.proc = cmd
		s.mu.Unlock()
		return waitTCP(ctx, port)
	}
	s.restart = func() error {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil {
			_ = p.Process.Kill()
			for range 100 { // until the port is free again
				if !portOpen(port) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		return s.start()
	}
	s.stop = func() error {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil {
			_ = p.Process.Kill()
		}
		time.Sleep(200 * time.Millisecond)
		return os.RemoveAll(dir)
	}
	if err := s.start(); err != nil {
		_ = s.stop()
		return nil, err
	}
	admin, err := sqlx.Open("mysql", fmt.Sprintf("root@tcp(127.0.0.1:%d)/", port))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	if err := waitReady(ctx, admin); err != nil {
		return nil, err
	}
	return s, nil
}

func portOpen(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 100*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func waitTCP(ctx context.Context, port int) error {
	for !portOpen(port) {
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return fmt.Errorf("server on port %d did not start: %w", port, err)
		}
	}
	return nil
}

// NewDatabase creates a scratch database on the server whose name starts
// with prefix, prepares it (Prepare) and returns its DSN.
func (s *Server) NewDatabase(ctx context.Context, prefix string) (string, error) {
	driver := "pgx"
	if s.Kind == "mysql" {
		driver = "mysql"
	}
	admin, err := sqlx.Open(driver, s.DSN)
	if err != nil {
		return "", err
	}
	defer admin.Close()
	if err := waitReady(ctx, admin); err != nil {
		return "", err
	}
	sc, err := scratch.New(ctx, s.Kind, s.DSN, prefix)
	if err != nil {
		return "", err
	}
	db, err := sqlx.Open(driver, sc.DSN)
	if err != nil {
		return "", err
	}
	defer db.Close()
	return sc.DSN, Prepare(ctx, db)
}

// Restart kills the server (immediate shutdown: no checkpoint, crash
// recovery at start) and starts it again.
func (s *Server) Restart() error {
	return s.restart()
}

// Stop stops the server and removes its files.
func (s *Server) Stop() error { return s.stop() }

// Prepare migrates db and creates the business table.
func Prepare(ctx context.Context, db *sqlx.DB) error {
	if err := migrations.Up(ctx, db); err != nil {
		return err
	}
	if err := CreateEffects(ctx, db); err != nil {
		return err
	}
	return CreateFlowTables(ctx, db)
}
