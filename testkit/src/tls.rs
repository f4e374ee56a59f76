//! Certificates for TLS tests: a self-signed certificate for the loopback names, written
//! where a coordinator (`--tls-cert`, `--tls-key`) and a client's CA file can read it.

use std::path::PathBuf;

/// A fresh directory under the system's temp dir, named `name` and this process's id,
/// holding `cert.pem` and `key.pem`: a self-signed certificate for `127.0.0.1` and
/// `localhost` (which is also the CA file a client trusts) and its key.
pub fn self_signed_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("a self-signed certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).expect("write key.pem");
    dir
}
