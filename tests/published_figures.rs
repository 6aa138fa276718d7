//! The benchmark figures README.md and bench/README.md publish are the
//! ones their results files give: `bench/publish.py --check` regenerates
//! every published region from bench/results/ and fails on any difference,
//! and on a cited file made from a dirty tree or by a run that did not
//! complete. The controls alter a copy of the tree and show the check
//! failing for each.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `bench/publish.py --check` over `root`: its exit code and what it said.
fn check(root: &Path) -> (i32, String) {
    let out = Command::new("python3")
        .arg(Path::new(ROOT).join("bench/publish.py"))
        .args(["--check", "--root"])
        .arg(root)
        .output()
        .expect("python3 runs bench/publish.py");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().expect("publish.py exited"), said)
}

/// A copy of what publish.py reads: the two pages and bench/results.
fn copy_of_tree(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brl-published-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bench")).unwrap();
    std::fs::copy(Path::new(ROOT).join("README.md"), dir.join("README.md")).unwrap();
    std::fs::copy(Path::new(ROOT).join("bench/README.md"), dir.join("bench/README.md")).unwrap();
    let status = Command::new("cp").arg("-a").arg(Path::new(ROOT).join("bench/results")).arg(dir.join("bench/")).status().unwrap();
    assert!(status.success(), "cp -a bench/results");
    dir
}

#[test]
fn published_figures_are_those_of_their_results_files() {
    let (code, said) = check(Path::new(ROOT));
    println!("this tree: exit {code}: {said}");
    assert_eq!(code, 0, "published figures differ from the results files (run bench/publish.py): {said}");
}

#[test]
fn a_figure_edited_by_hand_fails_the_check() {
    let dir = copy_of_tree("edited");
    let page = dir.join("bench/README.md");
    let text = std::fs::read_to_string(&page).unwrap();
    // The first figure of the generated table's first row, made better.
    let row = text.lines().find(|l| l.starts_with("| bulk TCP on the wire")).expect("the bulk TCP row").to_string();
    let edited_row = row.replacen("| 0.", "| 1.", 1);
    assert_ne!(row, edited_row, "no figure to edit in {row}");
    std::fs::write(&page, text.replacen(&row, &edited_row, 1)).unwrap();
    let (code, said) = check(&dir);
    println!("one figure edited: exit {code}: {said}");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "an edited figure passed the check: {said}");
    assert!(said.contains("bench/README.md"), "the check names the page: {said}");
}

#[test]
fn a_results_file_from_a_dirty_tree_is_never_published() {
    let dir = copy_of_tree("dirty");
    let file = dir.join("bench/results/wire/results.json");
    let mut results: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    results["meta"]["dirty"] = serde_json::json!(true);
    std::fs::write(&file, results.to_string()).unwrap();
    let (code, said) = check(&dir);
    println!("a cited file marked dirty: exit {code}: {said}");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 2, "a dirty results file was published: {said}");
    assert!(said.contains("results/wire/results.json") && said.contains("uncommitted"), "the check names the file and why: {said}");
}
