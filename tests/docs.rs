//! The operator docs hold together: every relative link in README.md,
//! docs/ and bench/README.md names a file that exists and, for a Markdown
//! file, a heading it has (GitHub's anchors). Moving a section between
//! files then cannot leave a link dangling, and the README stays short.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("bench/README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces made hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text).iter().filter(|l| l.starts_with('#')).map(|l| anchor(l.trim_start_matches('#'))).collect()
}

/// Every `](target)` of a Markdown link in the prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        for part in line.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push(part[..end].to_string());
            }
        }
    }
    out
}

#[test]
fn every_relative_link_names_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() { doc.clone() } else { doc.parent().unwrap().join(file) };
            let shown = format!("{}: ({link})", doc.strip_prefix(root()).unwrap().display());
            if !target.exists() {
                broken.push(format!("{shown}: no file {}", target.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                if target.extension().is_some_and(|e| e == "md") && !anchors(&std::fs::read_to_string(&target).unwrap()).contains(fragment) {
                    broken.push(format!("{shown}: no heading #{fragment} in {}", target.display()));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found: is the link parser broken?");
    assert!(broken.is_empty(), "{} broken links:\n{}", broken.len(), broken.join("\n"));
}

/// Issue 22: a README an operator reads in one sitting; the rest is in docs/.
#[test]
fn the_readme_is_short_and_points_at_every_document() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 200, "README.md has {lines} lines; move detail to docs/");
    for doc in documents().iter().filter(|d| d.parent() == Some(&root().join("docs"))) {
        let name = format!("docs/{}", doc.file_name().unwrap().to_str().unwrap());
        assert!(readme.contains(&format!("]({name})")), "README.md does not link {name}");
    }
    assert!(Path::new(&root().join("README.md")).exists());
    // The two commands a newcomer runs.
    assert!(readme.contains("sudo ./install.sh --demo") && readme.contains("sudo ./test.sh"), "README lost its two commands");
}
