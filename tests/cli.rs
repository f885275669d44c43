//! The command line as an engineer uses it: exit codes and messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use std::process::Command;

fn ms5() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
}

#[test]
fn version_names_the_commit_target_and_profile() {
    let out = ms5().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ms5-edge 0."), "{text}");
    assert!(text.contains("commit "), "{text}");
    assert!(
        text.contains("x86_64-unknown-linux-gnu") || text.contains("aarch64"),
        "{text}"
    );
    assert!(text.contains("profile "), "{text}");
}

#[test]
fn check_config_accepts_the_shipped_example_with_a_summary() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ms5-edge.toml");
    let out = ms5()
        .args(["check-config", "-c", example])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok "), "{stdout}");
    assert!(stdout.contains("2 PLC(s)"), "{stdout}");
}

#[test]
fn check_config_rejects_a_typo_with_file_line_column_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ms5-edge.toml")).unwrap();
    let broken = example.replacen("poll_interval_ms", "poll_intervall_ms", 1);
    let line = broken
        .lines()
        .position(|l| l.contains("poll_intervall_ms"))
        .unwrap()
        + 1;
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let out = ms5()
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("broken.toml:{line}:")), "{stderr}");
    assert!(
        stderr.contains("did you mean \"poll_interval_ms\""),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "[gateway]\nid = \"x\"\n").unwrap();
    let out = ms5().args(["run", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty.toml:"));
}

#[test]
fn status_without_a_database_exits_1_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/ms5-edge.toml")).unwrap();
    let data_dir = dir.path().join("data");
    let text = example
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("data_dir") {
                format!("data_dir = \"{}\"", data_dir.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = ms5().args(["status", "-c"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
}
