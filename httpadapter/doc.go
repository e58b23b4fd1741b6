// Package httpadapter puts idempotency keys on an HTTP API: server
// middleware that runs a handler at most once per Idempotency-Key, in the
// same transaction as the stored response, and a client transport that
// retries writes safely.
//
// # Server
//
// Wrap the routes that write:
//
//	store, _ := idempotency.New(db)
//	mux := http.NewServeMux()
//	mux.HandleFunc("POST /v1/charges", createCharge)
//	http.ListenAndServe(addr, httpadapter.Middleware(store,
//		httpadapter.WithScope(func(r *http.Request) string { return accountOf(r) }),
//	)(mux))
//
// and write through the request's transaction:
//
//	func createCharge(w http.ResponseWriter, r *http.Request) {
//		tx := httpadapter.Tx(r.Context())
//		_, err := tx.ExecContext(r.Context(), `INSERT INTO charges ...`)
//		...
//	}
//
// For POST and PATCH (WithMethods changes the set) the middleware reads the
// Idempotency-Key header, a bare key or a quoted structured-field string
// ("abc" and abc are the same key; 1 to 255 printable ASCII characters).
// It runs the handler inside idempotency.Run with the request's
// transaction in its context, buffers the response, stores its status, its
// allow-listed headers and its body with the key, commits, and only then
// writes the response. A retry with the same key gets the stored response
// with the header Idempotent-Replayed: true, and the handler does not run.
// GET, HEAD, OPTIONS, DELETE and PUT pass through untouched.
//
// A request without a key still runs in a transaction, so a handler is the
// same code either way and Tx is never nil for POST and PATCH; nothing is
// stored for it. WithKeyRequired answers such a request with 400 instead.
//
// # Fingerprint
//
// A request is identified by its fingerprint; the same key with another
// fingerprint answers 422. DefaultFingerprint has the method, the path, the
// raw query, the body byte-for-byte, and the request headers that say how
// to read the body: Content-Type (without a multipart boundary) and
// Content-Encoding. No other header is in it: when one changes what a
// request means, an API-version header say, add it with WithFingerprint.
//
// The path, the query and those headers count by their bytes too: a path
// with %FF in it, or a Content-Type or an uploaded file's name that is not
// valid UTF-8, is fingerprinted like any other request (text that is valid
// UTF-8 keeps the fingerprint earlier versions stored).
//
// Byte-for-byte means that one extra space in a JSON body makes another
// request. WithFingerprint(JSONFingerprint) compares a JSON body by its
// meaning instead: key order, spacing and escapes do not count, values and
// the digits of numbers do.
//
// A middleware in front of this one that parsed the form (r.ParseForm,
// r.FormValue) has consumed the body, which then reads empty; the parsed
// form, and the name, size and SHA-256 of each uploaded file, then stand
// in for it, and the handler sees the same r.Form and r.PostForm. A
// middleware in front that reads the body any other way must put it back.
//
// # Scope
//
// Keys live in a scope (WithScope, usually the authenticated account): a
// key in one scope never replays another scope's response. A scope
// function that returns "" could not tell whose request this is: the
// request is refused with a 500 problem scope-invalid and an error in the
// log, never run in a scope shared by everyone.
//
// # Replays
//
// Replays repeat the headers that give the body its meaning
// (Content-Type, Content-Encoding, Content-Language, Content-Disposition),
// those that say where the result is (Location, Content-Location, Link),
// Vary (so that a cache on the way does not hand a gzip body to a client
// that cannot read it) and the headers named with WithReplayHeaders; never
// Set-Cookie. The first answer carries every header the handler set.
//
// # Status mapping
//
// Nothing is ever answered 2xx unless it committed.
//
//	handler or store outcome             answer                          stored
//	2xx or 3xx from the handler          the handler's response          yes, replayed to retries
//	402, 403, 404, 422 and other 4xx     the handler's response          yes, replayed to retries
//	400, 401, 408, 409, 421, 423, 425    the handler's response          no: rolled back, a retry runs again
//	  or 429
//	5xx from the handler                 the handler's response          no: rolled back, a retry runs again
//	5xx with WithStoreServerErrors       the handler's response          yes (Stripe's choice)
//	the handler panicked                 500 problem handler-panic       no: rolled back
//	the handler handed back a            the handler runs again, in a    as that run's answer
//	  serialization failure or a         new transaction (see Fail)
//	  deadlock with Fail
//	the handler handed back another      ProblemFor's problem: 503       no: rolled back
//	  error with Fail, or retries ran      store-failed for most
//	  out
//	the handler handed back an error     422 problem final-failure,      yes, replayed to retries
//	  made final (idempotency.Final)       with its code
//	scope empty or over 255 bytes        500 problem scope-invalid       no: the handler does not run
//	the WithFingerprint function's       500 problem fingerprint-failed  no: the handler does not run
//	  value cannot be encoded
//	key missing (WithKeyRequired)        400 problem key-missing         no
//	key invalid, or several keys         400 problem key-invalid         no
//	request body over the limit (ours,   413 problem request-too-large   no
//	  or an outer http.MaxBytesHandler's)
//	request body fails to read           400 problem request-unreadable  no
//	same key, another request            422 problem key-reused          (the first one's stays)
//	a twin still running past WithWait   409 problem in-progress, Retry-After
//	response over the limit, or streamed 500 problem response-too-large or streaming; no: rolled back
//	the database ended the transaction   500 problem transaction-ended   no, but writes after the end
//	  while the handler ran, and the                                     may have committed on their
//	  handler ignored it (a deadlock),                                   own: not safe to retry
//	  or the handler committed or rolled
//	  it back itself
//	an outer deadline ran out while the  503 problem deadline-exceeded,  no: rolled back
//	  handler ran or a twin was awaited    Retry-After
//	the request's context was canceled   503 problem request-canceled,   no: rolled back
//	  first (the client hung up, or the    Retry-After
//	  server or an outer middleware
//	  canceled it)
//	commit outcome unknown               503 problem outcome-unknown,    unknown: a retry with the key
//	                                       Retry-After (none without a   resolves it
//	                                       key: a retry is not safe)
//	other store failures                 503 problem store-failed, Retry-After; no: rolled back
//
// Which 4xx and 5xx are stored is WithStoredStatus's choice; the default,
// DefaultStoredStatus, stores a 4xx that is the endpoint's final word (a
// declined card's 402, a 403, 404 or 422) and not one that says the
// endpoint never began or may answer otherwise later: a validation 400 (so
// a corrected retry may reuse the key), a 401 (so a client that refreshes
// its token may retry with the same key), 408, a 409 of the handler's own,
// a misdirected 421, 423, 425 and 429. An answer that is not stored rolls
// back the handler's writes, with or without a key.
//
// Every answer of the middleware's own is application/problem+json
// (RFC 9457) with type, title, status and detail; the detail says what the
// client should do. The types are the Problem* constants. Those that mean
// the service is at fault (scope-invalid, fingerprint-failed,
// transaction-ended, handler-panic, store-failed) are logged as errors
// (WithLogger).
//
// The answers to errors come from one table, ProblemFor, which a service
// that calls idempotency.Run from its own handler (in Gin, Echo, or behind
// a gRPC gateway) can use too, with WriteProblem to send them; see
// ProblemFor.
//
// # Large and streamed responses
//
// The response is buffered, because nothing may reach the client before the
// commit. A body over WithMaxResponseBytes (default 1 MiB), or a response
// the handler tries to stream (Flush, http.ResponseController.Flush, or
// Hijack), cannot be stored and replayed, so it has one behaviour: the
// transaction rolls back, nothing is stored, and the client gets a 500
// problem (response-too-large or streaming) instead of a partial answer.
// The handler learns early: Write returns ErrResponseTooLarge once over the
// limit, and ResponseController.Flush and Hijack return ErrStreaming. The
// same holds for requests without a key. Serve downloads and streams from
// routes outside the middleware, or with a GET that follows the write.
//
// A keyed request's body is read whole before the handler runs, to
// fingerprint it and to give each attempt a fresh copy; one over
// WithMaxRequestBytes (default 1 MiB) answers 413.
//
// # Hang-ups, deadlines and commits
//
// The request's context decides the transaction's fate only while the
// handler runs: if it ends before the handler returns (the client hung
// up, an outer middleware's deadline passed or it called cancel, the
// server canceled its BaseContext on shutdown), the transaction rolls back
// and nothing is stored; a retry runs the handler again. Once the handler
// has returned, the commit goes ahead even if the context has ended, so a
// retry finds the stored response. The handler's context is canceled when
// the request's context ends, but carries no deadline of the request's
// own. The same holds while a request waits for a twin or for a database
// connection.
//
// A request rolled back that way is always answered, with a 503 and
// Retry-After: problem deadline-exceeded when a deadline ran out,
// request-canceled when the context was canceled. A context canceled by
// net/http because the client hung up looks exactly like one canceled by
// the server while its client still waits (both end with a plain
// context.Canceled), and silence would let net/http send that client an
// empty 200 for work that rolled back; to a client that is gone, the answer
// costs nothing.
//
// # Handlers run more than once
//
// The handler of a request with a key can run more than once for it, each
// time in a new transaction, all but the last rolled back (a request
// without a key runs in idempotency.InTx, once): after a
// serialization failure or a deadlock (one the handler handed back with
// Fail, or one at COMMIT, TiDB's write conflicts included), and after a
// database connection lost before the commit. A run can also be rolled
// back for a twin with the same key that committed first (the request then
// replays the twin's answer), and a twin that waited runs the handler in
// turn when the one it waited for rolled back. So:
//
//   - Each run must write its whole answer: the status, the headers and the
//     body. The middleware sends the last run's (a fresh capture each
//     time), and an attempt that writes nothing commits an empty 200.
//   - The handler must be safe to run again in its effects outside the
//     database (calls to other services, messages, files, metrics): they
//     are not rolled back. Write an outbox row through Tx instead, and send
//     it after the commit.
//   - The handler must be one that can be called again. Code that runs the
//     rest of a chain from inside the middleware cannot: Gin's c.Next(),
//     for one, runs the rest of the chain only the first time it is called
//     and does nothing the next, so a second run would commit an empty 200.
//     Put the middleware around a plain http.Handler that does the work,
//     or call idempotency.Run from your own handler (see ProblemFor).
//
// The request's body and its parsed form are fresh for each run.
//
// # Handing errors back: Fail
//
// A handler whose statement fails with a serialization failure or a
// deadlock (SQLSTATE 40001 or 40P01 on Postgres, 1213 on MySQL, MariaDB
// and TiDB, TiDB's write conflicts) should not answer it with a 500 that
// leaves the retry to the client: it hands the error back with Fail and returns, and the
// middleware has the store run it again as idempotency.Do does, in a new
// transaction, up to WithMaxRetries:
//
//	if _, err := tx.ExecContext(ctx, `UPDATE accounts ...`); err != nil {
//		httpadapter.Fail(r.Context(), err)
//		return
//	}
//
// An error the store does not retry, or one still failing when retries
// run out, rolls back and is answered with ProblemFor's problem (503
// store-failed, safe to retry, for most); one made final with
// idempotency.Final or FinalCode is stored under the key and answered, then
// replayed, as a 422 problem final-failure with its code. Whatever the
// handler wrote before it returned is discarded. A request without a key
// runs in idempotency.InTx, which runs its handler once: Fail's error is
// answered the same way, without a retry. On SQLite, which runs one writer
// at a time, no statement fails that way.
//
// # Flows
//
// An endpoint that calls another system and answers with its result (a
// payment authorized with a provider) runs a flow (idempotency.NewFlow)
// behind FlowHandler: the same keys, scopes, replays and 400, 409 and 422
// problems as the middleware; a decode function that turns the request
// into the flow's params (its fingerprint), and a respond function that
// writes the answer from the flow's value or final failure, fresh or
// replayed alike. A flow that stops part of the way is a 503
// (flow-stopped, with Retry-After): a retry with the same key resumes it.
//
//	http.Handle("POST /checkout", httpadapter.FlowHandler(store, checkout, decodeCheckout, respondCheckout,
//		httpadapter.WithScope(account)))
//
// # Client
//
// Transport is an http.RoundTripper for the other side:
//
//	client := &http.Client{Transport: &httpadapter.Transport{MaxAttempts: 5}}
//
// It gives a POST or PATCH without an Idempotency-Key a fresh key (a UUIDv7,
// see NewKey), and retries every request that carries a key after a network
// error, a 409, a 429 or a 5xx, with the same key and the body rewound,
// with exponential backoff, jitter and a cap, honouring Retry-After (seconds
// or an HTTP-date). It never retries a 422 or another 4xx, nor a replay
// (Idempotent-Replayed: true: every retry would get the same stored
// answer), nor the 500 problems transaction-ended (not safe),
// response-too-large, streaming, scope-invalid and fingerprint-failed (a
// retry fails the same way), and stops when the request's context ends.
// It retries the 503s (store-failed, outcome-unknown, deadline-exceeded,
// request-canceled) after their Retry-After. OnRetry reports every
// retry, those that net/http's own transport makes by itself when a reused
// connection fails included (see Transport). Against the middleware, a
// request sent through it takes effect exactly once however often its
// answers are lost.
package httpadapter
