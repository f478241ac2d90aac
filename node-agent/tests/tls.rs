//! `sonde-agent --tls-cert-file/--tls-key-file` with an unusable key: the agent must stop at once
//! with the flag, the file and what is wrong, not start serving plain HTTP. Needs the openssl CLI.
use std::process::Command;

#[test]
fn a_bad_key_file_stops_the_agent_with_the_flag_and_the_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("this test needs the openssl CLI (apt-get install openssl)");
    assert!(out.status.success(), "{out:?}");
    // A common mistake: the certificate given as the key.
    std::fs::copy(&cert, &key).expect("copy");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    let out = Command::new(env!("CARGO_BIN_EXE_sonde-agent"))
        .arg("--manifests")
        .arg(&manifests)
        .args(["--listen", "127.0.0.1:0", "--tls-cert-file"])
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .env("RUST_LOG", "info")
        .output()
        .expect("run sonde-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "--tls-key-file: no private key found in {}: expected a PEM PRIVATE KEY block",
        key.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}
