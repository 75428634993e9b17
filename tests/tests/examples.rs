//! The example configs shipped in `examples/` stay valid as the config format evolves.

#[test]
fn every_example_config_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if let Err(e) = trellis_control_plane::config::load(&path) {
                panic!("{} is invalid: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no example configs found in {}",
        dir.display()
    );
}
