package main

import (
	"fmt"
	"time"

	"ct-supervise/plugin"
	"ct-supervise/state"
)

// manyActions is how many actions the crowded state of row 1b holds.
const manyActions = 1000

// benchRegisterCrowded times an unchanged register against a state
// directory that already holds manyActions actions: register runs on every
// render, so it must stay in the milliseconds whatever the state holds.
func (b *bench) benchRegisterCrowded(res *Results) error {
	dir, err := b.stateDir("register-crowded")
	if err != nil {
		return err
	}
	if err := fillState(dir, manyActions); err != nil {
		return err
	}
	env := b.env("CT_SUPERVISE_STATE_DIR=" + dir)
	n := min(b.p.registerN, 200)
	b.logf("register: %d calls against %d declared actions", n, manyActions)
	var samples []float64
	for i := range 5 + n {
		r, err := b.procs.runOnce(b.ctx, env, append([]string{b.cts}, registerArgs...)...)
		if err != nil {
			return err
		}
		if i >= 5 {
			samples = append(samples, ms(r.Wall))
		}
	}
	s := summarize(samples, "ms")
	met := s.Median <= 20
	res.add(Row{
		ID: "1b", Measure: fmt.Sprintf("`register` wall time per call with %d actions in the state (unchanged declaration)", manyActions),
		N: fmt.Sprint(n), Value: &s, Target: "median ≤ 20 ms", Met: &met,
	})
	return nil
}

// fillState declares n actions in the state directory dir in one write.
func fillState(dir string, n int) error {
	store, err := state.Open(dir)
	if err != nil {
		return err
	}
	defer store.Close()
	return store.Update(func(st *state.State) error {
		for i := range n {
			d := plugin.DefaultDeclaration()
			d.Name = fmt.Sprintf("action-%04d", i)
			d.Command = []string{fmt.Sprintf("systemctl reload service-%d", i)}
			if err := d.Finish(); err != nil {
				return err
			}
			st.Actions[d.Name] = &state.Action{Declaration: d, DeclaredAt: time.Now()}
		}
		return nil
	})
}
