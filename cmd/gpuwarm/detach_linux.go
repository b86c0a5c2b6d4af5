package main

import (
	"fmt"
	"syscall"
)

func detach(dir string) error {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
		return fmt.Errorf("detach %s: %w", dir, err)
	}
	return nil
}
