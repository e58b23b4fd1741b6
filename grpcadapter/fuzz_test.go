package grpcadapter

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/grpcadapter/internal/testpb"
	"github.com/exactlyonce/idempotency/protocodec"
)

// FuzzCallKey: whatever the metadata and the request_id field hold, the
// key is refused (ErrInvalidKey), absent (ErrNoKey), or valid and equal to
// what the client sent in one place or both.
func FuzzCallKey(f *testing.F) {
	f.Add("k-1", "", false)
	f.Add("", "req-1", false)
	f.Add("same", "same", false)
	f.Add("one", "two", true)
	f.Add("\x00bad", "", false)
	f.Fuzz(func(t *testing.T, fromMD, fromField string, twice bool) {
		ctx := context.Background()
		if fromMD != "" || twice {
			md := metadata.Pairs(KeyMetadata, fromMD)
			if twice {
				md.Append(KeyMetadata, fromMD)
			}
			ctx = metadata.NewIncomingContext(ctx, md)
		}
		req := &testpb.CreatePaymentRequest{RequestId: fromField}
		key, err := callKey(ctx, req, RequestField("request_id"))
		switch {
		case errors.Is(err, protocodec.ErrNoKey):
			if fromMD != "" || fromField != "" || twice {
				t.Fatalf("no key found in %q, %q", fromMD, fromField)
			}
		case err != nil:
			if !errors.Is(err, idempotency.ErrInvalidKey) {
				t.Fatalf("an error that is not ErrInvalidKey: %v", err)
			}
		default:
			if idempotency.ValidateKey(key) != nil || (key != fromMD && key != fromField) || twice {
				t.Fatalf("key %q from %q, %q (twice %v)", key, fromMD, fromField, twice)
			}
			if fromMD != "" && fromField != "" && fromMD != fromField {
				t.Fatalf("two different keys accepted: %q", key)
			}
		}
	})
}
