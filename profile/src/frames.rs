//! How the profiler writes a frame of `stack_trace`: `function (file:line)` when the source is known,
//! `[k] function` for the kernel.

/// Prefix of kernel frames.
pub const KERNEL_PREFIX: &str = "[k] ";

/// The function of a frame, without its source location.
pub fn function_name(frame: &str) -> &str {
    match frame.find(" (") {
        Some(i) if frame.ends_with(')') => &frame[..i],
        _ => frame,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_drop_the_source_location() {
        assert_eq!(function_name("main (hot.c:12)"), "main");
        assert_eq!(function_name("main"), "main");
        assert_eq!(function_name("libc.so.6+0x1234"), "libc.so.6+0x1234");
        assert_eq!(function_name("[k] do_syscall_64"), "[k] do_syscall_64");
    }
}
