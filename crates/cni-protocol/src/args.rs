//! `CNI_ARGS`: `K=V;K=V` pairs passed by the runtime.

use crate::error::CniError;

/// Parsed `CNI_ARGS`, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments are skipped; a segment without `=` or with an empty
    /// key is code 4, naming `CNI_ARGS`. A value may itself contain `=`.
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        for segment in raw.split(';').filter(|s| !s.is_empty()) {
            match segment.split_once('=') {
                Some((k, v)) if !k.is_empty() => pairs.push((k.to_string(), v.to_string())),
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "CNI_ARGS is malformed: {segment:?} is not KEY=VALUE"
                    )));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The last value given for `key` (later pairs win, as in Go's loader).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty value for `key`.
    pub fn get_non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// `IgnoreUnknown=1` (or `true`, any case) lets a plugin skip keys it does not know.
    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown")
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// The spec's strict reading: any key outside `known` is code 4 unless `IgnoreUnknown` is
    /// set. (Calico's plugins always tolerate unknown keys, since Calico prepends
    /// `IgnoreUnknown=1`; strict plugins call this.)
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown() {
            return Ok(());
        }
        match self
            .pairs
            .iter()
            .find(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str()))
        {
            Some((k, _)) => Err(CniError::invalid_env(format!(
                "CNI_ARGS has unknown key {k:?} (set IgnoreUnknown=1 to allow it)"
            ))),
            None => Ok(()),
        }
    }

    /// Renders back to `K=V;K=V`.
    pub fn render(&self) -> String {
        self.pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// Sets `key`, replacing earlier values.
    pub fn set(&mut self, key: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn parses_kubernetes_style_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .expect("valid");
        assert_eq!(a.get("K8S_POD_NAME"), Some("nginx"));
        assert_eq!(a.get("K8S_POD_NAMESPACE"), Some("default"));
        assert!(a.ignore_unknown());
        assert_eq!(a.get("MISSING"), None);
    }

    #[test]
    fn empty_and_trailing_separators_are_fine() {
        assert!(CniArgs::parse("").expect("empty").pairs().is_empty());
        let a = CniArgs::parse("A=1;;B=;").expect("valid");
        assert_eq!(a.get("A"), Some("1"));
        assert_eq!(a.get("B"), Some(""));
        assert_eq!(a.get_non_empty("B"), None);
    }

    #[test]
    fn values_may_contain_equals_and_later_pairs_win() {
        let a = CniArgs::parse("X=a=b;X=c").expect("valid");
        assert_eq!(a.get("X"), Some("c"));
        let a = CniArgs::parse("X=a=b").expect("valid");
        assert_eq!(a.get("X"), Some("a=b"));
    }

    #[test]
    fn malformed_pairs_are_code_4_naming_the_variable() {
        for bad in ["novalue", "A=1;junk", "=v"] {
            let e = CniArgs::parse(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::INVALID_ENVIRONMENT);
            assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        }
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let known = ["IP"];
        let a = CniArgs::parse("IP=10.0.0.1;FOO=bar").expect("valid");
        let e = a.check_known(&known).expect_err("FOO unknown");
        assert_eq!(e.code, ErrorCode::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("FOO"));
        for flag in ["1", "true", "TRUE", "True"] {
            let a = CniArgs::parse(&format!("IgnoreUnknown={flag};IP=10.0.0.1;FOO=bar"))
                .expect("valid");
            assert!(a.check_known(&known).is_ok(), "IgnoreUnknown={flag}");
        }
        let a = CniArgs::parse("IgnoreUnknown=0;FOO=bar").expect("valid");
        assert!(a.check_known(&known).is_err());
    }

    #[test]
    fn render_and_set_round_trip() {
        let mut a = CniArgs::parse("A=1;B=2").expect("valid");
        a.set("A", "3");
        assert_eq!(a.render(), "B=2;A=3");
        assert_eq!(CniArgs::parse(&a.render()).expect("valid"), a);
    }
}
