"""The simulated GPU: a discrete-event executor over `semipd.sched` on virtual time, timed by a
`PerfModel`, with the real metrics collector and SLO controller. Entry point: `run_policy`."""
