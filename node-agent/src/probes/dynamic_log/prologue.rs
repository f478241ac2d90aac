//! Where a Go function's body starts: after its stack-check prologue.
//!
//! A Go function (not NOSPLIT) begins by comparing the stack pointer with `g.stackguard0` and, when
//! the stack is too small or the runtime asks the goroutine to yield (cooperative preemption sets
//! the guard so that the next check fails), calls `runtime.morestack` and then jumps back to the
//! first instruction. An entry probe on the first instruction therefore fires again for the same
//! call, with the same arguments. The first instruction after the check runs exactly once per call,
//! with the arguments still where the ABI put them and the stack pointer unchanged, so the entry
//! probe goes there.
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use sonde_common::dynlog::reg;

/// Instructions a stack check may take (the longest, for frames larger than `StackBig`, is five).
const MAX_CHECK_INSTRUCTIONS: usize = 8;

/// The address of the first instruction after the stack check of the function whose code is
/// `code` (starting at `address`), or None when the function has no stack check or its shape is not
/// the one recognised (then the entry probe stays on the first instruction).
///
/// Recognised: leading `mov`/`lea`/`sub`/`cmp` instructions and forward conditional jumps, the last
/// of them a jump; they write no register except those `may_clobber` allows (64-bit registers the
/// entry capture does not read); the function jumps back to its first instruction (the morestack path);
/// and nothing else branches to the returned address (it must run once per call).
pub fn body_start(
    code: &[u8],
    address: u64,
    may_clobber: impl Fn(Register) -> bool,
) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let instructions: Vec<Instruction> = decoder.iter().take_while(|i| !i.is_invalid()).collect();
    let mut body = None;
    for (at, i) in instructions.iter().enumerate().take(MAX_CHECK_INSTRUCTIONS) {
        if is_conditional_jump(i.mnemonic()) {
            if i.near_branch_target() <= i.ip() {
                return None;
            }
            body = instructions.get(at + 1).map(Instruction::ip);
            continue;
        }
        let writes = match i.mnemonic() {
            Mnemonic::Cmp => None,
            Mnemonic::Mov | Mnemonic::Lea | Mnemonic::Sub if i.op0_kind() == OpKind::Register => {
                Some(i.op0_register())
            }
            _ => break,
        };
        if let Some(register) = writes
            && (register == Register::RSP || !may_clobber(register))
        {
            return None;
        }
    }
    let body = body?;
    let jumps_back = instructions
        .iter()
        .any(|i| i.mnemonic() == Mnemonic::Jmp && i.near_branch_target() == address);
    let entered_elsewhere = instructions.iter().any(|i| {
        matches!(
            i.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ) && i.near_branch_target() == body
    });
    (jumps_back && !entered_elsewhere).then_some(body)
}

/// The `pt_regs` word (see `sonde_common::dynlog::reg`) of a 64-bit general register.
pub fn pt_regs_word(register: Register) -> Option<u8> {
    Some(match register {
        Register::R15 => reg::R15,
        Register::R14 => reg::R14,
        Register::R13 => reg::R13,
        Register::R12 => reg::R12,
        Register::RBP => reg::RBP,
        Register::RBX => reg::RBX,
        Register::R11 => reg::R11,
        Register::R10 => reg::R10,
        Register::R9 => reg::R9,
        Register::R8 => reg::R8,
        Register::RAX => reg::RAX,
        Register::RCX => reg::RCX,
        Register::RDX => reg::RDX,
        Register::RSI => reg::RSI,
        Register::RDI => reg::RDI,
        Register::RSP => reg::RSP,
        _ => return None,
    })
}

fn is_conditional_jump(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Ja
            | Mnemonic::Jae
            | Mnemonic::Jb
            | Mnemonic::Jbe
            | Mnemonic::Je
            | Mnemonic::Jne
            | Mnemonic::Jg
            | Mnemonic::Jge
            | Mnemonic::Jl
            | Mnemonic::Jle
            | Mnemonic::Jo
            | Mnemonic::Jno
            | Mnemonic::Js
            | Mnemonic::Jns
            | Mnemonic::Jp
            | Mnemonic::Jnp
    )
}

#[cfg(test)]
mod tests {
    use super::body_start;
    use iced_x86::Register;

    fn scratch(r: Register) -> bool {
        matches!(r, Register::R12 | Register::R13)
    }

    // Go 1.26, main.(*Server).PlaceOrder: a small frame.
    //   0: cmp rsp,[r14+10h]   4: jbe 5ah   6: push rbp ... 5a: (spill) call morestack ... jmp 0
    fn small_frame() -> Vec<u8> {
        let mut code = vec![0x49, 0x3b, 0x66, 0x10, 0x76, 0x54, 0x55, 0xc3];
        code.resize(0x5a, 0x90);
        code.extend([0xe8, 0, 0, 0, 0]); // call (anywhere)
        code.extend([0xeb, 0x9f]); // jmp 0 (0x61 - 0x61 → -0x61)
        code
    }

    #[test]
    fn the_body_of_a_small_frame_starts_after_cmp_and_jbe() {
        assert_eq!(body_start(&small_frame(), 0x1000, scratch), Some(0x1006));
    }

    #[test]
    fn a_function_that_never_jumps_back_to_its_start_keeps_its_entry() {
        let mut code = small_frame();
        let n = code.len();
        code[n - 1] = 0x00; // jmp elsewhere
        assert_eq!(body_start(&code, 0x1000, scratch), None);
    }

    #[test]
    fn a_check_that_writes_a_register_the_capture_reads_keeps_the_entry() {
        // lea r12,[rsp-398h]; cmp r12,[r14+10h]; jbe ...: only fine while R12 may be clobbered.
        let mut code = vec![
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xfc, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x50, 0x00, 0x00, 0x00, 0x55, 0xc3,
        ];
        code.resize(0x62, 0x90);
        let back = -(code.len() as i8 + 2);
        code.extend([0xeb, back as u8]); // jmp 0
        assert_eq!(body_start(&code, 0x1000, scratch), Some(0x1012));
        assert_eq!(body_start(&code, 0x1000, |_| false), None);
    }

    #[test]
    fn a_leaf_without_a_stack_check_keeps_its_entry() {
        // mov [rsp+8],rax; xor ecx,ecx; ret
        let code = [0x48, 0x89, 0x44, 0x24, 0x08, 0x31, 0xc9, 0xc3];
        assert_eq!(body_start(&code, 0x1000, scratch), None);
    }

    #[test]
    fn a_body_that_is_also_a_branch_target_keeps_the_entry() {
        let mut code = small_frame();
        // A backward jump to the body (a loop) right before the morestack path.
        let at = 0x58;
        code[at] = 0xeb;
        code[at + 1] = (0x06i32 - (at as i32 + 2)) as i8 as u8;
        assert_eq!(body_start(&code, 0x1000, scratch), None);
    }
}
