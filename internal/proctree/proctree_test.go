package proctree

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	s, ok := Parse(42, "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0")
	if !ok || s.State != "S" || s.PPID != 7 || s.Start != 12345 {
		t.Fatalf("got %+v, %v", s, ok)
	}
	if _, ok := Parse(1, "1 (x) S 0"); ok {
		t.Fatal("a short line parsed")
	}
}

func TestTreeHoldsChild(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	defer cmd.Process.Kill()
	tree := Tree(os.Getpid())
	if tree[0] != os.Getpid() || !slices.Contains(tree, cmd.Process.Pid) {
		t.Fatalf("tree %v lacks the child %d", tree, cmd.Process.Pid)
	}
}
