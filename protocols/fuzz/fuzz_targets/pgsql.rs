#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sonde_protocols_fuzz::drive(sonde_protocols::Kind::Pgsql, data));
