// Package layout holds tests of the repository's structure: the
// dependency direction of DESIGN.md and a doc comment on every package.
package layout
