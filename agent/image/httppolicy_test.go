package image

import (
	"errors"
	"net/http"
	"testing"
)

type okTransport struct{}

func (okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
}

func TestPlainHTTPOnlyForInsecureOrLoopback(t *testing.T) {
	s := &Store{insecure: map[string]bool{normaliseRegistry("10.0.0.7:5000"): true}}
	p := httpPolicy{next: okTransport{}, allowed: s.plainHTTPAllowed}
	tests := []struct {
		url     string
		allowed bool
	}{
		{"https://192.168.240.2:5000/v2/", true},
		{"http://192.168.240.2:5000/v2/", false},
		{"http://10.0.0.7:5000/v2/", true},
		{"http://10.0.0.8:5000/v2/", false},
		{"http://127.0.0.1:5000/v2/", true},
		{"http://localhost:5000/v2/", true},
		{"http://registry.example.org/v2/", false},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, tc.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, err = p.RoundTrip(req)
			if tc.allowed && err != nil {
				t.Errorf("refused: %v", err)
			}
			if !tc.allowed && !errors.Is(err, ErrInsecureRegistry) {
				t.Errorf("got %v, want ErrInsecureRegistry", err)
			}
		})
	}
}
