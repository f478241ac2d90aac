//! STUB: shared structs of the conn eBPF programs, written by their owner.
