package stripeinbox_test

import (
	"crypto/hmac"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v82/webhook"

	"github.com/exactlyonce/idempotency/stripeinbox"
)

// FuzzSignatureHeader feeds the verifier arbitrary Stripe-Signature
// headers and bodies. It must never panic, and it may accept only a header
// that carries, beside its one timestamp t, the HMAC of "t.body" under the
// secret: what nobody without the secret can produce.
func FuzzSignatureHeader(f *testing.F) {
	now := time.Now()
	body := event("evt_fuzz")
	valid := signed(body, secret, now)
	f.Add(valid, body)
	f.Add(valid+",v1=00", body)
	f.Add("t="+strconv.FormatInt(now.Unix(), 10)+",v0=abc,"+valid[strings.Index(valid, "v1="):], body)
	f.Add("t=1,t=2,v1=ab", body)
	f.Add(",,=,t=,v1=", []byte("{}"))
	f.Add(valid, []byte(`{"id":""}`))
	v, err := stripeinbox.Verifier([]string{secret}, 24*time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		h := http.Header{}
		h.Set("Stripe-Signature", header)
		ev, err := v.Verify(body, h)
		at, atErr := stripeinbox.SignedAt(header)
		if err != nil {
			return
		}
		if atErr != nil {
			t.Fatalf("accepted %q, whose timestamp SignedAt refuses: %v", header, atErr)
		}
		if !ev.SignedAt.Equal(at) || ev.ID == "" {
			t.Fatalf("accepted %q as %+v; SignedAt says %v", header, ev, at)
		}
		want := webhook.ComputeSignature(at, body, secret)
		for pair := range strings.SplitSeq(header, ",") {
			if sig, ok := strings.CutPrefix(pair, "v1="); ok {
				if got, err := hex.DecodeString(sig); err == nil && hmac.Equal(got, want) {
					return
				}
			}
		}
		t.Fatalf("accepted %q without the secret's signature of its body", header)
	})
}
