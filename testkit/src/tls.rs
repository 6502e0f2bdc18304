//! TLS for test servers: a CA and a certificate for `localhost`/127.0.0.1 made with `openssl`
//! (as README shows an operator making them), and connections that verify against that CA.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A test CA and one certificate it signed, usable for clients and routes.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    /// Makes them in `dir` (`ca.pem`, `server.pem`, `server-key.pem`, and the same pair as
    /// `route.pem`/`route-key.pem`, the names the shipped nats-server configs use).
    pub fn make(dir: &Path) -> Result<TestCertificates> {
        let openssl = |args: &[&str]| -> Result<()> {
            let output = std::process::Command::new("openssl")
                .current_dir(dir)
                .args(args)
                .output()
                .context("running openssl")?;
            anyhow::ensure!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let days = ["-days", "2"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &days,
                &[
                    "-keyout",
                    "ca-key.pem",
                    "-out",
                    "ca.pem",
                    "-subj",
                    "/CN=natster test CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server-key.pem",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        )?;
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca-key.pem",
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-extfile",
                    "ext.cnf",
                ][..],
                &days,
            ]
            .concat(),
        )?;
        std::fs::copy(dir.join("server.pem"), dir.join("route.pem"))?;
        std::fs::copy(dir.join("server-key.pem"), dir.join("route-key.pem"))?;
        Ok(TestCertificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        })
    }

    /// A nats-server `tls { }` block that requires TLS from clients.
    pub fn server_block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  timeout: 2\n}}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string()
        )
    }
}

/// Connects to `url` (one or several, comma-separated) with a creds file over TLS verified
/// against `ca`.
pub async fn connect_creds_tls(
    url: &str,
    creds: &Path,
    ca: &Path,
    name: &str,
) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .with_context(|| format!("reading {}", creds.display()))?
        .add_root_certificates(ca.to_path_buf())
        .require_tls(true)
        .name(name)
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>().as_slice())
        .await
        .with_context(|| format!("connecting over TLS as {name} to {url}"))
}
