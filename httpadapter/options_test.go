package httpadapter

import (
	"net/http"
	"strings"
	"testing"
)

// TestBadOptionsPanicAtStart: a wrong option makes Middleware panic at
// once, with a message that names the option; the same option is also an
// error a caller can test on its own.
func TestBadOptionsPanicAtStart(t *testing.T) {
	store := sqliteEnv(t).store(t)
	for _, c := range []struct {
		opt  Option
		want string
	}{
		{WithMethods(), "WithMethods()"},
		{WithMethods("post"), `WithMethods("post")`},
		{WithScope(nil), "WithScope(nil)"},
		{WithFingerprint(nil), "WithFingerprint(nil)"},
		{WithReplayHeaders("Set-Cookie"), `WithReplayHeaders("Set-Cookie")`},
		{WithReplayHeaders("Content-Length"), `WithReplayHeaders("Content-Length")`},
		{WithMaxResponseBytes(-1), "WithMaxResponseBytes(-1)"},
		{WithMaxRequestBytes(-1), "WithMaxRequestBytes(-1)"},
		{WithStoredStatus(nil), "WithStoredStatus(nil)"},
		{WithRetryAfter(-1), "WithRetryAfter(-1ns)"},
		{WithLogger(nil), "WithLogger(nil)"},
	} {
		if err := c.opt(defaultConfig()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: the option's error is %v", c.want, err)
		}
		func() {
			defer func() {
				v := recover()
				err, _ := v.(error)
				if err == nil || !strings.HasPrefix(err.Error(), "httpadapter: ") || !strings.Contains(err.Error(), c.want) {
					t.Errorf("%s: Middleware panicked with %v; want an error naming the option", c.want, v)
				}
			}()
			Middleware(store, c.opt)
		}()
	}
	// Good options do not panic, and nil options are skipped.
	Middleware(store, WithMethods(http.MethodPost), nil, WithKeyRequired(), WithStoreServerErrors())
}
