//! STUB: shared structs of the profiler eBPF programs, written by their owner.
