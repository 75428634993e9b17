//! The images and the manifests agree (issue 17): every image the generated and committed
//! manifests name (the control plane's and the injector's Deployments, the proxy image of the
//! injector's config, which the injected sidecar and `trellis-init` run) is built by a stage of
//! the Dockerfile whose documented `docker build --target … -t …` command gives it exactly that
//! name, tagged with the workspace version; that stage is a `scratch` image that has, on its
//! `PATH`, the command the manifest runs, runs as the uid the manifest sets, and, for the
//! redirect init step, carries iptables; the README shows the same commands. Pure parsing: no
//! container runtime is needed. `static_binary.rs` proves the binary and the proxy's file system
//! work.

#[path = "images/dockerfile.rs"]
mod dockerfile;

use dockerfile::{Dockerfile, Stage};
use serde_json::Value;
use trellis_injector::annotations::Overrides;
use trellis_injector::config::InjectorConfig;
use trellis_injector::sidecar;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A container some manifest (or the injector, for a pod) runs.
#[derive(Debug)]
struct Container {
    /// Where it comes from, for messages.
    origin: String,
    image: String,
    /// `command[0]` and the postStart exec hook's, which the runtime finds on the image's PATH.
    executables: Vec<String>,
    run_as_user: Option<i64>,
    /// Runs `trellis-proxy redirect`, which shells out to iptables and ip6tables.
    redirect: bool,
}

fn container(origin: String, c: &Value) -> Container {
    let first = |v: &Value| v.get(0).and_then(Value::as_str).map(str::to_string);
    let mut executables: Vec<String> = c.get("command").and_then(first).into_iter().collect();
    if let Some(hook) = c
        .pointer("/lifecycle/postStart/exec/command")
        .and_then(first)
    {
        executables.push(hook);
    }
    let args = c.get("args").cloned().unwrap_or(Value::Null);
    Container {
        origin,
        image: c["image"]
            .as_str()
            .unwrap_or_else(|| panic!("a container without an image: {c}"))
            .to_string(),
        executables,
        run_as_user: c
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64),
        redirect: args.get(0).and_then(Value::as_str) == Some("redirect"),
    }
}

/// Every container of every pod template in `docs`.
fn containers_in(what: &str, docs: &[Value]) -> Vec<Container> {
    let mut found = Vec::new();
    for doc in docs {
        let name = format!(
            "{what}: {} {}",
            doc["kind"].as_str().unwrap_or("?"),
            doc.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
        if let Some(spec) = doc.pointer("/spec/template/spec") {
            for key in ["initContainers", "containers"] {
                for c in spec[key].as_array().into_iter().flatten() {
                    found.push(container(format!("{name} {key}"), c));
                }
            }
        }
    }
    found
}

fn injector_options() -> trellis_injector::manifests::Options {
    trellis_injector::manifests::Options {
        image: trellis_injector::manifests::DEFAULT_IMAGE.to_string(),
        ca_bundle: None,
        config: InjectorConfig::default(),
    }
}

/// What the manifests make the cluster run: the two Deployments, and the containers the
/// injector adds to a pod with the config its ConfigMap holds (native sidecar and the fallback).
fn manifest_containers() -> Vec<Container> {
    let control_plane = trellis_control_plane::manifests::documents(
        trellis_control_plane::manifests::DEFAULT_IMAGE,
    )
    .expect("control plane manifests");
    let injector =
        trellis_injector::manifests::documents(&injector_options()).expect("injector manifests");
    let mut all = containers_in("control plane manifests", &control_plane);
    all.extend(containers_in("injector manifests", &injector));

    let configs: Vec<&str> = injector
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| d.pointer("/data/injector.yaml").and_then(Value::as_str))
        .collect();
    assert_eq!(configs.len(), 1, "one injector config in the manifests");
    let config = InjectorConfig::from_yaml(configs[0]).expect("the injector config parses");
    let json = |c| serde_json::to_value(c).expect("container as JSON");
    all.push(container(
        "injected pod: init container".into(),
        &json(sidecar::init_container(&config, &Overrides::default())),
    ));
    for native in [true, false] {
        let proxy = sidecar::proxy_container(
            &config,
            "web",
            "info",
            &sidecar::Resources::default(),
            native,
            None,
        );
        all.push(container(
            format!("injected pod: proxy (native sidecar: {native})"),
            &json(proxy),
        ));
    }
    all
}

/// `image:` and `proxyImage:` values of the committed manifests (what users apply).
fn committed_images() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for file in ["deploy/control-plane.yaml", "deploy/injector.yaml"] {
        let path = dockerfile::workspace_root().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for line in text.lines() {
            let line = line.trim().trim_start_matches("- ");
            for key in ["image:", "proxyImage:"] {
                if let Some(image) = line.strip_prefix(key) {
                    found.push((file.to_string(), image.trim().trim_matches('"').to_string()));
                }
            }
        }
    }
    found
}

/// The stage the documented command for `image` builds, checked to be a final image.
fn stage_building<'a>(dockerfile: &'a Dockerfile, image: &str, origin: &str) -> &'a Stage {
    let build =
        dockerfile.build_of(image).unwrap_or_else(|| {
            panic!(
            "{origin} names {image}, which no documented `docker build` in the Dockerfile builds \
             (documented: {:?})",
            dockerfile.builds.iter().map(|b| &b.image).collect::<Vec<_>>()
        )
        });
    let stage = dockerfile.stage(&build.target).unwrap_or_else(|| {
        panic!(
            "`{}` builds stage {}, which the Dockerfile does not have",
            build.command, build.target
        )
    });
    assert_eq!(
        stage.from, "scratch",
        "stage {} ({image}) must be a scratch image",
        build.target
    );
    stage
}

#[test]
fn every_image_the_manifests_name_is_built_by_a_documented_stage_with_the_workspace_version() {
    let dockerfile = dockerfile::load();
    let containers = manifest_containers();
    // The three images: control plane, injector, proxy (sidecar and init).
    for expected in ["control-plane", "injector", "proxy"] {
        assert!(
            containers
                .iter()
                .any(|c| c.image.contains(&format!("/trellis-{expected}:"))),
            "no manifest container runs the {expected} image: {containers:#?}"
        );
    }
    let mut named: Vec<(String, String)> = containers
        .iter()
        .map(|c| (c.origin.clone(), c.image.clone()))
        .collect();
    let committed = committed_images();
    assert!(
        committed.len() >= 3,
        "deploy/*.yaml name the control plane, injector and proxy images: {committed:?}"
    );
    named.extend(committed);
    for (origin, image) in &named {
        stage_building(&dockerfile, image, origin);
        let (_, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{origin}: {image} has no tag"));
        assert_eq!(
            tag, VERSION,
            "{origin}: the tag of {image} is not the workspace version"
        );
    }
}

#[test]
fn each_image_runs_what_its_manifests_run_as_the_uid_they_set() {
    let dockerfile = dockerfile::load();
    for c in manifest_containers() {
        let stage = stage_building(&dockerfile, &c.image, &c.origin);
        let path = stage.path();
        assert!(!c.executables.is_empty(), "{}: no command", c.origin);
        for executable in &c.executables {
            let copy = stage.installed(executable).unwrap_or_else(|| {
                panic!(
                    "{}: runs `{executable}`, which the stage of {} does not install",
                    c.origin, c.image
                )
            });
            let dir = copy.dest.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            assert!(
                path.iter().any(|p| p == dir),
                "{}: `{executable}` is installed in {dir}, not on the image's PATH {path:?}",
                c.origin
            );
            assert_eq!(
                (copy.from.as_deref(), copy.src.as_str()),
                (Some("builder"), format!("/out/{executable}").as_str()),
                "{}: `{executable}` must be the binary the builder stage built",
                c.origin
            );
        }
        let (uid, gid) = stage
            .user()
            .unwrap_or_else(|| panic!("{}: no USER", c.image));
        assert_ne!(uid, 0, "{}: the image must not default to root", c.image);
        assert_eq!(gid, Some(uid), "{}: USER uid:gid", c.image);
        match c.run_as_user {
            // The init container is root by its securityContext, whatever the image says.
            Some(0) => assert!(c.redirect, "{}: only the redirect runs as root", c.origin),
            Some(user) => assert_eq!(
                i64::from(uid),
                user,
                "{}: the image's USER differs from the manifest's runAsUser",
                c.origin
            ),
            None => panic!("{}: no runAsUser", c.origin),
        }
        if c.redirect {
            // The redirect runs iptables and ip6tables: rootfs.sh --iptables puts them in
            // /usr/sbin (static_binary.rs runs them from there).
            assert!(
                path.iter().any(|p| p == "/usr/sbin"),
                "{}: iptables (/usr/sbin) is not on the PATH {path:?}",
                c.origin
            );
            assert!(
                has_iptables(&dockerfile, stage),
                "{}: the image of the redirect step has no iptables",
                c.origin
            );
        }
    }
    // The proxy's uid is the one the redirect exempts.
    let proxy = stage_building(
        &dockerfile,
        trellis_injector::config::DEFAULT_PROXY_IMAGE,
        "the injector's config",
    );
    assert_eq!(
        proxy.user().map(|(uid, _)| i64::from(uid)),
        Some(InjectorConfig::default().proxy_uid)
    );
}

/// Whether the stage copies in a tree that some stage made with `rootfs.sh TREE --iptables`.
fn has_iptables(dockerfile: &Dockerfile, stage: &Stage) -> bool {
    stage.copies().iter().any(|copy| {
        let Some(from) = copy.from.as_deref().and_then(|f| dockerfile.stage(f)) else {
            return false;
        };
        let tree = copy.src.trim_end_matches('/');
        from.all("RUN")
            .any(|run| run.contains(&format!("rootfs.sh {tree} --iptables")))
    })
}

#[test]
fn the_documented_builds_cover_every_final_stage_and_the_readme_shows_them() {
    let dockerfile = dockerfile::load();
    assert!(!dockerfile.builds.is_empty(), "no documented docker build");
    let readme_path = dockerfile::workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    for build in &dockerfile.builds {
        assert!(
            dockerfile.stage(&build.target).is_some(),
            "`{}`: no stage {}",
            build.command,
            build.target
        );
        assert!(
            build.image.ends_with(&format!(":{VERSION}")),
            "`{}`: the tag is not the workspace version {VERSION}",
            build.command
        );
        assert!(
            readme.lines().any(|l| l.trim() == build.command),
            "README.md does not show `{}`",
            build.command
        );
    }
    for stage in dockerfile.stages.iter().filter(|s| s.from == "scratch") {
        let name = stage.name.as_deref().expect("final stages are named");
        assert!(
            dockerfile.builds.iter().any(|b| b.target == name),
            "stage {name} is an image no documented command builds"
        );
        assert!(
            stage.all("ENTRYPOINT").next().is_some(),
            "stage {name} has no ENTRYPOINT"
        );
    }
}

/// `rust:1.95.0-bookworm` → (1, 95).
fn rust_image_version(from: &str) -> Option<(u32, u32)> {
    let tag = from.strip_prefix("rust:")?.strip_suffix("-bookworm")?;
    let mut parts = tag.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[test]
fn the_builder_builds_static_binaries_with_a_supported_toolchain() {
    let dockerfile = dockerfile::load();
    let builder = dockerfile.stage("builder").expect("a builder stage");
    let version = rust_image_version(&builder.from)
        .unwrap_or_else(|| panic!("builder FROM {}: want rust:X.Y.Z-bookworm", builder.from));
    // The workspace's `rust-version` (cli/Cargo.toml does not inherit it).
    let manifest = std::fs::read_to_string(dockerfile::workspace_root().join("Cargo.toml"))
        .expect("Cargo.toml");
    let msrv = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .expect("the workspace sets rust-version");
    let mut msrv = msrv
        .trim_matches('"')
        .split('.')
        .map(|p| p.parse::<u32>().expect("rust-version"));
    let msrv = (msrv.next().unwrap_or(0), msrv.next().unwrap_or(0));
    assert!(
        version >= msrv,
        "the builder's Rust {version:?} is older than the workspace's rust-version {msrv:?}"
    );
    // Bookworm's glibc (2.36) is the one the static binaries embed, and the one the test host's
    // chroot test links against: keep the builder and rootfs on the same release.
    let rootfs = dockerfile.stage("rootfs").expect("a rootfs stage");
    assert_eq!(rootfs.from, "debian:bookworm-slim");

    let flags = builder.env("RUSTFLAGS").unwrap_or_default();
    assert!(
        flags.contains("target-feature=+crt-static"),
        "RUSTFLAGS {flags:?} do not link statically"
    );
    let run = builder
        .all("RUN")
        .find(|r| r.contains("cargo build"))
        .expect("the builder runs cargo build");
    for required in [
        "--profile dist",
        "--locked",
        "--target x86_64-unknown-linux-gnu",
    ] {
        assert!(
            run.contains(required),
            "cargo build without {required}: {run}"
        );
    }
    // Every binary a final stage copies from the builder is built and copied to /out (by the
    // `for bin in …; do cp …` loop).
    let copied: Vec<&str> = run
        .split_once("for bin in ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(list, _)| list.split_whitespace().collect())
        .unwrap_or_default();
    assert!(
        run.contains("cp \"target/x86_64-unknown-linux-gnu/dist/$bin\" /out/"),
        "the builder does not copy the binaries to /out: {run}"
    );
    for stage in dockerfile.stages.iter().filter(|s| s.from == "scratch") {
        for copy in stage.copies() {
            if copy.from.as_deref() != Some("builder") {
                continue;
            }
            let bin = copy
                .src
                .strip_prefix("/out/")
                .expect("binaries come from /out");
            assert!(
                run.contains(&format!("-p {bin} ")) && copied.contains(&bin),
                "the builder does not build and copy {bin}: {run}"
            );
        }
    }
}
