// Package cpupin keeps a plugin process on one CPU from its first package
// init on, when it runs as a CNI plugin (CNI_COMMAND set). A Go process
// starts threads at once (sysmon, the GC's workers, idle Ps spinning);
// spread over CPUs, each of the start's copy-on-write faults on the
// binary's data and each unmap has to shoot down the other CPUs' TLBs.
// For a process of 20 ms that is most of its cost: the same binary's
// CNI_COMMAND=VERSION took 15 ms (12-17) pinned to one CPU against 42 ms
// (16-69) free to use two, on this project's 2-CPU virtual machine (whole
// process, 40 runs each, alternating). The CPU chosen is the one the
// process is on, within the set the runtime gave it, so a pod's cpuset or
// the runtime's own affinity is kept; the scheduler is free again for the
// process's children (delegated plugins re-pin themselves or not).
//
// It imports only syscall, so that it is initialised before the packages
// whose inits do the work (Go initialises ready packages in import-path
// order), and is linked for its side effect: `import _ ".../cpupin"`.
package cpupin

import (
	"syscall"
	"unsafe"
)

func init() {
	if v, _ := syscall.Getenv("CNI_COMMAND"); v == "" {
		return
	}
	if v, _ := syscall.Getenv("SPINNERET_NO_CPU_PIN"); v != "" {
		return
	}
	Pin()
}

// cpuSet is the kernel's default cpu_set_t: 1024 CPUs.
type cpuSet [16]uint64

// before is the calling thread's set before Pin, which Restore puts back;
// zero when Pin has not pinned.
var before cpuSet

// Pin binds every thread of the process to the CPU the caller runs on. It
// reports whether it did (it gives up, leaving the process as it was, on
// any error: pinning is an optimisation).
func Pin() bool {
	var was cpuSet
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, 0, unsafe.Sizeof(was), uintptr(unsafe.Pointer(&was))); e != 0 {
		return false
	}
	var cpu uint32
	if sysGetcpu == 0 {
		return false
	}
	if _, _, e := syscall.RawSyscall(sysGetcpu, uintptr(unsafe.Pointer(&cpu)), 0, 0); e != 0 {
		return false
	}
	var set cpuSet
	if int(cpu) >= len(set)*64 {
		return false
	}
	set[cpu/64] = 1 << (cpu % 64)
	if !setAll(&set) {
		setAll(&was)
		return false
	}
	before = was
	return true
}

// Restore gives every thread of the process the CPUs it had before Pin:
// called before the plugin starts another program (a delegated plugin,
// which may leave a daemon behind), which would inherit the pin.
func Restore() {
	if before == (cpuSet{}) {
		return
	}
	setAll(&before)
	before = cpuSet{}
}

// setAll sets the affinity of every thread of the process to set. A
// thread started meanwhile inherits the affinity of the thread that made
// it, which may not have been set yet: so the threads are listed again
// until a listing finds none that was not set (once every thread has the
// set, every later one inherits it). It gives up after a few listings
// that each found new threads.
func setAll(set *cpuSet) bool {
	var done []int
	for range 8 {
		tids, ok := threads()
		if !ok {
			return false
		}
		fresh := false
	next:
		for _, tid := range tids {
			for _, d := range done {
				if d == tid {
					continue next
				}
			}
			fresh = true
			// a thread that exited since the listing is ESRCH: nothing to set
			if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(*set), uintptr(unsafe.Pointer(set))); e != 0 && e != syscall.ESRCH {
				return false
			}
			done = append(done, tid)
		}
		if !fresh {
			return true
		}
	}
	return false
}

// threads lists the process's thread IDs (/proc/self/task).
func threads() ([]int, bool) {
	fd, err := syscall.Open("/proc/self/task", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer syscall.Close(fd)
	var tids []int
	buf := make([]byte, 4096)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err != nil {
			return nil, false
		}
		if n <= 0 {
			return tids, true
		}
		var names []string
		_, _, names = syscall.ParseDirent(buf[:n], -1, names)
		for _, name := range names {
			tid := 0
			for i := 0; i < len(name); i++ {
				if name[i] < '0' || name[i] > '9' {
					tid = -1
					break
				}
				tid = tid*10 + int(name[i]-'0')
			}
			if tid > 0 {
				tids = append(tids, tid)
			}
		}
	}
}
