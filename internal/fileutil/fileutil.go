// Package fileutil holds the file primitives the state dir needs: an
// atomic write (durable, or unsynced for copies a crash may lose) and an
// advisory lock.
package fileutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// WriteAtomic replaces path with data so that a reader (or a process started
// after a crash) sees either the old or the new content, never a mix: it
// writes a temp file in the same directory, fsyncs it and renames it over path.
func WriteAtomic(path string, data []byte) error { return writeAtomic(path, data, 0o600, true) }

// WriteAtomicMode is WriteAtomic giving the new file mode. A file that a
// process is executing is replaced, never rewritten (which would fail with
// ETXTBSY, or change a binary under a running process).
func WriteAtomicMode(path string, data []byte, mode os.FileMode) error {
	return writeAtomic(path, data, mode, true)
}

// WriteAtomicUnsynced is WriteAtomic without the fsync, for a copy whose
// loss to a crash only costs reading it again: a reader still sees the
// old content or the new, whole.
func WriteAtomicUnsynced(path string, data []byte) error {
	return writeAtomic(path, data, 0o600, false)
}

func writeAtomic(path string, data []byte, mode os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	if err = f.Chmod(mode); err == nil {
		_, err = f.Write(data)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteDurable writes path in place (creating or truncating it) and fsyncs
// it: one file creation at most, but a crash can leave it torn, so readers
// must tolerate that.
func WriteDurable(path string, data []byte) error {
	return WriteSync(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, data)
}

// WriteSync opens path with flags (O_APPEND to append), writes data and
// fsyncs it.
func WriteSync(path string, flags int, data []byte) error {
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Lock is an exclusive flock held on a file until Unlock.
type Lock struct{ f *os.File }

// LockFile takes an exclusive lock on path, creating the file if needed. It
// blocks until the lock is free; the kernel drops it if the process dies.
func LockFile(path string) (*Lock, error) { return lockFile(path, unix.LOCK_EX) }

// SharedLockFile takes a shared lock on path, as LockFile does: any
// number of holders at once, none while another holds LockFile's.
func SharedLockFile(path string) (*Lock, error) { return lockFile(path, unix.LOCK_SH) }

func lockFile(path string, how int) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the descriptor drops the flock
		l.f = nil
	}
}

// ErrLocked is returned by TryLockFile when another process holds the lock.
var ErrLocked = errors.New("locked by another process")

// TryLockFile is LockFile without waiting: it fails with ErrLocked.
func TryLockFile(path string) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Touch creates an empty file at path if there is none (a marker: its
// existence is the record, so it is not synced; a crash loses at most what
// the kernel loses with it).
func Touch(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}
