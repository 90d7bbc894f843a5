//! The Debian package `scripts/package` builds (scripts/test builds it and names it in
//! `PGMEDIC_TEST_DEB`): its files and modes, its control fields, its maintainer scripts, and
//! that what it installs works: the unit is the repository's, the binary runs, and the
//! configuration it ships loads.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deb() -> PathBuf {
    let path = std::env::var_os("PGMEDIC_TEST_DEB")
        .expect("PGMEDIC_TEST_DEB: run the suite with scripts/test, which builds the package first");
    PathBuf::from(path)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().expect("dpkg-deb");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `./etc/pgmedic/pgmedic.toml` → its `-rw-r-----` mode string.
fn listing(deb: &Path) -> Vec<(String, String)> {
    dpkg_deb(&["--contents"], deb)
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[5].trim_start_matches('.').to_string(), cols[0].to_string())
        })
        .collect()
}

#[test]
fn the_package_holds_the_binary_unit_configuration_and_documentation() {
    let deb = deb();
    let files = listing(&deb);
    let mode = |path: &str| {
        files.iter().find(|(p, _)| p == path).map(|(_, m)| m.clone()).unwrap_or_else(|| {
            panic!("{path} is not in the package: {files:#?}");
        })
    };
    assert_eq!(mode("/usr/bin/pgmedic"), "-rwxr-xr-x");
    // The configuration may hold a password: not world-readable (postinst gives it to the group).
    assert_eq!(mode("/etc/pgmedic/pgmedic.toml"), "-rw-r-----");
    let unit = files.iter().find(|(p, _)| p.ends_with("/systemd/system/pgmedic.service"));
    assert!(unit.is_some_and(|(_, m)| m == "-rw-r--r--"), "the unit: {files:#?}");
    for doc in [
        "/usr/share/doc/pgmedic/README.md",
        "/usr/share/doc/pgmedic/examples/pgmedic.toml",
        "/usr/share/man/man1/pgmedic.1.gz",
        "/usr/share/bash-completion/completions/pgmedic",
        "/usr/share/zsh/vendor-completions/_pgmedic",
        "/usr/share/fish/vendor_completions.d/pgmedic.fish",
        "/usr/share/pgmedic/prometheus/alerts.yml",
        "/usr/share/pgmedic/grafana/pgmedic.json",
    ] {
        assert_eq!(mode(doc), "-rw-r--r--", "{doc}");
    }
    // Nothing under /var or /run: the state and runtime directories belong to the system
    // (postinst, StateDirectory=, RuntimeDirectory=), so removing the package keeps snapshots.
    let stray: Vec<_> =
        files.iter().filter(|(p, _)| p.starts_with("/var/") || p.starts_with("/run/")).collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn the_control_fields_and_maintainer_scripts_create_the_user_and_keep_the_state() {
    let deb = deb();
    let field = |name: &str| {
        dpkg_deb(&["--field"], &deb)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    assert_eq!(field("Package").as_deref(), Some("pgmedic"));
    let version = field("Version").unwrap();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    let depends = field("Depends").unwrap();
    for needed in ["postgresql-client", "adduser", "libc6"] {
        assert!(depends.contains(needed), "Depends: {depends}");
    }

    let control = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb").arg("--control").arg(&deb).arg(control.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(control.path().join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/pgmedic/pgmedic.toml");
    let postinst = read("postinst");
    assert!(postinst.contains("adduser --system --group"), "{postinst}");
    assert!(postinst.contains("adduser --quiet pgmedic postgres"), "{postinst}");
    assert!(postinst.contains("chmod 0640 /etc/pgmedic/pgmedic.toml"), "{postinst}");
    // cargo-deb filled in the systemd snippets: the unit is known to systemd, not started.
    assert!(!postinst.contains("#DEBHELPER#") && postinst.contains("daemon-reload"), "{postinst}");
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    let postrm = read("postrm");
    assert!(!postrm.contains("#DEBHELPER#"), "{postrm}");
    assert!(!postrm.contains("rm -rf") && !postrm.contains("deluser"), "purge keeps snapshots: {postrm}");
    for script in ["postinst", "postrm"] {
        let sh = Command::new("sh").arg("-n").arg(control.path().join(script)).status().unwrap();
        assert!(sh.success(), "{script} is not valid sh");
    }
}

#[test]
fn what_the_package_installs_runs_with_the_configuration_it_ships() {
    let deb = deb();
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb").arg("--extract").arg(&deb).arg(root.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit_path = ["lib/systemd/system/pgmedic.service", "usr/lib/systemd/system/pgmedic.service"]
        .iter()
        .map(|p| root.path().join(p))
        .find(|p| p.exists())
        .expect("the unit");
    let unit = std::fs::read_to_string(unit_path).unwrap();
    let repo_unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pgmedic.service")).unwrap();
    assert_eq!(unit, repo_unit, "the package installs the repository's unit");
    assert!(unit.contains("\nUser=pgmedic\n") && unit.contains("\nExecStart=/usr/bin/pgmedic "), "{unit}");

    let bin = root.path().join("usr/bin/pgmedic");
    // Stripped: the debug symbols went to the -dbgsym package beside it.
    let sections = Command::new("readelf").arg("--section-headers").arg(&bin).output().unwrap();
    assert!(sections.status.success());
    assert!(!String::from_utf8_lossy(&sections.stdout).contains(".debug_line"), "the binary is not stripped");
    let dbgsym = deb.with_file_name(
        deb.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replacen("pgmedic_", "pgmedic-dbgsym_", 1)
            .replace(".deb", ".ddeb"),
    );
    assert!(dbgsym.exists(), "{}", dbgsym.display());
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("pgmedic {}", env!("CARGO_PKG_VERSION"))
    );
    let config = root.path().join("etc/pgmedic/pgmedic.toml");
    let check = Command::new(&bin).arg("--config").arg(&config).arg("check-config").output().unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check-config: {}{stdout}", String::from_utf8_lossy(&check.stderr));
    for line in [
        "socket = \"/run/pgmedic/pgmedic.sock\"",
        "state_dir = \"/var/lib/pgmedic\"",
        "path = \"/var/lib/pgmedic/snapshots\"",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    let man = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {}", root.path().join("usr/share/man/man1/pgmedic.1.gz").display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH pgmedic 1"), "the man page");
}
