package idempotency

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/exactlyonce/idempotency/internal/uuid"
)

// downstreamNamespace starts every hash DownstreamKey takes, so that its
// keys meet no other use of SHA-256 over the same strings.
const downstreamNamespace = "github.com/exactlyonce/idempotency DownstreamKey v1"

// DownstreamKey returns the idempotency key to send to another system (a
// payment provider, an email service, a webhook) for one step of the call
// (scope, key). The same three strings always give the same key, and any
// other three another key.
//
// It is for calls made after the commit, by a job or an outbox row written
// through fn's transaction: the job may run more than once (its worker can
// die after the call and before the job is marked done), and each run sends
// the same key, so the other system applies the step once. That holds only
// if the other system honours the key: it must store each key with its
// first answer, give that answer to a repeat instead of acting again, and
// keep the key for at least as long as the job may be retried.
//
// scope is part of the key because the other system sees one caller, you,
// for all your scopes: two customers' "order-1" must not meet there. step
// names the call (say "charge" or "receipt-email"), so that two calls made
// for one key do not share a key. A call (scope, key) run again after its
// key expired here (WithTTL) sends the same key as before, so keep keys here
// at least as long as the other system keeps them, or put something the
// new run made (an id fn returned) into step.
//
// The key is a UUID, version 8 (RFC 9562): 36 printable ASCII characters,
// short enough for systems that limit a key's length, and a UUID for those
// that want one. Its 122 free bits are the first bits of SHA-256 over a fixed
// namespace and scope, key and step, each of the four preceded by its length
// in bytes as a 4-byte big-endian number.
func DownstreamKey(scope, key, step string) string {
	h := sha256.New()
	var n [4]byte
	for _, s := range [...]string{downstreamNamespace, scope, key, step} {
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	var u [16]byte
	copy(u[:], h.Sum(nil))
	return uuid.Format(8, u)
}
