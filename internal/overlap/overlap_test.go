package overlap

import "testing"

func TestMax(t *testing.T) {
	type iv struct{ s, e int64 }
	cases := []struct {
		name string
		ivs  []iv
		want int
	}{
		{"none", nil, 0},
		{"one", []iv{{1, 2}}, 1},
		{"disjoint", []iv{{1, 2}, {3, 4}}, 1},
		{"touching is not overlapping", []iv{{1, 2}, {2, 3}, {3, 4}}, 1},
		{"nested", []iv{{1, 10}, {2, 3}, {4, 5}}, 2},
		{"three at once", []iv{{1, 5}, {2, 6}, {3, 7}, {8, 9}}, 3},
		{"unfinished counts forever", []iv{{1, 0}, {5, 6}, {100, 200}}, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := Max(tc.ivs, func(v iv) (int64, int64) { return v.s, v.e })
			if got != tc.want {
				t.Fatalf("Max = %d, want %d", got, tc.want)
			}
		})
	}
}
