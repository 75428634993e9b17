//! testssl.sh (the Debian package) against a sidecar's inbound port, with a mesh client
//! certificate: no protocol older than TLS 1.2, no weak cipher, no known vulnerability. Any
//! finding rated MEDIUM or worse fails the test, except the certificate findings that a private
//! mesh CA, SPIFFE IDs (not host names) and short-lived certificates produce by design; those are
//! listed in `EXPECTED_CERT_FINDINGS` and printed.
//!
//! Without the binary the test prints that it was skipped, loudly, and fails when `CI=true`
//! (`.ci/run` installs the package).

use rcgen::{CertificateParams, DistinguishedName, Issuer, KeyPair, SanType};
use std::path::{Path, PathBuf};
use std::process::Command;
use trellis_tests::{Mesh, Service};

/// Findings about the certificate that are the design: it carries a SPIFFE ID and no host name,
/// chains to the mesh's own root (which no public store holds), lives hours rather than months,
/// and is never revoked (it expires instead), so it has no CRL or OCSP URL.
const EXPECTED_CERT_FINDINGS: &[&str] = &[
    "cert_trust",
    "cert_expirationStatus",
    "cert_notAfter",
    "cert_revocation",
    "cert_chain_of_trust",
    "cert_commonName",
    "cert_subjectAltName",
    "cert_crlDistributionPoints",
    "cert_ocspURL",
    "OCSP_stapling",
    "DNS_CAArecord",
];

fn find_testssl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["testssl", "testssl.sh"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A client certificate and key (PEM) for a mesh identity, signed by the mesh root.
fn client_pem(mesh: &Mesh) -> (String, String) {
    let key_pem = std::fs::read_to_string(mesh.state_dir.join("ca.key.pem")).expect("root key");
    let root = Issuer::from_ca_cert_pem(mesh.ca_pem(), KeyPair::from_pem(&key_pem).expect("key"))
        .expect("issuer");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let id = "spiffe://trellis.local/ns/default/sa/testssl";
    params.subject_alt_names = vec![SanType::URI(id.try_into().expect("uri"))];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &root).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

/// How to hand testssl the client certificate: `--mtls` where supported (3.2+), otherwise an
/// `openssl` wrapper that adds `-cert/-key` to every `s_client` (3.0.x).
fn client_auth_args(testssl: &Path, dir: &Path, cert: &str, key: &str) -> Vec<String> {
    let (cert_file, key_file) = (dir.join("client.crt.pem"), dir.join("client.key.pem"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let help = Command::new(testssl)
        .arg("--help")
        .output()
        .expect("testssl --help");
    if String::from_utf8_lossy(&help.stdout).contains("--mtls") {
        let both = dir.join("client.pem");
        std::fs::write(&both, format!("{cert}{key}")).expect("pem");
        return vec!["--mtls".into(), both.display().to_string()];
    }
    let wrapper = dir.join("openssl");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = s_client ]; then shift; exec openssl s_client -cert {} -key {} \"$@\"; fi\nexec openssl \"$@\"\n",
        cert_file.display(),
        key_file.display()
    );
    std::fs::write(&wrapper, script).expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    vec!["--openssl".into(), wrapper.display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testssl_finds_nothing_medium_or_worse_on_the_inbound_port() {
    let Some(testssl) = find_testssl() else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        eprintln!("\n**********************************************************************");
        eprintln!("** SKIPPED testssl_finds_nothing_medium_or_worse_on_the_inbound_port:");
        eprintln!("** testssl.sh is not installed (apt-get install testssl.sh).");
        eprintln!("**********************************************************************\n");
        assert!(!ci, "testssl.sh is required in CI (CI=true)");
        return;
    };
    let mesh = Mesh::builder()
        .service(Service::http1("hello"))
        .start()
        .await
        .expect("mesh starts");
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = client_pem(&mesh);
    let mut args = client_auth_args(&testssl, dir.path(), &cert, &key);
    let json = dir.path().join("findings.json");
    let target = mesh.workload("hello").inbound.to_string();
    args.extend(
        [
            "--quiet",
            "--warnings",
            "off",
            "--color",
            "0",
            "--protocols",
            "--standard",
            "--server-defaults",
            "--server-preference",
            "--vulnerable",
            "--jsonfile",
        ]
        .map(String::from),
    );
    args.push(json.display().to_string());
    args.push(target);
    let output = tokio::task::spawn_blocking(move || Command::new(testssl).args(&args).output())
        .await
        .expect("join")
        .expect("testssl runs");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from testssl ({e}); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let findings: Vec<serde_json::Value> = serde_json::from_str(&text).expect("testssl JSON");
    let mut bad = Vec::new();
    for f in &findings {
        let id = f["id"].as_str().unwrap_or("");
        let severity = f["severity"].as_str().unwrap_or("");
        let finding = f["finding"].as_str().unwrap_or("");
        let serious = matches!(severity, "MEDIUM" | "HIGH" | "CRITICAL");
        if serious && EXPECTED_CERT_FINDINGS.iter().any(|p| id.starts_with(p)) {
            println!("expected for a mesh certificate: {id} {severity}: {finding}");
        } else if serious || (severity == "FATAL") {
            bad.push(format!("{id} {severity}: {finding}"));
        }
    }
    // Prove that testssl reached the TLS stack: TLS 1.3 offered, legacy protocols not.
    let offered = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or("")
            .to_string()
    };
    assert!(
        offered("TLS1_3").starts_with("offered"),
        "TLS1_3: {}",
        offered("TLS1_3")
    );
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert!(
            offered(old).starts_with("not offered"),
            "{old}: {}",
            offered(old)
        );
    }
    assert!(
        bad.is_empty(),
        "testssl findings rated MEDIUM or worse:\n{}",
        bad.join("\n")
    );
}
