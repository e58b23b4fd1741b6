package connectadapter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

type clientConfig struct {
	procedures func(connect.Spec) bool
	requestKey func(proto.Message) string
	attempts   int
	maxBackoff time.Duration
}

// ClientOption configures NewClientInterceptor.
type ClientOption func(*clientConfig) error

// ClientProcedures sets the procedures whose calls get a key; the default
// is DefaultProcedures.
func ClientProcedures(keyed func(connect.Spec) bool) ClientOption {
	return func(c *clientConfig) error {
		if keyed == nil {
			return errors.New("connectadapter: ClientProcedures(nil): want a function")
		}
		c.procedures = keyed
		return nil
	}
}

// ClientRequestKey names where a request carries its own key (AIP-155's
// request_id): a call whose request has one is sent without the header,
// and the server's WithRequestKey reads it.
func ClientRequestKey(key func(proto.Message) string) ClientOption {
	return func(c *clientConfig) error {
		if key == nil {
			return errors.New("connectadapter: ClientRequestKey(nil): want a function, such as RequestField(\"request_id\")")
		}
		c.requestKey = key
		return nil
	}
}

// ClientRetries makes the interceptor try a call up to attempts times in
// all, with the same key, while it fails with Unavailable (which every
// retryable answer of the server interceptor is), waiting between
// attempts with jittered exponential backoff from 100ms up to maxBackoff,
// or what the error's RetryInfo says, until the call's context ends.
// connect-go does not retry by itself. The default is 4 attempts, up to
// 2 seconds apart.
func ClientRetries(attempts int, maxBackoff time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if attempts < 1 || attempts > 100 {
			return fmt.Errorf("connectadapter: ClientRetries(%d, %v): want 1 to 100 attempts", attempts, maxBackoff)
		}
		if maxBackoff < time.Millisecond {
			return fmt.Errorf("connectadapter: ClientRetries(%d, %v): want a backoff of at least 1ms", attempts, maxBackoff)
		}
		c.attempts, c.maxBackoff = attempts, maxBackoff
		return nil
	}
}

// NewClientInterceptor returns a client interceptor
// (connect.WithInterceptors on a client) that gives each call of a keyed
// procedure a fresh Idempotency-Key, unless it has one already (set
// req.Header() to choose it) or its request carries its own
// (ClientRequestKey), and retries it with that key (ClientRetries). The
// key is made once per call, for every protocol, and set on the request's
// header: sending the same *connect.Request again (a retry of your own)
// sends the same key. It panics if an option is invalid.
func NewClientInterceptor(opts ...ClientOption) connect.Interceptor {
	c := &clientConfig{procedures: DefaultProcedures, attempts: 4, maxBackoff: 2 * time.Second}
	rpckey.Apply(c, opts)
	return &clientInterceptor{c}
}

type clientInterceptor struct{ c *clientConfig }

func (ci *clientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		c := ci.c
		if !req.Spec().IsClient || !c.procedures(req.Spec()) {
			return next(ctx, req)
		}
		m, isProto := req.Any().(proto.Message)
		ownKey := isProto && c.requestKey != nil && c.requestKey(m) != ""
		if req.Header().Get(KeyHeader) == "" && !ownKey {
			req.Header().Set(KeyHeader, NewKey())
		}
		var resp connect.AnyResponse
		err := rpckey.Retry(ctx, c.attempts,
			func() (err error) { resp, err = next(ctx, req); return err },
			func(err error) bool { return connect.CodeOf(err) == connect.CodeUnavailable },
			c.wait)
		return resp, err
	}
}

func (ci *clientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (ci *clientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// wait is the pause before the attempt after attempt: the server's
// RetryInfo if it sent one, else jittered exponential backoff.
func (c *clientConfig) wait(err error, attempt int) time.Duration {
	var ce *connect.Error
	if errors.As(err, &ce) {
		for _, d := range ce.Details() {
			if v, derr := d.Value(); derr == nil {
				if ri, ok := v.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
					return min(ri.GetRetryDelay().AsDuration(), c.maxBackoff)
				}
			}
		}
	}
	return rpckey.Backoff(attempt, c.maxBackoff)
}

// NewKey returns a fresh random key: a UUIDv7 (RFC 9562), whose
// time-ordered prefix keeps the key table's index compact.
func NewKey() string { return rpckey.NewKey() }
