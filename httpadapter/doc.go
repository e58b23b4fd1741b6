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
//	400, 408, 409, 423, 425 or 429       the handler's response          no: rolled back, a retry runs again
//	5xx from the handler                 the handler's response          no: rolled back, a retry runs again
//	5xx with WithStoreServerErrors       the handler's response          yes (Stripe's choice)
//	the handler panicked                 500 problem handler-panic       no: rolled back
//	scope empty or over 255 bytes        500 problem scope-invalid       no: the handler does not run
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
//	  handler ignored it (a deadlock)                                    own: not safe to retry
//	an outer deadline ran out while the  503 problem deadline-exceeded,  no: rolled back
//	  handler ran or a twin was awaited    Retry-After
//	the client hung up first             nothing: nobody is listening    no: rolled back
//	commit outcome unknown               503 problem outcome-unknown, Retry-After: retry resolves it
//	other store failures                 503 problem store-failed, Retry-After; no: rolled back
//
// Which 4xx and 5xx are stored is WithStoredStatus's choice; the default,
// DefaultStoredStatus, stores a 4xx that is the endpoint's final word (a
// declined card's 402, a 403, 404 or 422) and not one that says the
// endpoint never began or may answer otherwise later: a validation 400 (so
// a corrected retry may reuse the key), 408, a 409 of the handler's own,
// 423, 425 and 429. An answer that is not stored rolls back the handler's
// writes, with or without a key.
//
// Every answer of the middleware's own is application/problem+json
// (RFC 9457) with type, title, status and detail; the detail says what the
// client should do. The types are the Problem* constants. Those that mean
// the service is at fault (scope-invalid, transaction-ended, handler-panic,
// store-failed) are logged (WithLogger).
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
// handler runs: if the client hangs up before the handler returns, the
// transaction rolls back and nothing is stored (the client never saw an
// answer; its retry runs the handler again). Once the handler has returned,
// the commit goes ahead even if the client has gone, so its retry finds the
// stored response. The handler's context is cancelled when the request's
// context ends, but carries no deadline of the request's own.
//
// A deadline that a middleware in front of this one puts on the request's
// context rolls back the same way when it runs out before the handler
// returns (or while the request waits for a twin, or for a database
// connection), but the client is still waiting: it gets a 503 problem
// deadline-exceeded with Retry-After. Only a context ended by net/http
// because the connection closed (a plain context.Canceled) is taken to
// mean that nobody is listening.
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
// response-too-large, streaming and scope-invalid (a retry fails the same
// way), and stops when the request's context ends. OnRetry reports every
// retry, those that net/http's own transport makes by itself when a reused
// connection fails included (see Transport). Against the middleware, a
// request sent through it takes effect exactly once however often its
// answers are lost.
package httpadapter
