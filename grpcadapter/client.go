package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency/protocodec/rpckey"
)

// RetryServiceConfig is the service config we recommend for a client of
// an API behind UnaryServerInterceptor, with UnaryClientInterceptor:
// grpc-go retries a call that failed with UNAVAILABLE (AIP-194's one
// retryable code, which is every answer of the interceptor that a retry
// with the same key resolves) up to five times in all, with backoff; a
// pushback the server sends (grpc-retry-pushback-ms, for a call in
// progress) sets the next wait. The interceptor runs once around all of
// those attempts, so they carry one key. Pass it with
// grpc.WithDefaultServiceConfig(grpcadapter.RetryServiceConfig).
const RetryServiceConfig = `{
  "methodConfig": [{
    "name": [{}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

type clientConfig struct {
	methods    func(fullMethod string) bool
	requestKey func(proto.Message) string
	attempts   int
	maxBackoff time.Duration
}

// ClientOption configures UnaryClientInterceptor.
type ClientOption func(*clientConfig) error

// ClientMethods sets the methods whose calls get a key, by a function of
// the full method name; the default is DefaultMethods.
func ClientMethods(keyed func(fullMethod string) bool) ClientOption {
	return func(c *clientConfig) error {
		if keyed == nil {
			return errors.New("grpcadapter: ClientMethods(nil): want a function")
		}
		c.methods = keyed
		return nil
	}
}

// ClientRequestKey names where a request carries its own key (AIP-155's
// request_id; see RequestField): a call whose request has one is sent
// without the metadata key, and the server's WithRequestKey reads it.
func ClientRequestKey(key func(proto.Message) string) ClientOption {
	return func(c *clientConfig) error {
		if key == nil {
			return errors.New("grpcadapter: ClientRequestKey(nil): want a function, such as RequestField(\"request_id\")")
		}
		c.requestKey = key
		return nil
	}
}

// ClientRetries makes the interceptor itself try a call up to attempts
// times in all, with the same key, while it fails with Unavailable: for
// clients that cannot use a service config (RetryServiceConfig is the
// better way). It waits between attempts with jittered exponential
// backoff from 100ms up to maxBackoff, or what the status's RetryInfo
// says, and stops when the call's context ends. The default is one
// attempt: no retries of its own.
func ClientRetries(attempts int, maxBackoff time.Duration) ClientOption {
	return func(c *clientConfig) error {
		if attempts < 1 || attempts > 100 {
			return fmt.Errorf("grpcadapter: ClientRetries(%d, %v): want 1 to 100 attempts", attempts, maxBackoff)
		}
		if maxBackoff < time.Millisecond {
			return fmt.Errorf("grpcadapter: ClientRetries(%d, %v): want a backoff of at least 1ms", attempts, maxBackoff)
		}
		c.attempts, c.maxBackoff = attempts, maxBackoff
		return nil
	}
}

// UnaryClientInterceptor returns an interceptor that gives each call of
// a keyed method (DefaultMethods, or ClientMethods) a fresh key in its
// idempotency-key metadata, unless the call already has one (set it with
// metadata.AppendToOutgoingContext to choose the key, as a service that
// retries a request from its own queue must), or its request carries its
// own (ClientRequestKey). The key is made once per call: grpc-go's
// retries (RetryServiceConfig) and the interceptor's own (ClientRetries)
// send the same one. It panics if an option is invalid.
func UnaryClientInterceptor(opts ...ClientOption) grpc.UnaryClientInterceptor {
	c := &clientConfig{methods: DefaultMethods, attempts: 1}
	rpckey.Apply(c, opts)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		if !c.methods(method) {
			return invoker(ctx, method, req, reply, cc, callOpts...)
		}
		if !hasKey(ctx, req, c.requestKey) {
			ctx = metadata.AppendToOutgoingContext(ctx, KeyMetadata, NewKey())
		}
		return rpckey.Retry(ctx, c.attempts,
			func() error { return invoker(ctx, method, req, reply, cc, callOpts...) },
			func(err error) bool { return status.Code(err) == codes.Unavailable },
			c.wait)
	}
}

// hasKey reports whether the call carries a key already.
func hasKey(ctx context.Context, req any, fromRequest func(proto.Message) string) bool {
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(KeyMetadata)) > 0 {
		return true
	}
	m, ok := req.(proto.Message)
	return ok && fromRequest != nil && fromRequest(m) != ""
}

// wait is the pause before the attempt after attempt: the server's
// RetryInfo if it sent one, else jittered exponential backoff.
func (c *clientConfig) wait(err error, attempt int) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
			return min(ri.GetRetryDelay().AsDuration(), c.maxBackoff)
		}
	}
	return rpckey.Backoff(attempt, c.maxBackoff)
}

// NewKey returns a fresh random key: a UUIDv7 (RFC 9562), whose
// time-ordered prefix keeps the key table's index compact.
func NewKey() string { return rpckey.NewKey() }
