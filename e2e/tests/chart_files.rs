//! The chart ships copies of `crds/` (Helm does not package symlinks); they must not drift.
use std::path::Path;

#[test]
fn chart_crds_are_identical_to_the_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let generated = root.join("crds");
    let chart = root.join("charts/sonde/crds");
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&generated),
        names(&chart),
        "charts/sonde/crds must hold exactly the files of crds/: run `cp crds/*.yaml charts/sonde/crds/`"
    );
    for name in names(&generated) {
        let a = std::fs::read(generated.join(&name)).unwrap();
        let b = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/sonde/crds/{name} differs from crds/{name}: run `cp crds/*.yaml charts/sonde/crds/`"
        );
    }
}
