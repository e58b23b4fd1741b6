// Package rpckey holds what the gRPC and Connect adapters do alike with a
// call's key and that needs neither framework: reading the key of a call,
// a request's own key field, a fresh key, the client's retries, and
// applying options. It is the adapters' plumbing, exported only because
// Go's internal rule would keep it from them; use the adapters' own
// functions (RequestField, NewKey) instead.
package rpckey

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/internal/uuid"
	"github.com/exactlyonce/idempotency/protocodec"
)

// CallKey is a call's key, from the values of its key header (metadata)
// or from its request (fromRequest, if not nil); protocodec.ErrNoKey when
// it has none. name names the header in errors ("idempotency-key
// metadata"), plural its values ("idempotency-key values").
func CallKey(values []string, req proto.Message, fromRequest func(proto.Message) string, name, plural string) (string, error) {
	if len(values) > 1 {
		return "", fmt.Errorf("%w: %d %s; send one", idempotency.ErrInvalidKey, len(values), plural)
	}
	var fromHeader, fromReq string
	if len(values) == 1 {
		if fromHeader = values[0]; fromHeader == "" {
			return "", fmt.Errorf("%w: the %s is empty", idempotency.ErrInvalidKey, name)
		}
	}
	if fromRequest != nil {
		fromReq = fromRequest(req)
	}
	key := fromHeader
	switch {
	case fromHeader != "" && fromReq != "" && fromHeader != fromReq:
		return "", fmt.Errorf("%w: the %s and the request's key differ; send one key, or the same in both", idempotency.ErrInvalidKey, name)
	case key == "":
		key = fromReq
	}
	if key == "" {
		return "", protocodec.ErrNoKey
	}
	if err := idempotency.ValidateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// RequestField returns a function that reads the string field named name
// (AIP-155's "request_id") of any request that has one, and "" of one
// that has not.
func RequestField(name string) func(req proto.Message) string {
	n := protoreflect.Name(name)
	return func(req proto.Message) string {
		m := req.ProtoReflect()
		f := m.Descriptor().Fields().ByName(n)
		if f == nil || f.Kind() != protoreflect.StringKind || f.IsList() || f.IsMap() {
			return ""
		}
		return m.Get(f).String()
	}
}

// NewKey returns a fresh random key: a UUIDv7 (RFC 9562), whose
// time-ordered prefix keeps the key table's index compact.
func NewKey() string {
	var u [16]byte
	binary.BigEndian.PutUint64(u[:8], uint64(time.Now().UnixMilli())<<16)
	if _, err := crand.Read(u[6:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return uuid.Format(7, u)
}

// Apply applies opts to c in order, skipping nil ones, and panics with
// the error of a bad one, so that the mistake shows at start-up.
func Apply[C any, O ~func(*C) error](c *C, opts []O) {
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(c); err != nil {
			panic(err)
		}
	}
}

// Retry calls try up to attempts times in all while it fails with an
// error that retryable accepts, waiting wait(err, attempt) after each
// failed attempt, and stops when ctx ends; it returns the last attempt's
// error.
func Retry(ctx context.Context, attempts int, try func() error, retryable func(error) bool, wait func(err error, attempt int) time.Duration) error {
	for attempt := 1; ; attempt++ {
		err := try()
		if err == nil || attempt >= attempts || !retryable(err) {
			return err
		}
		t := time.NewTimer(wait(err, attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// Backoff is the client's pause before the attempt after attempt when the
// server suggested none: jittered exponential backoff from 100ms up to
// maxBackoff.
func Backoff(attempt int, maxBackoff time.Duration) time.Duration {
	ceiling := min(100*time.Millisecond<<min(attempt-1, 10), maxBackoff)
	return ceiling/2 + rand.N(ceiling/2+1)
}
