package scheduler

import (
	"container/heap"
	"fmt"
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// spreadKey is a parsed spread preference: the label it spreads over.
type spreadKey struct {
	engine bool // engine.labels.NAME (reported by the agent), else node.labels.NAME
	name   string
}

// ValidateSpread checks the label of a spread preference: node.labels.NAME
// or engine.labels.NAME. The error says what was expected, for the
// operator who wrote it.
func ValidateSpread(key string) error {
	if _, ok := parseSpread(key); !ok {
		return fmt.Errorf("invalid spread preference %q: expected %sNAME or %sNAME", key, nodeLabelPrefix, engineLabelPrefix)
	}
	return nil
}

func parseSpread(key string) (spreadKey, bool) {
	key = strings.TrimSpace(key)
	if name, ok := strings.CutPrefix(key, nodeLabelPrefix); ok && name != "" {
		return spreadKey{name: name}, true
	}
	if name, ok := strings.CutPrefix(key, engineLabelPrefix); ok && name != "" {
		return spreadKey{engine: true, name: name}, true
	}
	return spreadKey{}, false
}

// spreadKeys returns the spread preferences of t's service, in order.
// Invalid ones, which the control API refuses, are skipped: they would put
// every node in the same group anyway.
func spreadKeys(t *shoalpb.Task) []spreadKey {
	prefs := t.GetSpec().GetPlacement().GetPreferences()
	if len(prefs) == 0 {
		return nil
	}
	keys := make([]spreadKey, 0, len(prefs))
	for _, p := range prefs {
		if k, ok := parseSpread(p.GetSpread()); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// value returns the node's value of the label, and whether it has one.
func (k spreadKey) value(n *shoalpb.Node) (string, bool) {
	labels := n.GetSpec().GetLabels()
	if k.engine {
		labels = n.GetDescription().GetEngineLabels()
	}
	v, ok := labels[k.name]
	return v, ok
}

// spreadTree ranks the candidate nodes of one group of tasks. Each level
// of the tree splits the nodes by one spread preference; a branch keeps its
// children in a heap, fewest tasks of the service first, and a leaf keeps
// its nodes in a heap, best first. Without preferences the tree is one
// leaf.
type spreadTree struct {
	serviceID string
	keys      []spreadKey
	root      *branch
	path      []*branch // from the root to the leaf of the last best()

	// While building: the candidates and their leaves, in the order
	// added, and the leaves. init lays the leaves' heaps out in slots.
	cands  []*NodeInfo
	leafOf []*branch
	leaves []*branch
	slots  []*NodeInfo
}

// branch is a node of the spread tree: the candidate nodes that share the
// values of the preferences above it.
type branch struct {
	value   string
	missing bool // the nodes lacking the label
	// tasks counts the service's tasks on the branch's candidates, the
	// ones placed by this call included. A node dropped because it no
	// longer fits keeps counting: its tasks are still there.
	tasks int
	index int // in the parent's children

	children branchHeap         // inner branch
	byValue  map[string]*branch // children by value, while building
	lacking  *branch            // the child of nodes lacking the label, while building
	size     int                // candidates in the leaf, while building
	nodes    nodeHeap           // leaf
}

// treeScratch is memory a Schedule call reuses for the tree of each group:
// three slices of one pointer per node.
type treeScratch struct {
	cands  []*NodeInfo
	leafOf []*branch
	slots  []*NodeInfo
}

func newTreeScratch(nodes int) *treeScratch {
	return &treeScratch{
		cands:  make([]*NodeInfo, 0, nodes),
		leafOf: make([]*branch, 0, nodes),
		slots:  make([]*NodeInfo, nodes),
	}
}

// newSpreadTree returns an empty tree for a group of the service; it uses
// scratch until the next newSpreadTree over the same scratch.
func newSpreadTree(serviceID string, keys []spreadKey, scratch *treeScratch) *spreadTree {
	t := &spreadTree{
		serviceID: serviceID,
		keys:      keys,
		root:      &branch{},
		path:      make([]*branch, 0, len(keys)+1),
		cands:     scratch.cands[:0],
		leafOf:    scratch.leafOf[:0],
		slots:     scratch.slots,
	}
	if len(keys) == 0 {
		t.root.nodes.nodes = scratch.slots[:0]
	}
	return t
}

// add puts a candidate node in its leaf; n.groupTasks must hold the
// service's tasks on it. Call init after the last add.
func (t *spreadTree) add(n *NodeInfo) {
	tasks := n.groupTasks
	n.groupFailures = n.RecentFailures[t.serviceID]
	b := t.root
	b.tasks += tasks
	if len(t.keys) == 0 {
		b.nodes.nodes = append(b.nodes.nodes, n)
		return
	}
	for _, k := range t.keys {
		v, ok := k.value(n.Node)
		b = t.child(b, v, ok)
		b.tasks += tasks
	}
	if b.size == 0 {
		t.leaves = append(t.leaves, b)
	}
	b.size++
	t.cands = append(t.cands, n)
	t.leafOf = append(t.leafOf, b)
}

// child returns b's child for a label value (or for nodes lacking the
// label when !ok), creating it.
func (t *spreadTree) child(b *branch, value string, ok bool) *branch {
	if !ok {
		if b.lacking == nil {
			b.lacking = &branch{missing: true}
			b.children.push(b.lacking)
		}
		return b.lacking
	}
	c := b.byValue[value]
	if c == nil {
		if b.byValue == nil {
			b.byValue = make(map[string]*branch)
		}
		c = &branch{value: value}
		b.byValue[value] = c
		b.children.push(c)
	}
	return c
}

// init lays out the leaves and orders every heap of the tree once the
// nodes are added.
func (t *spreadTree) init() {
	off := 0
	for _, l := range t.leaves {
		l.nodes.nodes = t.slots[off:off:(off + l.size)]
		off += l.size
	}
	for i, n := range t.cands {
		l := t.leafOf[i]
		l.nodes.nodes = append(l.nodes.nodes, n)
	}
	initBranch(t.root)
}

func initBranch(b *branch) {
	b.byValue, b.lacking = nil, nil
	for _, c := range b.children {
		initBranch(c)
	}
	heap.Init(&b.children)
	heap.Init(&b.nodes)
}

// best returns the node the next task goes to, or nil when no candidate
// is left. It follows the branch with the fewest tasks of the service down
// to a leaf and takes the leaf's best node; nodes that stopped fitting
// since the filters ran (a placement used them up) are dropped on the way,
// counted by p against the filter they now fail, and emptied branches are
// removed.
func (t *spreadTree) best(p *Pipeline) *NodeInfo {
	for {
		t.path = append(t.path[:0], t.root)
		b := t.root
		for len(b.children) > 0 {
			b = b.children[0]
			t.path = append(t.path, b)
		}
		for b.nodes.Len() > 0 && !p.Process(b.nodes.nodes[0]) {
			heap.Pop(&b.nodes)
		}
		if b.nodes.Len() > 0 {
			return b.nodes.nodes[0]
		}
		if b == t.root {
			return nil
		}
		t.prune()
	}
}

// prune removes the emptied branches at the end of the path.
func (t *spreadTree) prune() {
	for i := len(t.path) - 1; i > 0; i-- {
		b := t.path[i]
		if b.nodes.Len() > 0 || len(b.children) > 0 {
			return
		}
		heap.Remove(&t.path[i-1].children, b.index)
	}
}

// placed records that a task went to n, the node best returned: it
// reorders the leaf and the branches above it.
func (t *spreadTree) placed(n *NodeInfo) {
	n.groupTasks++
	leaf := t.path[len(t.path)-1]
	heap.Fix(&leaf.nodes, 0)
	for i := len(t.path) - 1; i >= 0; i-- {
		t.path[i].tasks++
		if i > 0 {
			heap.Fix(&t.path[i-1].children, t.path[i].index)
		}
	}
}

// branchHeap orders the children of a branch: fewest tasks of the service
// first, then labelled before lacking the label, then by value.
type branchHeap []*branch

func (h branchHeap) Len() int { return len(h) }

func (h branchHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.tasks != b.tasks {
		return a.tasks < b.tasks
	}
	if a.missing != b.missing {
		return b.missing
	}
	return a.value < b.value
}

func (h branchHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *branchHeap) push(b *branch) {
	b.index = len(*h)
	*h = append(*h, b)
}

func (h *branchHeap) Push(x any) { h.push(x.(*branch)) }

func (h *branchHeap) Pop() any {
	old := *h
	b := old[len(old)-1]
	*h = old[:len(old)-1]
	return b
}

// nodeHeap orders the nodes of a leaf for the group being placed, best
// first.
type nodeHeap struct {
	nodes []*NodeInfo
}

func (h *nodeHeap) Len() int { return len(h.nodes) }

// Less ranks by fewest recent failures of the service, then fewest tasks
// of the service, then fewest tasks, then id.
func (h *nodeHeap) Less(i, j int) bool {
	a, b := h.nodes[i], h.nodes[j]
	if a.groupFailures != b.groupFailures {
		return a.groupFailures < b.groupFailures
	}
	if a.groupTasks != b.groupTasks {
		return a.groupTasks < b.groupTasks
	}
	if a.total != b.total {
		return a.total < b.total
	}
	return a.Node.GetId() < b.Node.GetId()
}

func (h *nodeHeap) Swap(i, j int) { h.nodes[i], h.nodes[j] = h.nodes[j], h.nodes[i] }
func (h *nodeHeap) Push(x any)    { h.nodes = append(h.nodes, x.(*NodeInfo)) }
func (h *nodeHeap) Pop() any {
	n := h.nodes[len(h.nodes)-1]
	h.nodes = h.nodes[:len(h.nodes)-1]
	return n
}
