package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

type config struct {
	methods    func(fullMethod string) bool
	requestKey func(req proto.Message) string
	requireKey bool
	scope      func(ctx context.Context) string
	stored     func(codes.Code) bool
	retryAfter time.Duration
	logger     *slog.Logger
}

// Option configures UnaryServerInterceptor. An option checks its value;
// the interceptor's constructor panics with the error of a bad one, so the
// mistake shows at start-up.
type Option func(*config) error

func newConfig(opts []Option) *config {
	c := &config{
		methods:    DefaultMethods,
		stored:     DefaultStoredCode,
		retryAfter: time.Second,
		logger:     slog.New(slog.DiscardHandler),
	}
	rpckey.Apply(c, opts)
	return c
}

// WithMethods sets the methods the interceptor handles, by full name
// ("/payments.v1.Payments/CreatePayment"); the others pass through
// untouched. The default is DefaultMethods.
func WithMethods(fullMethods ...string) Option {
	return func(c *config) error {
		if len(fullMethods) == 0 {
			return errors.New("grpcadapter: WithMethods(): name at least one method, as /package.Service/Method")
		}
		set := make(map[string]bool, len(fullMethods))
		for _, m := range fullMethods {
			if _, _, ok := splitMethod(m); !ok {
				return fmt.Errorf("grpcadapter: WithMethods(%q): want a full method name, as /package.Service/Method", m)
			}
			set[m] = true
		}
		c.methods = func(m string) bool { return set[m] }
		return nil
	}
}

// WithMethodFilter sets the methods the interceptor handles by a function
// of the full method name, for rules WithMethods cannot list.
func WithMethodFilter(handles func(fullMethod string) bool) Option {
	return func(c *config) error {
		if handles == nil {
			return errors.New("grpcadapter: WithMethodFilter(nil): want a function")
		}
		c.methods = handles
		return nil
	}
}

// WithRequestKey makes the key also come from the request itself, for APIs
// that carry it in a field (Google AIP-155's request_id; see RequestField).
// A call whose metadata has no idempotency-key uses the field's; one that
// has both must carry the same key in both, or it is refused with
// InvalidArgument. An empty string means the request has no key.
func WithRequestKey(key func(req proto.Message) string) Option {
	return func(c *config) error {
		if key == nil {
			return errors.New("grpcadapter: WithRequestKey(nil): want a function, such as RequestField(\"request_id\")")
		}
		c.requestKey = key
		return nil
	}
}

// RequestField returns a WithRequestKey function that reads the string
// field named name (AIP-155's "request_id") of any request that has one.
func RequestField(name string) func(req proto.Message) string { return rpckey.RequestField(name) }

// WithKeyRequired refuses a call of a handled method that has no key with
// InvalidArgument. By default such a call runs in a transaction of its
// own, with nothing stored, so that a handler is the same code either way.
func WithKeyRequired() Option {
	return func(c *config) error {
		c.requireKey = true
		return nil
	}
}

// WithScope keeps keys apart by a function of the call's context: the
// authenticated account, usually. A key in one scope never replays
// another's reply. A function that returns "" could not tell whose call it
// is: the call is refused with Internal, never run in a shared scope.
func WithScope(scope func(ctx context.Context) string) Option {
	return func(c *config) error {
		if scope == nil {
			return errors.New("grpcadapter: WithScope(nil): want a function of the call's context")
		}
		c.scope = scope
		return nil
	}
}

// WithStoredCodes sets which status codes of the handler's errors are
// stored with the key and replayed (after the handler's writes were rolled
// back); the others roll back and store nothing, so a retry runs again.
// The default is DefaultStoredCode. A handler error that wraps an
// idempotency.FinalError is stored whatever its code.
func WithStoredCodes(stored func(codes.Code) bool) Option {
	return func(c *config) error {
		if stored == nil {
			return errors.New("grpcadapter: WithStoredCodes(nil): want a function, such as DefaultStoredCode")
		}
		c.stored = stored
		return nil
	}
}

// DefaultStoredCode stores the failures a retry of the same request would
// meet again: NotFound, AlreadyExists, PermissionDenied, FailedPrecondition,
// OutOfRange, Unimplemented. It does not store InvalidArgument and
// Unauthenticated (a corrected retry, a refreshed token), ResourceExhausted
// and Aborted (retry later), nor any code of a failure of the server
// (Unavailable, Internal, Unknown, DataLoss, DeadlineExceeded, Canceled).
func DefaultStoredCode(c codes.Code) bool {
	switch c {
	case codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented:
		return true
	}
	return false
}

// WithRetryAfter sets the delay that an in-progress answer suggests (in
// its RetryInfo detail and grpc-retry-pushback-ms trailer); the default
// is one second.
func WithRetryAfter(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Millisecond {
			return fmt.Errorf("grpcadapter: WithRetryAfter(%v): want at least 1ms", d)
		}
		c.retryAfter = d
		return nil
	}
}

// WithLogger logs the failures that mean the service is at fault
// (transaction ended, scope or fingerprint failed, store failures). The
// default is silent.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("grpcadapter: WithLogger(nil): want a logger")
		}
		c.logger = l
		return nil
	}
}
