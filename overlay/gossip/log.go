package gossip

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter takes memberlist's log lines ("[WARN] memberlist: ...") to
// slog at debug level, whatever memberlist's own level: a cut link makes
// it report failed pings many times a second, and what matters to an
// operator (a member failed, a seed joined) Member logs itself at info.
// memberlist's level is kept as an attribute.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	if !w.log.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	msg := strings.TrimSpace(string(p))
	level := ""
	if strings.HasPrefix(msg, "[") {
		if i := strings.IndexByte(msg, ']'); i > 0 {
			level, msg = msg[1:i], strings.TrimSpace(msg[i+1:])
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.log.Debug(msg, "component", "memberlist", "memberlist_level", level)
	return len(p), nil
}
