package grpcadapter

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/exactlyonce/idempotency"
)

// ErrorDomain is the domain of the ErrorInfo detail that every status of
// the interceptor's own carries; its Reason is one of the Reason constants.
const ErrorDomain = "github.com/exactlyonce/idempotency"

// The reasons of the interceptor's statuses (ErrorInfo.Reason), one per
// row of StatusFor's table.
const (
	ReasonKeyInvalid        = "IDEMPOTENCY_KEY_INVALID"        // InvalidArgument
	ReasonKeyMissing        = "IDEMPOTENCY_KEY_MISSING"        // InvalidArgument
	ReasonKeyReused         = "IDEMPOTENCY_KEY_REUSED"         // FailedPrecondition
	ReasonInProgress        = "IDEMPOTENCY_IN_PROGRESS"        // Unavailable, with RetryInfo
	ReasonOutcomeUnknown    = "IDEMPOTENCY_OUTCOME_UNKNOWN"    // Unavailable
	ReasonStoreFailed       = "IDEMPOTENCY_STORE_FAILED"       // Unavailable
	ReasonTransactionEnded  = "IDEMPOTENCY_TRANSACTION_ENDED"  // Internal
	ReasonScopeInvalid      = "IDEMPOTENCY_SCOPE_INVALID"      // Internal
	ReasonFingerprintFailed = "IDEMPOTENCY_FINGERPRINT_FAILED" // Internal
	ReasonReplyNotStorable  = "IDEMPOTENCY_REPLY_NOT_STORABLE" // Internal
	ReasonFinalFailure      = "IDEMPOTENCY_FINAL_FAILURE"      // FailedPrecondition (idempotency.Final without a status)
)

// errNoKey is a handled call without a key, under WithKeyRequired.
var errNoKey = errors.New("grpcadapter: no idempotency key: send the idempotency-key metadata")

// errReply is a handler's reply that cannot be stored.
var errReply = errors.New("grpcadapter: the handler's reply cannot be stored")

// StatusFor is the status the interceptors answer an error of the
// library's with. It is the one table of the adapter (Connect's uses the
// same codes):
//
//	error                                     code                reason                retry?
//	ErrInvalidKey, two different keys         InvalidArgument     KEY_INVALID           no: fix the key
//	no key, under WithKeyRequired             InvalidArgument     KEY_MISSING           no: send a key
//	ErrParamsMismatch                         FailedPrecondition  KEY_REUSED            no: new key for a new request
//	ErrInProgress                             Unavailable         IN_PROGRESS           yes, same key, after RetryInfo's delay
//	ErrOutcomeUnknown                         Unavailable         OUTCOME_UNKNOWN       yes, same key: replays or runs
//	any other failure of the store            Unavailable         STORE_FAILED          yes, same key: nothing was stored
//	ErrTransactionEnded                       Internal            TRANSACTION_ENDED     no: writes may have committed without the key
//	ErrInvalidScope, WithScope's ""           Internal            SCOPE_INVALID         no: the service must be fixed
//	ErrBadParams                              Internal            FINGERPRINT_FAILED    no
//	a reply that is not a storable message    Internal            REPLY_NOT_STORABLE    no
//	idempotency.Final(err) without a status   FailedPrecondition  FINAL_FAILURE         no: stored and replayed
//	context.Canceled, DeadlineExceeded        Canceled, DeadlineExceeded              yes, same key
//
// Unavailable is the one code that AIP-194 lets clients retry on their
// own (RetryServiceConfig does), and every Unavailable here is safe to
// retry with the same key. The handler's own errors are not in the table:
// they reach the client as the handler returned them.
func StatusFor(err error) *status.Status {
	return statusFor(err, time.Second)
}

func statusFor(err error, retryAfter time.Duration) *status.Status {
	var final *idempotency.FinalError
	switch {
	case err == nil:
		return status.New(codes.OK, "")
	case errors.Is(err, errNoKey):
		return withInfo(codes.InvalidArgument, ReasonKeyMissing, "this method needs an idempotency key: send the idempotency-key metadata, the same on every retry")
	case errors.Is(err, idempotency.ErrTransactionEnded):
		return withInfo(codes.Internal, ReasonTransactionEnded, "the call's transaction ended before its idempotency key was saved (the handler committed or rolled it back itself, or ignored a database error); its writes may have taken effect without the key: do not retry automatically")
	case errors.Is(err, idempotency.ErrParamsMismatch):
		return withInfo(codes.FailedPrecondition, ReasonKeyReused, "this idempotency key was already used with another request; send a new key for a new request, or the original request unchanged")
	case errors.Is(err, idempotency.ErrInProgress), errors.Is(err, idempotency.ErrFlowTakenOver):
		st := withInfo(codes.Unavailable, ReasonInProgress, "a call with this idempotency key is still in progress; retry with the same key after the delay to get its result")
		if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)}); err == nil {
			st = d
		}
		return st
	case errors.Is(err, idempotency.ErrInvalidScope):
		return withInfo(codes.Internal, ReasonScopeInvalid, "the service could not tell whose idempotency key this is (its scope was empty or too long); nothing was done")
	case errors.Is(err, idempotency.ErrInvalidKey):
		return withInfo(codes.InvalidArgument, ReasonKeyInvalid, "invalid idempotency key: want 1 to 255 printable ASCII characters ("+err.Error()+"); nothing was done")
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		return withInfo(codes.Unavailable, ReasonOutcomeUnknown, "the database connection failed during COMMIT, so whether the call took effect is unknown; retry with the same idempotency key to get its result, or run it if it did not commit")
	case errors.Is(err, idempotency.ErrBadParams):
		return withInfo(codes.Internal, ReasonFingerprintFailed, "the request cannot be fingerprinted; nothing was done")
	case errors.Is(err, errReply), errors.Is(err, proto.Error):
		return withInfo(codes.Internal, ReasonReplyNotStorable, "the handler's reply cannot be stored for replays ("+err.Error()+"), so the call was rolled back; retrying fails the same way until the service is fixed")
	case errors.As(err, &final):
		return finalStatus(final)
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "the call's deadline ran out before it finished; it was rolled back and nothing was stored")
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "the call was canceled before it finished; it was rolled back and nothing was stored")
	}
	return withInfo(codes.Unavailable, ReasonStoreFailed, "the call could not be completed and was rolled back; nothing was stored; retry with the same idempotency key")
}

func withInfo(c codes.Code, reason, msg string) *status.Status {
	st := status.New(c, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		return d
	}
	return st
}

// finalStatus is the status of a stored failure: the one in its payload
// (the handler's status with its details), else the one it carried when
// it was made, else FailedPrecondition with its message and code.
func finalStatus(f *idempotency.FinalError) *status.Status {
	if len(f.Payload) > 0 {
		p := new(spb.Status)
		if err := proto.Unmarshal(f.Payload, p); err == nil {
			return status.FromProto(p)
		}
	}
	if st, ok := status.FromError(f.Err); ok && st.Code() != codes.Unknown {
		return st
	}
	st := status.New(codes.FailedPrecondition, f.Error())
	info := &errdetails.ErrorInfo{Reason: ReasonFinalFailure, Domain: ErrorDomain}
	if f.Code != "" {
		info.Metadata = map[string]string{"code": f.Code}
	}
	if d, err := st.WithDetails(info); err == nil {
		return d
	}
	return st
}
