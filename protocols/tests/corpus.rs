//! Every input kept in the fuzz corpus (protocols/fuzz/corpus/<target>/, including minimised crashes)
//! replayed through the fuzz driver on stable Rust, so the corpus is a regression suite in CI.
use std::path::Path;

use sonde_protocols::Kind;

#[path = "../fuzz/src/driver.rs"]
mod driver;

#[test]
fn every_kept_fuzz_input_replays_without_panicking() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut replayed = Vec::new();
    for target in std::fs::read_dir(&corpus).unwrap() {
        let target = target.unwrap();
        let name = target.file_name().into_string().unwrap();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("fuzz/corpus/{name} is named after no protocol"));
        let mut inputs: Vec<_> = std::fs::read_dir(target.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            driver::drive(kind, &data);
        }
        replayed.push((kind, inputs.len()));
    }
    for kind in Kind::ALL {
        assert!(
            replayed.iter().any(|(k, n)| *k == kind && *n > 0),
            "the {kind:?} fuzz corpus is missing or empty"
        );
    }
}
