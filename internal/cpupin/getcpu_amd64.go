package cpupin

// sysGetcpu is getcpu(2), which package syscall does not name.
const sysGetcpu = 309
