package bridge

import (
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// onMain runs functions on the process's main thread, which TestMain keeps
// locked to the main goroutine: the thread /proc/self/ns/net describes.
var onMain = make(chan func())

func TestMain(m *testing.M) {
	runtime.LockOSThread()
	done := make(chan int)
	go func() { done <- m.Run() }()
	for {
		select {
		case f := <-onMain:
			f()
		case code := <-done:
			os.Exit(code)
		}
	}
}

func runOnMain(f func()) {
	done := make(chan struct{})
	onMain <- func() { f(); close(done) }
	<-done
}

// A goroutine locked to the main thread may be inside a container's
// namespace (the runtime lets any goroutine land on it); the driver must
// still find the host's namespace then, or it looks for, and makes, its
// bridge in the container.
func TestDefaultHostNetNSWhileMainThreadElsewhere(t *testing.T) {
	requireRoot(t)
	e := newEnv(t)
	host, err := netns.Get() // this goroutine's thread: the process's namespace
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	other, err := netns.GetFromPath(e.hostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var setErr error
	runOnMain(func() { setErr = netns.Set(other) })
	if setErr != nil {
		t.Fatalf("move main thread: %v", setErr)
	}
	defer runOnMain(func() {
		if err := netns.Set(host); err != nil {
			t.Errorf("move main thread back: %v", err)
		}
	})

	got, err := netns.GetFromPath(DefaultHostNetNS)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if !got.Equal(host) {
		t.Fatalf("DefaultHostNetNS opened %s while the main thread is in %s; want the process's %s",
			got.UniqueId(), other.UniqueId(), host.UniqueId())
	}
}
