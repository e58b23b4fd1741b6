package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

type config struct {
	procedures func(spec connect.Spec) bool
	requestKey func(req proto.Message) string
	requireKey bool
	scope      func(ctx context.Context, req connect.AnyRequest) string
	stored     func(connect.Code) bool
	retryAfter time.Duration
	logger     *slog.Logger
}

// Option configures NewInterceptor. An option checks its value; the
// constructor panics with the error of a bad one, so the mistake shows at
// start-up.
type Option func(*config) error

func newConfig(opts []Option) *config {
	c := &config{
		procedures: DefaultProcedures,
		stored:     DefaultStoredCode,
		retryAfter: time.Second,
		logger:     slog.New(slog.DiscardHandler),
	}
	rpckey.Apply(c, opts)
	return c
}

// DefaultProcedures is the default choice of procedures, for the server
// and the client interceptors: every unary procedure whose
// IdempotencyLevel is not NoSideEffects (a read needs no key).
func DefaultProcedures(spec connect.Spec) bool {
	return spec.StreamType == connect.StreamTypeUnary && spec.IdempotencyLevel != connect.IdempotencyNoSideEffects
}

// WithProcedures sets the procedures the interceptor handles, by name
// ("/payments.v1.Payments/CreatePayment"); the others pass through
// untouched. The default is DefaultProcedures.
func WithProcedures(procedures ...string) Option {
	return func(c *config) error {
		if len(procedures) == 0 {
			return errors.New("connectadapter: WithProcedures(): name at least one procedure, as /package.Service/Method")
		}
		set := make(map[string]bool, len(procedures))
		for _, p := range procedures {
			if !strings.HasPrefix(p, "/") || strings.Count(p, "/") != 2 || strings.HasSuffix(p, "/") {
				return fmt.Errorf("connectadapter: WithProcedures(%q): want a procedure name, as /package.Service/Method", p)
			}
			set[p] = true
		}
		c.procedures = func(spec connect.Spec) bool { return set[spec.Procedure] }
		return nil
	}
}

// WithRequestKey makes the key also come from the request itself (AIP-155's
// request_id; see RequestField). A call without an Idempotency-Key header
// uses the field's; one with both must carry the same key in both, or it is
// refused with InvalidArgument. An empty string means no key.
func WithRequestKey(key func(req proto.Message) string) Option {
	return func(c *config) error {
		if key == nil {
			return errors.New("connectadapter: WithRequestKey(nil): want a function, such as RequestField(\"request_id\")")
		}
		c.requestKey = key
		return nil
	}
}

// RequestField returns a WithRequestKey function that reads the string
// field named name (AIP-155's "request_id") of any request that has one.
func RequestField(name string) func(req proto.Message) string { return rpckey.RequestField(name) }

// WithKeyRequired refuses a call of a handled procedure that has no key
// with InvalidArgument. By default such a call runs in a transaction of its
// own, with nothing stored.
func WithKeyRequired() Option {
	return func(c *config) error {
		c.requireKey = true
		return nil
	}
}

// WithScope keeps keys apart by a function of the call (the authenticated
// account, usually). A function that returns "" is refused with Internal,
// never run in a shared scope.
func WithScope(scope func(ctx context.Context, req connect.AnyRequest) string) Option {
	return func(c *config) error {
		if scope == nil {
			return errors.New("connectadapter: WithScope(nil): want a function of the call")
		}
		c.scope = scope
		return nil
	}
}

// WithStoredCodes sets which codes of the handler's errors are stored and
// replayed (after its writes were rolled back); the others roll back and
// store nothing. The default is DefaultStoredCode. An error that wraps an
// idempotency.FinalError is stored whatever its code.
func WithStoredCodes(stored func(connect.Code) bool) Option {
	return func(c *config) error {
		if stored == nil {
			return errors.New("connectadapter: WithStoredCodes(nil): want a function, such as DefaultStoredCode")
		}
		c.stored = stored
		return nil
	}
}

// DefaultStoredCode stores the failures a retry of the same request would
// meet again: NotFound, AlreadyExists, PermissionDenied,
// FailedPrecondition, OutOfRange, Unimplemented; as grpcadapter's does.
func DefaultStoredCode(c connect.Code) bool {
	switch c {
	case connect.CodeNotFound, connect.CodeAlreadyExists, connect.CodePermissionDenied,
		connect.CodeFailedPrecondition, connect.CodeOutOfRange, connect.CodeUnimplemented:
		return true
	}
	return false
}

// WithRetryAfter sets the delay an in-progress answer suggests (RetryInfo,
// and a Retry-After header rounded up to seconds); the default is a second.
func WithRetryAfter(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("connectadapter: WithRetryAfter(%v): want at least 1ms", d)
		}
		c.retryAfter = d
		return nil
	}
}

// WithLogger logs the failures that mean the service is at fault. The
// default is silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("connectadapter: WithLogger(nil): want a logger")
		}
		c.logger = l
		return nil
	}
}
