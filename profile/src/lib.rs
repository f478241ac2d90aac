//! CPU profiles from the profiler's `stack_traces` rows: [`pprof`] (what `go tool pprof`, Pyroscope,
//! Parca and Grafana read) and [`flamegraph`] (SVG). The agent builds them from one node's rows, the
//! operator from every node's.
pub mod flamegraph;
pub mod frames;
pub mod pprof;
pub mod query;
