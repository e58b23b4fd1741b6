package grpcadapter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/protocodec"
)

// TestStatusFor checks every row of StatusFor's table.
func TestStatusFor(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("idempotency: key %q: %w", "k", err) }
	for _, tc := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{wrap(idempotency.ErrInvalidKey), codes.InvalidArgument, protocodec.ReasonKeyInvalid},
		{protocodec.ErrNoKey, codes.InvalidArgument, protocodec.ReasonKeyMissing},
		{wrap(idempotency.ErrParamsMismatch), codes.FailedPrecondition, protocodec.ReasonKeyReused},
		{wrap(idempotency.ErrInProgress), codes.Unavailable, protocodec.ReasonInProgress},
		{wrap(idempotency.ErrOutcomeUnknown), codes.Unavailable, protocodec.ReasonOutcomeUnknown},
		{errors.New("idempotency: connection refused"), codes.Unavailable, protocodec.ReasonStoreFailed},
		{wrap(idempotency.ErrTransactionEnded), codes.Internal, protocodec.ReasonTransactionEnded},
		{wrap(idempotency.ErrInvalidScope), codes.Internal, protocodec.ReasonScopeInvalid},
		{wrap(idempotency.ErrBadParams), codes.Internal, protocodec.ReasonFingerprintFailed},
		{fmt.Errorf("%w: nil", protocodec.ErrReplyNotStorable), codes.Internal, protocodec.ReasonReplyNotStorable},
		{idempotency.FinalCode("card_declined", errors.New("declined")), codes.FailedPrecondition, protocodec.ReasonFinalFailure},
		{wrap(context.DeadlineExceeded), codes.DeadlineExceeded, ""},
		{wrap(context.Canceled), codes.Canceled, ""},
	} {
		st := StatusFor(tc.err)
		if st.Code() != tc.code || reasonOf(st.Err()) != tc.reason {
			t.Errorf("StatusFor(%v) = %v (reason %q); want %v %s", tc.err, st.Code(), reasonOf(st.Err()), tc.code, tc.reason)
		}
	}
	if StatusFor(nil).Code() != codes.OK {
		t.Error("StatusFor(nil) is not OK")
	}
	// A stored failure's payload is its status, details and all.
	want := status.New(codes.NotFound, "no such card").Proto()
	payload, _ := proto.Marshal(want)
	got := StatusFor(&idempotency.FinalError{Err: errors.New("x"), Payload: payload})
	if !proto.Equal(got.Proto(), want) {
		t.Errorf("a payload's status: %v; want %v", got.Proto(), want)
	}
}

// TestOptionsRefuseBadValues: each bad option panics at construction with
// a message that names it.
func TestOptionsRefuseBadValues(t *testing.T) {
	for _, tc := range []struct {
		opt  Option
		want string
	}{
		{WithMethods(), "WithMethods()"},
		{WithMethods("CreatePayment"), `WithMethods("CreatePayment")`},
		{WithMethodFilter(nil), "WithMethodFilter(nil)"},
		{WithRequestKey(nil), "WithRequestKey(nil)"},
		{WithScope(nil), "WithScope(nil)"},
		{WithStoredCodes(nil), "WithStoredCodes(nil)"},
		{WithRetryAfter(0), "WithRetryAfter(0s)"},
		{WithLogger(nil), "WithLogger(nil)"},
	} {
		got := func() (msg string) {
			defer func() { msg = fmt.Sprint(recover()) }()
			newConfig([]Option{tc.opt})
			return ""
		}()
		if !strings.HasPrefix(got, "grpcadapter: "+tc.want) {
			t.Errorf("got %q; want a panic naming %s", got, tc.want)
		}
	}
	for _, tc := range []struct {
		opt  ClientOption
		want string
	}{
		{ClientMethods(nil), "ClientMethods(nil)"},
		{ClientRequestKey(nil), "ClientRequestKey(nil)"},
		{ClientRetries(0, time.Second), "ClientRetries(0, 1s)"},
		{ClientRetries(3, 0), "ClientRetries(3, 0s)"},
	} {
		got := func() (msg string) {
			defer func() { msg = fmt.Sprint(recover()) }()
			UnaryClientInterceptor(tc.opt)
			return ""
		}()
		if !strings.HasPrefix(got, "grpcadapter: "+tc.want) {
			t.Errorf("got %q; want a panic naming %s", got, tc.want)
		}
	}
	if !DefaultMethods("/idempotency.grpctest.v1.Payments/CreatePayment") ||
		DefaultMethods("/idempotency.grpctest.v1.Payments/GetPayment") ||
		DefaultMethods("/idempotency.grpctest.v1.Payments/WatchPayments") ||
		!DefaultMethods("/unknown.Service/Method") {
		t.Error("DefaultMethods: want the write and unknown methods, not the read or the stream")
	}
}
