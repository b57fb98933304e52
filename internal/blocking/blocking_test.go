package blocking

import (
	"context"
	"testing"
	"time"
)

func TestContextDeadline(t *testing.T) {
	tests := []struct {
		wait time.Duration
		want time.Duration // the deadline's distance from the call, at least
	}{
		{0, Slack},
		{16 * time.Second, 17*time.Second + Slack},
		{time.Minute, time.Minute + time.Minute/16 + Slack},
	}
	for _, tt := range tests {
		before := time.Now()
		ctx, cancel := Context(context.Background(), tt.wait)
		deadline, ok := ctx.Deadline()
		cancel()
		if !ok {
			t.Fatalf("Context(%s) has no deadline", tt.wait)
		}
		if got := deadline.Sub(before); got < tt.want || got > tt.want+time.Minute {
			t.Errorf("Context(%s): deadline %s after the call, want %s", tt.wait, got, tt.want)
		}
	}
}
