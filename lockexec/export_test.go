package lockexec

// The queue's layout, for tests that play a waiter by hand.
const (
	QueueDir       = queueDir
	QueueFlagValue = queueFlagValue
)
