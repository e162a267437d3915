package compliance

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// rootOnlyWrite checks that a file is a regular file owned by root that no
// one else can write.
func rootOnlyWrite(fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("mode %04o lets others change it (fix: chmod go-w)", perm)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("cannot read its owner")
	}
	if st.Uid != 0 {
		return fmt.Errorf("owned by uid %d, not root (fix: chown root:root)", st.Uid)
	}
	return nil
}
