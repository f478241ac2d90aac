//! STUB: shared structs of the dynlog eBPF programs, written by their owner.
