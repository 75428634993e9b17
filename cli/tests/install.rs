//! `trellis install`, `upgrade` and `uninstall` as an operator runs them: the binary's stdout is
//! parsed as the YAML stream `kubectl apply -f -` would get, every object is read back as its
//! k8s-openapi type, and the certificates in it are checked the way their consumers use them (the
//! control plane loads its CA Secret with the Deployment's flags; the API server verifies the
//! injector's certificate with the webhook's caBundle). `upgrade` runs against the FAKE API server
//! (`support/`) holding an install's Secrets.
mod support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use support::{documents, kinds_and_names, secret_data, stderr, stdout, trellis, FakeApiServer};
use trellis_control_plane::ca::{CaSource, CertificateAuthority};
use x509_parser::prelude::{FromDer, X509Certificate};

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    (docs.iter())
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pem_certs(pem: &str) -> Vec<Vec<u8>> {
    (x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()))
        .map(|p| p.unwrap().contents)
        .collect()
}

/// Whether a certificate of `bundle` signed `leaf`.
fn verifies(bundle: &str, leaf: &str) -> bool {
    let leaf = &pem_certs(leaf)[0];
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    pem_certs(bundle).iter().any(|ca| {
        let (_, ca) = X509Certificate::from_der(ca).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    })
}

fn ca_bundle(docs: &[Value]) -> String {
    let webhook: MutatingWebhookConfiguration = serde_json::from_value(
        find(docs, "MutatingWebhookConfiguration", "trellis-injector").clone(),
    )
    .unwrap();
    let bundle = webhook.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    String::from_utf8(bundle.0).unwrap()
}

async fn install(args: &[&str]) -> Vec<Value> {
    let output = trellis(&[&["install"], args].concat()).await;
    assert!(output.status.success(), "{}", stderr(&output));
    documents(&stdout(&output))
}

#[tokio::test]
async fn install_emits_everything_in_apply_order() {
    let docs = install(&[]).await;
    let expected = [
        ("Namespace", "trellis-system"),
        ("Secret", "trellis-control-plane-ca"),
        ("Secret", "trellis-injector-tls"),
        (
            "CustomResourceDefinition",
            "trafficpolicies.policy.trellis.io",
        ),
        ("ServiceAccount", "trellis-control-plane"),
        ("ClusterRole", "trellis-control-plane"),
        ("ClusterRoleBinding", "trellis-control-plane"),
        ("Service", "trellis-control-plane"),
        ("Deployment", "trellis-control-plane"),
        ("PodDisruptionBudget", "trellis-control-plane"),
        ("ServiceAccount", "trellis-injector"),
        ("ConfigMap", "trellis-injector-config"),
        ("Service", "trellis-injector"),
        ("Deployment", "trellis-injector"),
        ("PodDisruptionBudget", "trellis-injector"),
        ("MutatingWebhookConfiguration", "trellis-injector"),
    ];
    let expected: Vec<(String, String)> = (expected.iter())
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    assert_eq!(kinds_and_names(&docs), expected);
    // Everything is labelled as Trellis's (what `kubectl delete -l` and `uninstall` rely on).
    for doc in &docs {
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/part-of"], "trellis",
            "{}",
            doc["kind"]
        );
    }

    // The control plane: two replicas, and flags that load the CA Secret as the stream holds it.
    let deployment: Deployment =
        serde_json::from_value(find(&docs, "Deployment", "trellis-control-plane").clone()).unwrap();
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap().join(" ");
    assert!(
        args.contains("--ca-cert /var/run/trellis/ca/tls.crt --ca-key /var/run/trellis/ca/tls.key"),
        "{args}"
    );
    assert!(
        args.ends_with("--ca-root /var/run/trellis/ca/ca.crt"),
        "{args}"
    );
    let ca_volume = (pod.volumes.unwrap().into_iter())
        .find(|v| v.name == "ca")
        .unwrap();
    assert_eq!(
        ca_volume.secret.unwrap().secret_name.as_deref(),
        Some("trellis-control-plane-ca")
    );

    // The CA Secret loads as the control plane loads it: an intermediate that chains to ca.crt.
    let secret = find(&docs, "Secret", "trellis-control-plane-ca");
    let typed: Secret = serde_json::from_value(secret.clone()).unwrap();
    assert_eq!(typed.type_.as_deref(), Some("kubernetes.io/tls"));
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let path = dir.path().join(key);
        std::fs::write(&path, secret_data(secret, key)).unwrap();
        paths.push(path);
    }
    let ca = CertificateAuthority::load(&CaSource::Files {
        cert: paths[0].clone(),
        key: paths[1].clone(),
        root: Some(paths[2].clone()),
    })
    .unwrap();
    assert!(
        ca.intermediate_der().is_some(),
        "tls.crt is the issuing intermediate"
    );
    assert_eq!(ca.root_pem(), secret_data(secret, "ca.crt"));
    // The root's key is nowhere in the stream.
    assert!(!secret_data(secret, "tls.crt").contains(&secret_data(secret, "ca.crt")));

    // The webhook's caBundle verifies the injector's serving certificate, which names the Service.
    let tls = find(&docs, "Secret", "trellis-injector-tls");
    let bundle = ca_bundle(&docs);
    assert!(verifies(&bundle, &secret_data(tls, "tls.crt")));
    assert_eq!(bundle, secret_data(tls, "ca.crt"));
    assert!(!verifies(
        &secret_data(secret, "ca.crt"),
        &secret_data(tls, "tls.crt")
    ));
    let leaf = &pem_certs(&secret_data(tls, "tls.crt"))[0];
    let (_, leaf) = X509Certificate::from_der(leaf).unwrap();
    let names = format!(
        "{:?}",
        leaf.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        names.contains("trellis-injector.trellis-system.svc"),
        "{names}"
    );

    // Each install makes its own CA.
    let again = install(&[]).await;
    assert_ne!(
        secret_data(find(&again, "Secret", "trellis-control-plane-ca"), "ca.crt"),
        secret_data(secret, "ca.crt")
    );
}

#[tokio::test]
async fn install_with_cert_manager_emits_issuers_and_certificates_instead_of_secrets() {
    let docs = install(&["--cert-manager"]).await;
    let names = kinds_and_names(&docs);
    assert!(!names.iter().any(|(kind, _)| kind == "Secret"), "{names:?}");
    let cert_manager: Vec<(String, String)> = (names.iter())
        .filter(|(kind, _)| kind == "Issuer" || kind == "Certificate")
        .cloned()
        .collect();
    let expected = [
        ("Issuer", "trellis-selfsigned"),
        ("Certificate", "trellis-root-ca"),
        ("Issuer", "trellis-root-ca"),
        ("Certificate", "trellis-control-plane-ca"),
        ("Certificate", "trellis-webhook-ca"),
        ("Issuer", "trellis-webhook-ca"),
        ("Certificate", "trellis-injector-tls"),
    ];
    let expected: Vec<(String, String)> = (expected.iter())
        .map(|(k, n)| (k.to_string(), n.to_string()))
        .collect();
    assert_eq!(cert_manager, expected);
    let intermediate = find(&docs, "Certificate", "trellis-control-plane-ca");
    assert_eq!(intermediate["apiVersion"], "cert-manager.io/v1");
    assert_eq!(
        intermediate["spec"]["secretName"],
        "trellis-control-plane-ca"
    );
    assert_eq!(intermediate["spec"]["isCA"], true);
    assert_eq!(intermediate["spec"]["issuerRef"]["name"], "trellis-root-ca");
    let serving = find(&docs, "Certificate", "trellis-injector-tls");
    assert_eq!(
        serving["spec"]["dnsNames"][0],
        "trellis-injector.trellis-system.svc"
    );
    let webhook = find(&docs, "MutatingWebhookConfiguration", "trellis-injector");
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "trellis-system/trellis-injector-tls"
    );
    assert!(webhook["webhooks"][0]["clientConfig"]["caBundle"].is_null());
}

#[tokio::test]
async fn install_with_a_bad_ca_names_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("ca.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let key = dir.path().join("ca.key");
    std::fs::write(&key, "not a key").unwrap();
    let output = trellis(&[
        "install",
        "--ca-cert",
        cert.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "nothing for kubectl to apply");
    let err = stderr(&output);
    assert!(
        err.starts_with("trellis: --ca-cert/--ca-key/--ca-root: "),
        "{err}"
    );
    assert!(err.contains(key.to_str().unwrap()), "{err}");
}

#[tokio::test]
async fn uninstall_lists_the_same_objects_without_secret_content() {
    let installed = install(&[]).await;
    let output = trellis(&["uninstall"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let docs = documents(&stdout(&output));
    let mut expected = kinds_and_names(&installed);
    expected.reverse();
    assert_eq!(kinds_and_names(&docs), expected);
    for doc in &docs {
        let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 3, "only apiVersion, kind, metadata: {doc}");
        assert!(doc["data"].is_null());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_the_cluster_ca_and_webhook_certificate() {
    let installed = install(&["--control-plane-image", "example.com/cp:0.0.9"]).await;
    let fake = FakeApiServer::start().await;
    for name in ["trellis-control-plane-ca", "trellis-injector-tls"] {
        fake.put_object(find(&installed, "Secret", name).clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let output = trellis(&["upgrade", "--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output), "", "nothing renewed");
    let upgraded = documents(&stdout(&output));
    assert_eq!(kinds_and_names(&upgraded), kinds_and_names(&installed));
    for name in ["trellis-control-plane-ca", "trellis-injector-tls"] {
        assert_eq!(
            find(&upgraded, "Secret", name),
            find(&installed, "Secret", name)
        );
    }
    assert_eq!(ca_bundle(&upgraded), ca_bundle(&installed));
    // The new version's manifests, not the installed ones.
    let image = &find(&upgraded, "Deployment", "trellis-control-plane")["spec"]["template"]["spec"]
        ["containers"][0]["image"];
    assert_eq!(image, "ghcr.io/trellis-mesh/trellis-control-plane:0.1.0");

    // A webhook Secret whose CA is not the stored one gets a new certificate and CA.
    let mut tls = find(&installed, "Secret", "trellis-injector-tls").clone();
    let other = install(&[]).await;
    tls["data"]["ca.crt"] =
        find(&other, "Secret", "trellis-injector-tls")["data"]["ca.crt"].clone();
    fake.put_object(tls.clone());
    let output = trellis(&["upgrade", "--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with(
            "trellis: the injector's webhook certificate is not signed by the webhook's CA bundle"
        ),
        "{}",
        stderr(&output)
    );
    let renewed = documents(&stdout(&output));
    let renewed_tls = find(&renewed, "Secret", "trellis-injector-tls");
    assert_ne!(renewed_tls["data"]["tls.crt"], tls["data"]["tls.crt"]);
    assert!(verifies(
        &ca_bundle(&renewed),
        &secret_data(renewed_tls, "tls.crt")
    ));
    // The CA is still kept.
    assert_eq!(
        find(&renewed, "Secret", "trellis-control-plane-ca"),
        find(&installed, "Secret", "trellis-control-plane-ca")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_an_install_says_what_is_missing() {
    let fake = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = fake.kubeconfig(dir.path());
    let output = trellis(&["upgrade", "--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    assert_eq!(
        stderr(&output),
        "trellis: Secret trellis-system/trellis-control-plane-ca not found: is Trellis \
         installed? (a first install is `trellis install | kubectl apply -f -`)\n"
    );
}
