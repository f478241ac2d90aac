//! The RET instructions of a function, found by decoding its machine code (iced-x86).
//!
//! Return probes go on each of them instead of using uretprobes: a uretprobe rewrites the return
//! address on the stack, which Go's runtime copies and inspects when it grows or unwinds a
//! goroutine stack (golang/go#22008) — the program crashes.
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// Virtual addresses of every RET in `code` (which starts at `address`).
pub fn find_rets(code: &[u8], address: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut rets = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            // Padding or data after the last instruction: nothing decodable follows.
            continue;
        }
        if instruction.mnemonic() == Mnemonic::Ret {
            rets.push(instruction.ip());
        }
    }
    rets
}

#[cfg(test)]
mod tests {
    use super::find_rets;

    #[test]
    fn every_ret_is_found_and_bytes_inside_other_instructions_are_not() {
        // mov eax, 0xc3 (the immediate holds a RET byte); test edi, edi; je +1; ret; ret 8
        let code = [
            0xb8, 0xc3, 0x00, 0x00, 0x00, 0x85, 0xff, 0x74, 0x01, 0xc3, 0xc2, 0x08, 0x00,
        ];
        assert_eq!(find_rets(&code, 0x1000), vec![0x1009, 0x100a]);
    }
}
