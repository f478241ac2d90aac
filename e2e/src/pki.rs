//! Certificates and keys for one throw-away control plane, made with the `openssl` command (present on
//! every machine this runs on; no Rust crate in the workspace makes X.509 certificates): a CA, the API
//! server's serving certificate, an admin client certificate in `system:masters`, and the
//! service-account signing key pair.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::process::run;

/// Files of the control plane's PKI, all under one directory.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("openssl").current_dir(dir).args(args))
        .map(drop)
        .context("openssl failed: install it with `apt-get install openssl`")
}

/// Makes a certificate for `cn` (and organisation `org`) signed by the CA, with the given extensions.
fn signed_cert(dir: &Path, name: &str, subject: &str, extensions: &str) -> Result<()> {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext), extensions)
        .with_context(|| format!("writing {}", dir.join(&ext).display()))?;
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ],
    )
}

impl Pki {
    /// A serving certificate for 127.0.0.1 and localhost signed by the CA, as `<name>.crt` and
    /// `<name>.key` next to it; returns (certificate, key).
    pub fn serving_cert(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let dir = self
            .ca_cert
            .parent()
            .context("the CA certificate has no directory")?;
        signed_cert(
            dir,
            name,
            &format!("/CN={name}"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        Ok((
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        ))
    }

    /// Creates every file in `dir`.
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "7",
                "-subj",
                "/CN=sonde-e2e-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        )?;
        signed_cert(
            dir,
            "server",
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n",
        )?;
        signed_cert(
            dir,
            "admin",
            "/O=system:masters/CN=sonde-e2e-admin",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        })
    }
}
