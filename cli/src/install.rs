//! `trellis install`, `trellis upgrade` and `trellis uninstall`: the whole mesh as one YAML stream
//! on stdout (`trellis install | kubectl apply -f -`), like `linkerd install`. The objects come from
//! the generators the committed manifests come from (`trellis_control_plane::manifests`,
//! `trellis_injector::manifests`), so an install and `deploy/*.yaml` cannot disagree; this module
//! adds what those files leave to the operator: the mesh CA Secret (a fresh root and issuing
//! intermediate made by the control plane's own CA code; the root key is not kept, so it never
//! reaches the cluster), the injector's serving certificate with its webhook CA in the
//! `caBundle`, or cert-manager resources making both. `upgrade` reads the two Secrets back from
//! the cluster and re-emits them unchanged (renewing only a webhook certificate near expiry), so
//! applying it keeps the CA; `uninstall` prints the same objects, without any secret content, for
//! `kubectl delete -f -`. The per-namespace `trellis-ca` ConfigMaps are published by the control
//! plane itself (`trellis_control_plane::kubernetes::trust_bundle`).
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::Api;
use serde_json::{json, Value};
use trellis_control_plane::ca::{self, CaSource, CertificateAuthority};
use trellis_control_plane::manifests as control_plane;
use trellis_injector::manifests as injector;

use crate::pki::{self, ServingTls};

/// Where everything is installed (the control plane's generator names it).
pub const NAMESPACE: &str = control_plane::NAMESPACE;
/// Where the control plane's Deployment mounts the CA Secret; `ca.crt` is the root.
const CA_ROOT_MOUNT: &str = "/var/run/trellis/ca/ca.crt";
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "trellis");

#[derive(Debug, Clone, clap::Args)]
pub struct Images {
    /// The control plane's image.
    #[arg(long, default_value = control_plane::DEFAULT_IMAGE)]
    pub control_plane_image: String,
    /// The injector's image.
    #[arg(long, default_value = injector::DEFAULT_IMAGE)]
    pub injector_image: String,
    /// The proxy image the injector adds to pods.
    #[arg(long, default_value = trellis_injector::config::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Let cert-manager (cert-manager.io/v1, installed separately) make and renew the mesh CA and
    /// the webhook certificate instead of generating them into Secrets.
    #[arg(long, conflicts_with_all = ["ca_cert", "ca_key", "ca_root"])]
    pub cert_manager: bool,
    /// The mesh CA's issuing certificate (PEM) to use instead of a fresh one; with --ca-key.
    #[arg(long, value_name = "PEM", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// The root certificate (PEM) when --ca-cert is an intermediate; its key is not needed.
    #[arg(long, value_name = "PEM", requires = "ca_cert")]
    pub ca_root: Option<PathBuf>,
    #[command(flatten)]
    pub images: Images,
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// A kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The install used --cert-manager: emit its resources again instead of reading Secrets.
    #[arg(long)]
    pub cert_manager: bool,
    #[command(flatten)]
    pub images: Images,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The install used --cert-manager: list its Issuers and Certificates too.
    #[arg(long)]
    pub cert_manager: bool,
}

/// The mesh CA as the control plane's Secret holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshCa {
    /// The issuing certificate (`tls.crt`) and its key (`tls.key`).
    pub cert_pem: String,
    pub key_pem: String,
    /// The root certificate (`ca.crt`), the proxies' trust anchor.
    pub root_pem: String,
}

/// Where the certificates come from.
#[derive(Debug, Clone)]
pub enum Certificates {
    /// Written into Secrets by the stream itself.
    Secrets {
        mesh_ca: MeshCa,
        webhook: ServingTls,
    },
    /// Made by cert-manager from the stream's Issuers and Certificates.
    CertManager,
    /// Only the names (for `uninstall`).
    Names { cert_manager: bool },
}

pub fn install(args: InstallArgs) -> Result<()> {
    let certificates = if args.cert_manager {
        Certificates::CertManager
    } else {
        let mesh_ca = match (&args.ca_cert, &args.ca_key) {
            (Some(cert), Some(key)) => mesh_ca_from_files(cert, key, args.ca_root.as_deref())?,
            _ => fresh_mesh_ca()?,
        };
        let webhook = pki::webhook_tls(&pki::webhook_names(injector::NAME, NAMESPACE), None)?;
        Certificates::Secrets { mesh_ca, webhook }
    };
    print(&documents(&certificates, &args.images)?)
}

pub fn upgrade(args: UpgradeArgs) -> Result<()> {
    let certificates = if args.cert_manager {
        Certificates::CertManager
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        runtime.block_on(current_certificates(args.kubeconfig.as_deref()))?
    };
    print(&documents(&certificates, &args.images)?)
}

pub fn uninstall(args: UninstallArgs) -> Result<()> {
    let certificates = Certificates::Names {
        cert_manager: args.cert_manager,
    };
    let images = Images {
        control_plane_image: control_plane::DEFAULT_IMAGE.to_owned(),
        injector_image: injector::DEFAULT_IMAGE.to_owned(),
        proxy_image: trellis_injector::config::DEFAULT_PROXY_IMAGE.to_owned(),
    };
    // Names only, webhook first (no pod creation waits on an injector being deleted).
    let docs: Vec<Value> = (documents(&certificates, &images)?.into_iter().rev())
        .map(|doc| {
            let mut metadata = json!({"name": doc["metadata"]["name"]});
            if let Some(namespace) = doc["metadata"]["namespace"].as_str() {
                metadata["namespace"] = namespace.into();
            }
            json!({"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": metadata})
        })
        .collect();
    print(&docs)
}

fn print(docs: &[Value]) -> Result<()> {
    let text = trellis_injector::yaml::stream(docs).context("writing the YAML stream")?;
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing stdout")
}

/// Every object of an install, in apply order: the namespace, the certificates (Secrets or
/// cert-manager resources), the control plane, the injector, its webhook configuration last.
pub fn documents(certificates: &Certificates, images: &Images) -> Result<Vec<Value>> {
    let config = trellis_injector::InjectorConfig {
        proxy_image: images.proxy_image.clone(),
        ..Default::default()
    };
    if config.control_plane_namespace != NAMESPACE {
        bail!(
            "the injector's default namespace {} is not the control plane's {NAMESPACE}",
            config.control_plane_namespace
        );
    }
    let ca_bundle = match certificates {
        Certificates::Secrets { webhook, .. } => Some(webhook.ca_bundle_pem.clone().into_bytes()),
        _ => None,
    };
    let mut injector_docs = injector::documents(&injector::Options {
        image: images.injector_image.clone(),
        ca_bundle,
        config,
    })?
    .into_iter();
    let mut docs: Vec<Value> = injector_docs.next().into_iter().collect();
    if docs.first().map(|d| &d["kind"]) != Some(&json!("Namespace")) {
        bail!("the injector's manifests no longer start with the Namespace");
    }
    match certificates {
        Certificates::Secrets { mesh_ca, webhook } => {
            docs.push(tls_secret(
                control_plane::CA_SECRET,
                &mesh_ca.cert_pem,
                &mesh_ca.key_pem,
                &mesh_ca.root_pem,
            )?);
            docs.push(tls_secret(
                injector::TLS_SECRET,
                &webhook.cert_pem,
                &webhook.key_pem,
                &webhook.ca_bundle_pem,
            )?);
        }
        Certificates::Names {
            cert_manager: false,
        } => {
            docs.push(tls_secret(control_plane::CA_SECRET, "", "", "")?);
            docs.push(tls_secret(injector::TLS_SECRET, "", "", "")?);
        }
        Certificates::CertManager | Certificates::Names { cert_manager: true } => {
            docs.extend(cert_manager_resources());
        }
    }
    let mut control_plane_docs = control_plane::documents(&images.control_plane_image)?;
    trust_root_from_secret(&mut control_plane_docs)?;
    docs.extend(control_plane_docs);
    docs.extend(injector_docs);
    if matches!(
        certificates,
        Certificates::CertManager | Certificates::Names { cert_manager: true }
    ) {
        let webhook = (docs.iter_mut())
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .ok_or_else(|| anyhow!("the injector's manifests have no webhook configuration"))?;
        webhook["metadata"]["annotations"] = json!({
            "cert-manager.io/inject-ca-from": format!("{NAMESPACE}/{}", injector::TLS_SECRET)
        });
    }
    Ok(docs)
}

/// The control plane's Deployment reads the issuing certificate from the Secret's `tls.crt`; the
/// stream's Secret holds an intermediate there, so the Deployment is also given the root
/// (`ca.crt`) with `--ca-root`. A self-signed `tls.crt` (a root-only CA) works the same way.
fn trust_root_from_secret(docs: &mut [Value]) -> Result<()> {
    let args = (docs.iter_mut())
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["args"].as_array_mut())
        .ok_or_else(|| anyhow!("the control plane's manifests have no Deployment with args"))?;
    if !args.iter().any(|a| a == "--ca-root") {
        args.push("--ca-root".into());
        args.push(CA_ROOT_MOUNT.into());
    }
    Ok(())
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(PART_OF.0.to_owned(), PART_OF.1.to_owned())])
}

fn tls_secret(name: &str, cert: &str, key: &str, ca: &str) -> Result<Value> {
    let bytes = |text: &str| ByteString(text.as_bytes().to_vec());
    let data = (!cert.is_empty()).then(|| {
        BTreeMap::from([
            ("tls.crt".to_owned(), bytes(cert)),
            ("tls.key".to_owned(), bytes(key)),
            ("ca.crt".to_owned(), bytes(ca)),
        ])
    });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(labels()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data,
        ..Default::default()
    };
    serde_json::to_value(secret).context("serialising a Secret")
}

/// cert-manager.io/v1 resources: a self-signing Issuer; a root CA and the issuing intermediate
/// (Secret `trellis-control-plane-ca`, with the root as `ca.crt`); a webhook CA and the
/// injector's serving certificate (Secret `trellis-injector-tls`), whose CA cert-manager's
/// cainjector writes into the webhook's `caBundle`.
fn cert_manager_resources() -> Vec<Value> {
    let meta = |name: &str| json!({"name": name, "namespace": NAMESPACE, "labels": {PART_OF.0: PART_OF.1}});
    let issuer = |name: &str, spec: Value| {
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": meta(name),
               "spec": spec})
    };
    let ca = |name: &str, common_name: &str, issuer: &str, duration: &str| {
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": meta(name),
               "spec": {
                   "isCA": true, "commonName": common_name, "secretName": name,
                   "duration": duration, "renewBefore": "720h",
                   "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Never"},
                   "usages": ["cert sign", "crl sign"],
                   "issuerRef": {"name": issuer, "kind": "Issuer", "group": "cert-manager.io"}}})
    };
    let names = pki::webhook_names(injector::NAME, NAMESPACE);
    vec![
        issuer("trellis-selfsigned", json!({"selfSigned": {}})),
        ca(
            "trellis-root-ca",
            "Trellis Root CA",
            "trellis-selfsigned",
            "87600h",
        ),
        issuer(
            "trellis-root-ca",
            json!({"ca": {"secretName": "trellis-root-ca"}}),
        ),
        ca(
            control_plane::CA_SECRET,
            "Trellis Intermediate CA",
            "trellis-root-ca",
            "43800h",
        ),
        ca(
            "trellis-webhook-ca",
            "Trellis Webhook CA",
            "trellis-selfsigned",
            "87600h",
        ),
        issuer(
            "trellis-webhook-ca",
            json!({"ca": {"secretName": "trellis-webhook-ca"}}),
        ),
        json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
               "metadata": meta(injector::TLS_SECRET),
               "spec": {
                   "secretName": injector::TLS_SECRET, "commonName": names[0],
                   "dnsNames": names, "duration": "8760h", "renewBefore": "720h",
                   "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                   "usages": ["server auth", "digital signature"],
                   "issuerRef": {"name": "trellis-webhook-ca", "kind": "Issuer",
                                 "group": "cert-manager.io"}}}),
    ]
}

/// A fresh root and intermediate from the control plane's CA code. The root key stays in the
/// temporary directory, which is removed: the cluster only ever gets the intermediate's key.
fn fresh_mesh_ca() -> Result<MeshCa> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    CertificateAuthority::load(&CaSource::StateDir(dir.path().to_owned()))
        .context("generating the mesh CA")?;
    let read = |name: &str| {
        let path = dir.path().join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(MeshCa {
        cert_pem: read(ca::ISSUER_CERT_FILE)?,
        key_pem: read(ca::ISSUER_KEY_FILE)?,
        root_pem: read(ca::CERT_FILE)?,
    })
}

/// The operator's CA files, checked the way the control plane will load them.
fn mesh_ca_from_files(cert: &Path, key: &Path, root: Option<&Path>) -> Result<MeshCa> {
    let source = CaSource::Files {
        cert: cert.to_owned(),
        key: key.to_owned(),
        root: root.map(Path::to_owned),
    };
    let ca = CertificateAuthority::load(&source).context("--ca-cert/--ca-key/--ca-root")?;
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(MeshCa {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        root_pem: ca.root_pem().to_owned(),
    })
}

/// The CA and webhook certificates as the cluster holds them, for `upgrade`.
async fn current_certificates(kubeconfig: Option<&Path>) -> Result<Certificates> {
    let client = trellis_control_plane::kubernetes::client(kubeconfig).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let get = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt(name)
                .await
                .with_context(|| format!("reading Secret {NAMESPACE}/{name}"))?
                .ok_or_else(|| {
                    anyhow!(
                        "Secret {NAMESPACE}/{name} not found: is Trellis installed? (a first \
                         install is `trellis install | kubectl apply -f -`)"
                    )
                })
        }
    };
    let ca_secret = get(control_plane::CA_SECRET).await?;
    let mesh_ca = mesh_ca_from_secret(&ca_secret)?;

    let tls_secret = get(injector::TLS_SECRET).await?;
    let cert_pem = field(&tls_secret, "tls.crt")?;
    let key_pem = field(&tls_secret, "tls.key")?;
    let ca_bundle_pem = match optional_field(&tls_secret, "ca.crt")? {
        Some(bundle) => bundle,
        None => {
            // Installed by hand (`kubectl create secret tls`): the bundle is in the webhook.
            let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client);
            let webhook = webhooks.get_opt(injector::NAME).await.with_context(|| {
                format!("reading mutatingwebhookconfigurations/{}", injector::NAME)
            })?;
            let bundle = webhook
                .and_then(|w| w.webhooks)
                .and_then(|w| w.into_iter().next())
                .and_then(|w| w.client_config.ca_bundle)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned());
            bundle.ok_or_else(|| {
                anyhow!(
                    "Secret {NAMESPACE}/{}: no ca.crt, and mutatingwebhookconfigurations/{} has \
                     no caBundle: the webhook's CA is unknown",
                    injector::TLS_SECRET,
                    injector::NAME
                )
            })?
        }
    };
    let current = ServingTls {
        cert_pem,
        key_pem,
        ca_bundle_pem,
    };
    let webhook = renew_if_needed(current)?;
    Ok(Certificates::Secrets { mesh_ca, webhook })
}

/// The CA Secret, checked the way the control plane loads it (key matches, chain to the root).
pub fn mesh_ca_from_secret(secret: &Secret) -> Result<MeshCa> {
    let what = format!("Secret {NAMESPACE}/{}", control_plane::CA_SECRET);
    let cert_pem = field(secret, "tls.crt")?;
    let key_pem = field(secret, "tls.key")?;
    let root_pem = optional_field(secret, "ca.crt")?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let source = CaSource::Files {
        cert: write("tls.crt", &cert_pem)?,
        key: write("tls.key", &key_pem)?,
        root: root_pem
            .as_deref()
            .map(|root| write("ca.crt", root))
            .transpose()?,
    };
    let ca = CertificateAuthority::load(&source).with_context(|| what.clone())?;
    Ok(MeshCa {
        cert_pem,
        key_pem,
        root_pem: ca.root_pem().to_owned(),
    })
}

/// `current` unchanged, unless its certificate is within `pki::RENEW_BEFORE` of expiry or not
/// signed by its bundle: then a new CA and certificate, with the CA that signed the current one
/// kept in the bundle until the injector serves the new certificate.
pub fn renew_if_needed(current: ServingTls) -> Result<ServingTls> {
    let what = format!("Secret {NAMESPACE}/{} tls.crt", injector::TLS_SECRET);
    let leaf = pki::certificates(&what, current.cert_pem.as_bytes())?;
    let info = pki::inspect(&what, &leaf[0])?;
    let bundle = pki::certificates("the webhook's CA bundle", current.ca_bundle_pem.as_bytes())?;
    let signer = pki::signer(&leaf[0], &bundle);
    if signer.is_some() && !pki::near_expiry(info.not_after) {
        return Ok(current);
    }
    let why = match signer {
        None => "is not signed by the webhook's CA bundle".to_owned(),
        Some(_) => format!("expires in {} days", pki::days_left(info.not_after)),
    };
    eprintln!(
        "trellis: the injector's webhook certificate {why}; the stream holds a new one. After \
         applying it: kubectl -n {NAMESPACE} rollout restart deployment {}",
        injector::NAME
    );
    let previous = signer.map(pki::pem);
    pki::webhook_tls(
        &pki::webhook_names(injector::NAME, NAMESPACE),
        previous.as_deref(),
    )
}

fn optional_field(secret: &Secret, key: &str) -> Result<Option<String>> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    match secret.data.as_ref().and_then(|d| d.get(key)) {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes.0.clone())
            .map(Some)
            .map_err(|_| anyhow!("Secret {NAMESPACE}/{name}: {key} is not text (PEM)")),
    }
}

fn field(secret: &Secret, key: &str) -> Result<String> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    optional_field(secret, key)?
        .ok_or_else(|| anyhow!("Secret {NAMESPACE}/{name}: {key} is missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Images {
        Images {
            control_plane_image: control_plane::DEFAULT_IMAGE.to_owned(),
            injector_image: injector::DEFAULT_IMAGE.to_owned(),
            proxy_image: trellis_injector::config::DEFAULT_PROXY_IMAGE.to_owned(),
        }
    }

    #[test]
    fn a_secret_read_back_is_kept_as_is() {
        let mesh_ca = fresh_mesh_ca().unwrap();
        let webhook =
            pki::webhook_tls(&pki::webhook_names("trellis-injector", NAMESPACE), None).unwrap();
        let certificates = Certificates::Secrets {
            mesh_ca: mesh_ca.clone(),
            webhook: webhook.clone(),
        };
        let docs = documents(&certificates, &images()).unwrap();
        let secret: Secret = (docs.iter())
            .find(|d| d["metadata"]["name"] == control_plane::CA_SECRET)
            .map(|d| serde_json::from_value(d.clone()).unwrap())
            .unwrap();
        assert_eq!(mesh_ca_from_secret(&secret).unwrap(), mesh_ca);
        assert_eq!(renew_if_needed(webhook.clone()).unwrap(), webhook);
    }

    #[test]
    fn a_secret_with_a_foreign_key_is_refused_naming_it() {
        let mut a = fresh_mesh_ca().unwrap();
        let b = fresh_mesh_ca().unwrap();
        a.key_pem = b.key_pem;
        let value = tls_secret(
            control_plane::CA_SECRET,
            &a.cert_pem,
            &a.key_pem,
            &a.root_pem,
        )
        .unwrap();
        let secret: Secret = serde_json::from_value(value).unwrap();
        let err = format!("{:#}", mesh_ca_from_secret(&secret).unwrap_err());
        assert!(
            err.starts_with("Secret trellis-system/trellis-control-plane-ca: "),
            "{err}"
        );
        assert!(
            err.contains("the key does not match the certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_webhook_certificate_from_another_ca_is_renewed_keeping_nothing_stale() {
        let names = pki::webhook_names("trellis-injector", NAMESPACE);
        let a = pki::webhook_tls(&names, None).unwrap();
        let b = pki::webhook_tls(&names, None).unwrap();
        let mismatched = ServingTls {
            ca_bundle_pem: b.ca_bundle_pem,
            ..a
        };
        let renewed = renew_if_needed(mismatched.clone()).unwrap();
        assert_ne!(renewed.cert_pem, mismatched.cert_pem);
        // Nothing signed the old certificate, so the new bundle holds only the new CA.
        let bundle = pki::certificates("bundle", renewed.ca_bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle.len(), 1);
    }
}
