//go:build !amd64 && !arm64

package cpupin

// sysGetcpu is unknown here: Pin does nothing.
const sysGetcpu = 0
