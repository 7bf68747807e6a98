// Package logfile opens the plugin's log file: appended to by every
// plugin process at once, 0600 in a 0700 directory, and rotated by size
// with lumberjack.
//
// lumberjack's Logger is made for one process owning the file: it writes
// a file it created itself without O_APPEND (at its own offset, over what
// other processes appended) and creates the new file with O_TRUNC. So the
// processes here only append (O_APPEND: each line lands whole at the end),
// and lumberjack does just the rotation (the rename to its timestamped
// backup name, the new file, the removal of backups beyond MaxBackups),
// under an exclusive flock that every opener takes shared: an opener
// opens either the file before the rename (its lines go to the backup,
// whole) or the new one after lumberjack made it, never one lumberjack
// then truncates.
package logfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/spinneret-cni/spinneret/internal/fileutil"
)

// Options bound the log: it is rotated once it has MaxBytes, and
// MaxBackups rotated files are kept beside it.
type Options struct {
	MaxBytes   int64
	MaxBackups int
}

// Open opens path for appending, creating it 0600 (and its directory
// 0700) if needed, and narrowing a file made wider before: the log holds
// the pods' own text. A file that has reached o.MaxBytes is rotated first.
func Open(path string, o Options) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	lockPath := path + ".lock"
	lk, err := fileutil.SharedLockFile(lockPath)
	if err != nil {
		return nil, err
	}
	f, size, err := open(path)
	lk.Unlock()
	if err != nil || size < o.MaxBytes {
		return f, err
	}
	f.Close()
	if err := rotate(path, lockPath, o); err != nil {
		return nil, fmt.Errorf("rotate %s: %w", path, err)
	}
	lk, err = fileutil.SharedLockFile(lockPath)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	f, _, err = open(path)
	return f, err
}

func open(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, 0, err
		}
	}
	return f, fi.Size(), nil
}

// rotate has lumberjack rotate path unless another process did while
// this one waited for the lock.
func rotate(path, lockPath string, o Options) error {
	lk, err := fileutil.LockFile(lockPath)
	if err != nil {
		return err
	}
	defer lk.Unlock()
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() < o.MaxBytes) {
		return nil
	}
	if err != nil {
		return err
	}
	// MaxSize (megabytes) only bounds lumberjack's own Write, which is
	// never called: the size is checked above, in bytes
	l := &lumberjack.Logger{Filename: path, MaxBackups: o.MaxBackups, MaxSize: int(o.MaxBytes>>20) + 1}
	if err := l.Rotate(); err != nil {
		return err
	}
	// lumberjack names the backup by the millisecond and renames over a
	// backup of that name: the next rotation must be in a later one (a
	// test filling the log from 8 writers lost a whole backup so)
	time.Sleep(time.Millisecond)
	return l.Close()
}
