//! The CNI protocol: commands, environment, error replies and versions.
//!
//! This is our own small layer instead of the `cni-plugin` crate: that crate
//! (0.2.1, archived) knows neither GC nor STATUS nor spec 1.1.0, exits the
//! process from inside the library, and its typed result fails to parse real
//! bridge prevResults. Here prevResult stays raw JSON and is passed through.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The spec versions this plugin speaks. 0.3.x is still what flannel's stock
/// conflist says; a chained plugin passes prevResult through, and 0.3.0,
/// 0.3.1 and 0.4.0 results share one format, so ADD and DEL need nothing
/// version-specific.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version of replies when the config gives none we speak (VERSION,
/// errors before the config could be read, DEL's lenient parse).
pub const DEFAULT_VERSION: &str = "1.1.0";

/// Error codes from the CNI spec, plus our own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// "Try again later": another command held the pin root's lock for
    /// longer than lockTimeoutSeconds; the runtime retries.
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The pod's cgroup could not be found or used.
    pub const CGROUP: u32 = 100;
    /// bpffs, loading or attaching the datapath failed.
    pub const DATAPATH: u32 = 101;
    /// CHECK found the attachment or its limits missing or different.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: printed as JSON on stdout, with `code` as the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg, "")
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg, "")
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Wraps an internal error chain: `msg` says what failed, the chain why.
    pub fn from_anyhow(code: u32, msg: impl Into<String>, err: &anyhow::Error) -> Self {
        Self::new(code, msg, format!("{err:#}"))
    }

    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Reply<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Reply {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .expect("error reply serializes")
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::env(format!(
                    "unknown CNI_COMMAND {:?}: expected ADD, DEL, CHECK, GC, STATUS or VERSION",
                    truncate(other, 32)
                )))
            }
        })
    }
}

/// The CNI_* environment of one invocation, validated.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS as key=value pairs (K8S_POD_UID, K8S_POD_NAME, …).
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Reads the variables the command needs. `get` abstracts std::env for tests.
    pub fn read(command: Command, get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = Env::default();
        if !needs_attachment {
            return Ok(env);
        }
        env.container_id = get("CNI_CONTAINERID").unwrap_or_default();
        validate_container_id(&env.container_id)?;
        env.ifname = get("CNI_IFNAME").unwrap_or_default();
        validate_ifname(&env.ifname)?;
        env.netns = get("CNI_NETNS").unwrap_or_default();
        if env.netns.is_empty() && command != Command::Del {
            return Err(CniError::env("CNI_NETNS is not set"));
        }
        env.args = match parse_cni_args(&get("CNI_ARGS").unwrap_or_default()) {
            Ok(args) => args,
            // DEL does not use CNI_ARGS and must not fail on them.
            Err(_) if command == Command::Del => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok(env)
    }
}

/// Container IDs become directory names under the pin root, so only the
/// spec's alphabet is allowed: letters, digits, `_`, `.` and `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::env("CNI_CONTAINERID is not set"));
    }
    // Each '.' is escaped to three bytes in the pin directory name (bpffs
    // refuses dots), which must fit in 255 bytes.
    let escaped_len = id.len() + 2 * id.matches('.').count();
    let ok = escaped_len <= 255
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        return Err(CniError::env(format!(
            "invalid CNI_CONTAINERID {:?}: it must start with a letter or digit and hold only letters, digits, '_', '.' and '-' (at most 255 bytes, dots counting three)",
            truncate(id, 80)
        )));
    }
    Ok(())
}

/// Interface names become directory names too; Linux allows at most 15 bytes.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::env("CNI_IFNAME is not set"));
    }
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if !ok {
        return Err(CniError::env(format!(
            "invalid CNI_IFNAME {:?}: at most 15 printable characters, without '/', ':' or spaces",
            truncate(name, 40)
        )));
    }
    Ok(())
}

/// Parses CNI_ARGS: `K1=V1;K2=V2`.
pub fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::env(format!(
                "invalid CNI_ARGS: {:?} is not KEY=VALUE",
                truncate(pair, 80)
            )));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub fn is_supported_version(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// The spec version that introduced a command: CHECK came with 0.4.0, GC
/// and STATUS with 1.1.0. libcni (skel) answers a command the config's
/// version lacks with code 1, "incompatible CNI version"; so do we.
pub fn require_version_for(command: Command, cni_version: &str) -> Result<(), CniError> {
    let needs = match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        Command::Add | Command::Del | Command::Version => return Ok(()),
    };
    let rank = |v: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == v);
    if rank(cni_version) < rank(needs) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!("{command:?} needs cniVersion {needs} or later; the config says {}", truncate(cni_version, 20)),
        ));
    }
    Ok(())
}

/// The VERSION reply.
pub fn version_reply(requested: Option<&str>) -> String {
    let cni_version = requested.filter(|v| is_supported_version(v)).unwrap_or(DEFAULT_VERSION);
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

/// Shortens hostile input before it is echoed in a message.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn commands_parse_and_unknown_is_env_error() {
        assert_eq!(Command::parse("GC").unwrap(), Command::Gc);
        assert_eq!(Command::parse("STATUS").unwrap(), Command::Status);
        assert_eq!(Command::parse("add").unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn hostile_container_ids_are_refused() {
        for bad in ["", "../etc", "a/b", "a b", ".hidden", "a\0b", &"x".repeat(300)] {
            let e = validate_container_id(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{bad:?}");
        }
        validate_container_id("0123abcdef_-.x").unwrap();
    }

    #[test]
    fn hostile_ifnames_are_refused() {
        for bad in ["", "..", ".", "eth/0", "a b", "eth0:1", "averyveryverylongname"] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, code::INVALID_ENV, "{bad:?}");
        }
        validate_ifname("eth0").unwrap();
    }

    #[test]
    fn env_requires_netns_except_for_del() {
        let vars = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
        assert_eq!(Env::read(Command::Add, env_of(&vars)).unwrap_err().code, code::INVALID_ENV);
        Env::read(Command::Del, env_of(&vars)).unwrap();
        Env::read(Command::Gc, env_of(&[])).unwrap();
    }

    #[test]
    fn cni_args_parse() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_UID=1-2;K8S_POD_NAME=x").unwrap();
        assert_eq!(a["K8S_POD_UID"], "1-2");
        assert_eq!(parse_cni_args("novalue").unwrap_err().code, code::INVALID_ENV);
        assert!(parse_cni_args("").unwrap().is_empty());
    }

    #[test]
    fn error_json_has_spec_fields() {
        let e = CniError::config("bad").with_details("why");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "bad");
        assert_eq!(v["details"], "why");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn commands_need_the_version_that_introduced_them() {
        for v in ["0.3.0", "0.3.1"] {
            assert_eq!(require_version_for(Command::Check, v).unwrap_err().code, code::INCOMPATIBLE_VERSION);
            require_version_for(Command::Add, v).unwrap();
            require_version_for(Command::Del, v).unwrap();
        }
        require_version_for(Command::Check, "0.4.0").unwrap();
        for v in ["0.3.1", "0.4.0", "1.0.0"] {
            assert_eq!(require_version_for(Command::Gc, v).unwrap_err().code, code::INCOMPATIBLE_VERSION);
            assert_eq!(require_version_for(Command::Status, v).unwrap_err().code, code::INCOMPATIBLE_VERSION);
        }
        require_version_for(Command::Status, "1.1.0").unwrap();
    }

    #[test]
    fn version_reply_lists_all() {
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("0.3.1"))).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("9.9.9"))).unwrap();
        assert_eq!(v["cniVersion"], DEFAULT_VERSION);
    }
}
