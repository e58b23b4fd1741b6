package grpcadapter

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/exactlyonce/idempotency"
	"github.com/exactlyonce/idempotency/protocodec"
)

// StatusFor is the status the interceptor answers an error of the
// library's with, by the one table of the gRPC and Connect adapters
// (protocodec.Status):
//
//	error                                   code                reason (ErrorInfo)   retry?
//	ErrInvalidKey, two different keys       InvalidArgument     KEY_INVALID          no: fix the key
//	no key, under WithKeyRequired           InvalidArgument     KEY_MISSING          no: send a key
//	ErrParamsMismatch                       FailedPrecondition  KEY_REUSED           no: new key for a new request
//	ErrInProgress                           Unavailable         IN_PROGRESS          yes, same key, after RetryInfo's delay
//	ErrOutcomeUnknown                       Unavailable         OUTCOME_UNKNOWN      yes, same key: replays or runs
//	any other failure of the store          Unavailable         STORE_FAILED         yes, same key: nothing was stored
//	ErrTransactionEnded                     Internal            TRANSACTION_ENDED    no: writes may have committed without the key
//	ErrInvalidScope, WithScope's ""         Internal            SCOPE_INVALID        no: the service must be fixed
//	ErrBadParams                            Internal            FINGERPRINT_FAILED   no
//	a reply that is not a storable message  Internal            REPLY_NOT_STORABLE   no
//	idempotency.Final(err), no status       FailedPrecondition  FINAL_FAILURE        no: stored and replayed
//	context.Canceled, DeadlineExceeded      Canceled, DeadlineExceeded               yes, same key
//
// The reasons are protocodec's Reason constants (IDEMPOTENCY_KEY_REUSED,
// ...), in the domain protocodec.ErrorDomain. Unavailable is the one code
// AIP-194 lets clients retry on their own (RetryServiceConfig does), and
// every Unavailable here is safe to retry with the same key. The handler's
// own errors are not in the table: they reach the client as the handler
// returned them, stored or not.
func StatusFor(err error) *status.Status {
	return statusFor(err, time.Second)
}

func statusFor(err error, retryAfter time.Duration) *status.Status {
	return status.FromProto(protocodec.Status(err, retryAfter))
}

// finalStatus is the status of a final failure: its payload's, else the
// gRPC status its error carries, else the table's.
func finalStatus(f *idempotency.FinalError) *status.Status {
	if len(f.Payload) == 0 {
		if st, ok := status.FromError(f.Err); ok && st.Code() != codes.Unknown {
			return st
		}
	}
	return status.FromProto(protocodec.FinalStatus(f))
}
