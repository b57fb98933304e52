// Command noop does nothing and exits 0. The benchmark starts it exactly the
// way consul-template starts a plugin, as the floor that `ct-supervise
// register` is compared with: what any Go binary costs to fork, exec and
// reap on this machine.
package main

func main() {}
