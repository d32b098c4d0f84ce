package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Output formats accepted by --format.
const (
	formatTable = "table"
	formatJSON  = "json"
)

// shortIDLen is how much of an id tables show: Docker's 12 characters, which
// stays unique in any cluster this size and fits a terminal.
const shortIDLen = 12

// maxErrLen is how much of a task error `service ps` shows without
// --no-trunc, so one long error does not push every other column off screen.
const maxErrLen = 60

// checkFormat validates a --format value.
func checkFormat(f string) error {
	if f != formatTable && f != formatJSON {
		return usageErrorf("--format must be %s or %s, got %q", formatTable, formatJSON, f)
	}
	return nil
}

// daemonFor checks a --format value before anything is dialled, then
// returns the daemon's clients: how every command with --format starts.
func (a *app) daemonFor(ctx context.Context, format string) (*daemonClient, error) {
	if err := checkFormat(format); err != nil {
		return nil, err
	}
	return a.daemon(ctx)
}

// newTable returns a writer that aligns tab-separated cells in columns, with
// Docker's spacing. The caller must Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 10, 1, 3, ' ', 0)
}

// row writes one table row.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// shortID returns the first shortIDLen characters of id.
func shortID(id string) string {
	if len(id) > shortIDLen {
		return id[:shortIDLen]
	}
	return id
}

// truncate cuts s to max runes, marking the cut with an ellipsis.
func truncate(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}

// enumWord turns a protobuf enum name into a word for tables:
// ("TASK_STATE_RUNNING", "TASK_STATE_") -> "Running".
func enumWord(name, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(name, prefix))
	w = strings.ReplaceAll(w, "_", " ")
	return capitalise(w)
}

// capitalise upper-cases the first letter of s.
func capitalise(s string) string {
	if s == "" {
		return s
	}
	r, n := utf8.DecodeRuneInString(s)
	return strings.ToUpper(string(r)) + s[n:]
}

// humanDuration says how long d is the way Docker does ("12 seconds",
// "About a minute", "3 days"), capitalised as at the start of a sentence.
func humanDuration(d time.Duration) string {
	if seconds := int(d.Seconds()); seconds < 1 {
		return "Less than a second"
	} else if seconds == 1 {
		return "1 second"
	} else if seconds < 60 {
		return fmt.Sprintf("%d seconds", seconds)
	} else if minutes := int(d.Minutes()); minutes == 1 {
		return "About a minute"
	} else if minutes < 60 {
		return fmt.Sprintf("%d minutes", minutes)
	} else if hours := int(math.Round(d.Hours())); hours == 1 {
		return "About an hour"
	} else if hours < 48 {
		return fmt.Sprintf("%d hours", hours)
	} else if hours < 24*7*2 {
		return fmt.Sprintf("%d days", hours/24)
	} else if hours < 24*30*2 {
		return fmt.Sprintf("%d weeks", hours/24/7)
	} else if hours < 24*365*2 {
		return fmt.Sprintf("%d months", hours/24/30)
	}
	return fmt.Sprintf("%d years", int(d.Hours())/24/365)
}

// ago says how long before now t was: "12 seconds ago". A zero t (never
// reported) is "N/A"; a t in the future (clock skew between hosts) counts as
// now.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "N/A"
	}
	d := max(now.Sub(t), 0)
	return capitalise(humanDuration(d)) + " ago"
}

// stateSince is the CURRENT STATE cell of `service ps`: "Running 12 seconds
// ago". Without a timestamp it is the state alone.
func stateSince(state string, t, now time.Time) string {
	if t.IsZero() {
		return state
	}
	d := max(now.Sub(t), 0)
	h := humanDuration(d)
	return state + " " + strings.ToLower(h[:1]) + h[1:] + " ago"
}

// sizeUnits are decimal (SI) like Docker's image sizes.
var sizeUnits = [...]string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}

// humanSize renders a byte count with three significant digits in decimal
// units, as `docker image ls` does: 4860000 -> "4.86MB".
func humanSize(n int64) string {
	if n < 0 {
		return "N/A"
	}
	v := float64(n)
	i := 0
	for i < len(sizeUnits)-1 {
		// Round first so 999999 becomes "1MB", not "1e+03kB".
		r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 3, 64), 64)
		if r < 1000 {
			break
		}
		v /= 1000
		i++
	}
	return strconv.FormatFloat(v, 'g', 3, 64) + sizeUnits[i]
}

// jsonIndent is the indentation of JSON output, as `docker inspect`.
const jsonIndent = "    "

// writeJSON writes one message as indented JSON. protojson deliberately
// varies its whitespace between runs, so the output is re-indented with
// encoding/json to be stable for people diffing it.
func writeJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	return writeIndented(w, b)
}

// writeJSONArray writes the messages as one indented JSON array ("[]" when
// there are none).
func writeJSONArray[M proto.Message](w io.Writer, msgs []M) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, m := range msgs {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := protojson.Marshal(m)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	return writeIndented(w, buf.Bytes())
}

func writeIndented(w io.Writer, compact []byte) error {
	var out bytes.Buffer
	if err := json.Indent(&out, compact, "", jsonIndent); err != nil {
		return fmt.Errorf("indent JSON: %w", err)
	}
	out.WriteByte('\n')
	_, err := w.Write(out.Bytes())
	return err
}
