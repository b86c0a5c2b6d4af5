package filestore

import (
	"testing"

	"github.com/gpuwarm/gpuwarm/store/storetest"
)

func TestConformance(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, s)
}
