//! What every eBPF object of Sonde needs besides its programs: a panic handler (no_std) and the
//! license section the kernel reads (GPL: the ring-buffer and probe-read helpers require it).
//! Each object's crate root includes this file as `mod runtime`.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
