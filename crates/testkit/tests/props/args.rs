//! `CNI_ARGS` parsing: any string parses or is code 4; well-formed pairs read back.

use cni_protocol::CniArgs;
use proptest::prelude::*;

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn any_string_parses_or_is_code_4(raw in prop_oneof![".{0,200}", "[a-zA-Z0-9=;_/. ]{0,200}"]) {
        match CniArgs::parse(&raw) {
            Ok(args) => {
                for segment in raw.split(';').filter(|s| !s.is_empty()) {
                    let (k, _) = segment.split_once('=').unwrap();
                    prop_assert!(!k.is_empty());
                    prop_assert!(args.get(k).is_some());
                }
            }
            Err(e) => {
                prop_assert_eq!(e.code.0, 4);
                prop_assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
            }
        }
    }

    #[test]
    fn pairs_read_back_last_one_wins(
        pairs in prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,12}", "[^;]{0,30}"), 0..10)
    ) {
        let raw = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        let args = CniArgs::parse(&raw).unwrap();
        for (k, _) in &pairs {
            let last = pairs.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v.as_str());
            prop_assert_eq!(args.get(k), last);
        }
    }
}
