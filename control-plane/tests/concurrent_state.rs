//! Several `trellis-control-plane` processes started at once on a fresh state directory (a
//! deployment script minting tokens in parallel, two replicas starting together) must agree on
//! one token key and one CA: every token printed verifies with the key left on disk, and every
//! server's certificates chain to the root and intermediate left on disk.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use trellis_api::identity::identity_client::IdentityClient;
use trellis_api::identity::CertifyRequest;
use trellis_control_plane::token::TokenAuthority;

const MESH: &str = "services:\n  - name: hello\n    ports: [{port: 80}]\n";
const ROUNDS: usize = 4;
const TOKENS: usize = 8;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn concurrent_token_commands_on_a_fresh_dir_agree_on_one_key() {
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        // Spawned back to back, then waited for: they run at the same time.
        let children: Vec<_> = (0..TOKENS)
            .map(|i| {
                let guard = ChildGuard(
                    Command::new(BIN)
                        .args(["token", "--namespace", "default", "--service-account"])
                        .arg(format!("sa-{i}"))
                        .arg("--state-dir")
                        .arg(&state)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
                (i, guard)
            })
            .collect();
        let mut tokens = Vec::new();
        for (i, mut guard) in children {
            let out = guard.output();
            assert!(
                out.status.success(),
                "round {round}, token {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokens.push((i, String::from_utf8(out.stdout).unwrap().trim().to_owned()));
        }
        let key = TokenAuthority::load_or_create(&state).unwrap();
        let verified = tokens
            .iter()
            .filter(|(i, token)| {
                key.verify(token)
                    .is_ok_and(|grant| grant.service_account == format!("sa-{i}"))
            })
            .count();
        assert_eq!(verified, TOKENS, "round {round}: {tokens:?}");
        assert_eq!(names(&state), ["token.key"], "no temp files left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_serves_and_tokens_on_a_fresh_dir_agree_on_one_ca_and_key() {
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mesh.yaml");
        write_config(&config, MESH);
        let state = dir.path().join("state");
        // Token commands racing the servers for the token key.
        let token_children: Vec<_> = (0..2)
            .map(|_| {
                Command::new(BIN)
                    .args(["token", "--namespace", "default", "--service-account"])
                    .arg("hello")
                    .arg("--state-dir")
                    .arg(&state)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .map(ChildGuard)
            .collect();
        let config_ref = &config;
        let state_ref = &state;
        let servers: Vec<Served> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|_| s.spawn(move || start_serve(serve_command(config_ref, state_ref, &[]))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut tokens = Vec::new();
        for mut guard in token_children {
            let out = guard.output();
            assert!(out.status.success(), "round {round}");
            tokens.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
        }

        // What is on disk now is what every server uses.
        let key = TokenAuthority::load_or_create(&state).unwrap();
        let root_pem = std::fs::read_to_string(state.join("ca.crt.pem")).unwrap();
        let issuer_der = CertificateDer::from_pem_file(state.join("issuer.crt.pem"))
            .unwrap()
            .to_vec();
        for token in &tokens {
            assert!(key.verify(token).is_ok(), "round {round}: token verifies");
        }
        for (i, server) in servers.iter().enumerate() {
            assert_eq!(server.ca_pem, root_pem, "round {round}, server {i}: root");
            // TLS verifies against the root on disk, the token against the key on disk, and the
            // issued chain's intermediate is the one on disk.
            let channel = connect(server.addr, &root_pem)
                .await
                .unwrap_or_else(|e| panic!("round {round}, server {i}: {e:?}"));
            let id = "spiffe://trellis.local/ns/default/sa/hello";
            let csr = {
                let key = rcgen::KeyPair::generate().unwrap();
                let mut params = rcgen::CertificateParams::default();
                params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
                params.serialize_request(&key).unwrap().der().to_vec()
            };
            let issued = tokio::time::timeout(
                Duration::from_secs(5),
                IdentityClient::new(channel).certify(authorized(
                    CertifyRequest {
                        identity: id.into(),
                        csr_der: csr,
                    },
                    &tokens[0],
                )),
            )
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}, server {i}: {e:?}"))
            .into_inner();
            assert_eq!(issued.chain_der.len(), 2);
            assert_eq!(issued.chain_der[1], issuer_der, "round {round}, server {i}");
        }
        assert_eq!(
            names(&state),
            [
                "ca.crt.pem",
                "ca.key.pem",
                "issuer.crt.pem",
                "issuer.key.pem",
                "token.key"
            ]
        );
    }
}
