//go:build !race

package state

// raceDetector is true under -race, which slows decoding some twentyfold:
// timing checks are then only logged.
const raceDetector = false
