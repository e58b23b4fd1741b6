package protocodec

import (
	"context"
	"errors"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/exactlyonce/idempotency"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail that every
// status of the adapters' own carries; its reason is one of the Reason
// constants.
const ErrorDomain = "github.com/exactlyonce/idempotency"

// The reasons of the adapters' statuses (ErrorInfo.reason), one per row of
// Status's table.
const (
	ReasonKeyInvalid        = "IDEMPOTENCY_KEY_INVALID"        // INVALID_ARGUMENT
	ReasonKeyMissing        = "IDEMPOTENCY_KEY_MISSING"        // INVALID_ARGUMENT
	ReasonKeyReused         = "IDEMPOTENCY_KEY_REUSED"         // FAILED_PRECONDITION
	ReasonInProgress        = "IDEMPOTENCY_IN_PROGRESS"        // UNAVAILABLE, with RetryInfo
	ReasonOutcomeUnknown    = "IDEMPOTENCY_OUTCOME_UNKNOWN"    // UNAVAILABLE
	ReasonStoreFailed       = "IDEMPOTENCY_STORE_FAILED"       // UNAVAILABLE
	ReasonTransactionEnded  = "IDEMPOTENCY_TRANSACTION_ENDED"  // INTERNAL
	ReasonScopeInvalid      = "IDEMPOTENCY_SCOPE_INVALID"      // INTERNAL
	ReasonFingerprintFailed = "IDEMPOTENCY_FINGERPRINT_FAILED" // INTERNAL
	ReasonReplyNotStorable  = "IDEMPOTENCY_REPLY_NOT_STORABLE" // INTERNAL
	ReasonFinalFailure      = "IDEMPOTENCY_FINAL_FAILURE"      // FAILED_PRECONDITION
)

var (
	// ErrNoKey: a call of a method that requires a key came without one.
	ErrNoKey = errors.New("idempotency: no key: send an idempotency-key (metadata or header), the same on every retry")
	// ErrReplyNotStorable: the handler's reply is not a message the store
	// can keep.
	ErrReplyNotStorable = errors.New("idempotency: the handler's reply cannot be stored")
)

// The codes of the table, as google.rpc.Code numbers (gRPC's and
// Connect's codes are the same numbers).
const (
	codeCanceled           = 1
	codeInvalidArgument    = 3
	codeDeadlineExceeded   = 4
	codeFailedPrecondition = 9
	codeInternal           = 13
	codeUnavailable        = 14
)

// Status is the google.rpc.Status that the gRPC and Connect adapters answer
// an error of the library's with: the one table of both.
//
//	error                                     code                reason              retry?
//	ErrInvalidKey, two different keys         INVALID_ARGUMENT    KEY_INVALID         no: fix the key
//	ErrNoKey                                  INVALID_ARGUMENT    KEY_MISSING         no: send a key
//	ErrParamsMismatch                         FAILED_PRECONDITION KEY_REUSED          no: new key for a new request
//	ErrInProgress                             UNAVAILABLE         IN_PROGRESS         yes, same key, after RetryInfo's delay
//	ErrOutcomeUnknown                         UNAVAILABLE         OUTCOME_UNKNOWN     yes, same key: replays or runs
//	any other failure of the store            UNAVAILABLE         STORE_FAILED        yes, same key: nothing was stored
//	ErrTransactionEnded                       INTERNAL            TRANSACTION_ENDED   no: writes may have committed without the key
//	ErrInvalidScope                           INTERNAL            SCOPE_INVALID       no: the service must be fixed
//	ErrBadParams                              INTERNAL            FINGERPRINT_FAILED  no
//	ErrReplyNotStorable, a proto error        INTERNAL            REPLY_NOT_STORABLE  no
//	a FinalError                              its payload's status, else FAILED_PRECONDITION, FINAL_FAILURE
//	context.Canceled, DeadlineExceeded        CANCELLED, DEADLINE_EXCEEDED            yes, same key
//
// UNAVAILABLE is the one code that AIP-194 lets clients retry on their
// own, and every UNAVAILABLE here is safe to retry with the same key.
// retryAfter is the delay an in-progress status suggests.
func Status(err error, retryAfter time.Duration) *spb.Status {
	var final *idempotency.FinalError
	switch {
	case err == nil:
		return &spb.Status{}
	case errors.Is(err, ErrNoKey):
		return withInfo(codeInvalidArgument, ReasonKeyMissing, "this method needs an idempotency key: send the idempotency-key metadata, the same on every retry")
	case errors.Is(err, idempotency.ErrTransactionEnded):
		return withInfo(codeInternal, ReasonTransactionEnded, "the call's transaction ended before its idempotency key was saved (the handler committed or rolled it back itself, or ignored a database error); its writes may have taken effect without the key: do not retry automatically")
	case errors.Is(err, idempotency.ErrParamsMismatch):
		return withInfo(codeFailedPrecondition, ReasonKeyReused, "this idempotency key was already used with another request; send a new key for a new request, or the original request unchanged")
	case errors.Is(err, idempotency.ErrInProgress), errors.Is(err, idempotency.ErrFlowTakenOver):
		st := withInfo(codeUnavailable, ReasonInProgress, "a call with this idempotency key is still in progress; retry with the same key after the delay to get its result")
		if ri, err := anypb.New(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)}); err == nil {
			st.Details = append(st.Details, ri)
		}
		return st
	case errors.Is(err, idempotency.ErrInvalidScope):
		return withInfo(codeInternal, ReasonScopeInvalid, "the service could not tell whose idempotency key this is (its scope was empty or too long); nothing was done")
	case errors.Is(err, idempotency.ErrInvalidKey):
		return withInfo(codeInvalidArgument, ReasonKeyInvalid, "invalid idempotency key: want 1 to 255 printable ASCII characters ("+err.Error()+"); nothing was done")
	case errors.Is(err, idempotency.ErrOutcomeUnknown):
		return withInfo(codeUnavailable, ReasonOutcomeUnknown, "the database connection failed during COMMIT, so whether the call took effect is unknown; retry with the same idempotency key to get its result, or run it if it did not commit")
	case errors.Is(err, idempotency.ErrBadParams):
		return withInfo(codeInternal, ReasonFingerprintFailed, "the request cannot be fingerprinted; nothing was done")
	case errors.Is(err, ErrReplyNotStorable), errors.Is(err, proto.Error):
		return withInfo(codeInternal, ReasonReplyNotStorable, "the handler's reply cannot be stored for replays ("+err.Error()+"), so the call was rolled back; retrying fails the same way until the service is fixed")
	case errors.As(err, &final):
		return FinalStatus(final)
	case errors.Is(err, context.DeadlineExceeded):
		return &spb.Status{Code: codeDeadlineExceeded, Message: "the call's deadline ran out before it finished; it was rolled back and nothing was stored"}
	case errors.Is(err, context.Canceled):
		return &spb.Status{Code: codeCanceled, Message: "the call was canceled before it finished; it was rolled back and nothing was stored"}
	}
	return withInfo(codeUnavailable, ReasonStoreFailed, "the call could not be completed and was rolled back; nothing was stored; retry with the same idempotency key")
}

func withInfo(code int32, reason, msg string) *spb.Status {
	st := &spb.Status{Code: code, Message: msg}
	if info, err := anypb.New(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}); err == nil {
		st.Details = []*anypb.Any{info}
	}
	return st
}

// FinalStatus is the status of a stored failure: the one in its payload
// (StoreStatus put it there), else FAILED_PRECONDITION with its message,
// and its code in the ErrorInfo's metadata.
func FinalStatus(f *idempotency.FinalError) *spb.Status {
	if len(f.Payload) > 0 {
		st := new(spb.Status)
		if err := proto.Unmarshal(f.Payload, st); err == nil {
			return st
		}
	}
	st := withInfo(codeFailedPrecondition, ReasonFinalFailure, f.Error())
	if f.Code != "" {
		info := &errdetails.ErrorInfo{Reason: ReasonFinalFailure, Domain: ErrorDomain, Metadata: map[string]string{"code": f.Code}}
		if a, err := anypb.New(info); err == nil {
			st.Details = []*anypb.Any{a}
		}
	}
	return st
}

// StoreStatus is the final failure that stores st, details and all, and
// that FinalStatus gives back. code is the FinalError's Code.
func StoreStatus(st *spb.Status, code string, err error) (*idempotency.FinalError, error) {
	payload, perr := deterministic.Marshal(st)
	if perr != nil {
		return nil, perr
	}
	return &idempotency.FinalError{Code: code, Err: err, Payload: payload}, nil
}
