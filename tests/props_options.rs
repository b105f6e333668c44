//! Property tests (a fuzzer in miniature) over the option parser: whatever users or Docker send,
//! parsing never panics, errors always say what to fix, and valid remotes round-trip.

use std::collections::BTreeMap;

use docker_volume_sshfs::options::{self, Context, Remote};
use proptest::prelude::*;

fn any_text() -> impl Strategy<Value = String> {
    // Printable ASCII plus the characters that have meaning in our syntax and some hostile ones.
    prop::collection::vec(
        prop_oneof![
            8 => proptest::char::range(' ', '~'),
            1 => Just('\0'),
            1 => Just('\n'),
            1 => Just('é'),
            1 => Just('['),
            1 => Just(']'),
            1 => Just('@'),
            1 => Just(':'),
        ],
        0..80,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn remote_parse_never_panics(s in any_text()) {
        match Remote::parse(&s) {
            Ok(r) => {
                prop_assert!(!r.host.is_empty());
                prop_assert!(!r.host.contains('\0'));
            }
            Err(e) => prop_assert!(e.to_string().contains("expected user@host:/path")),
        }
    }

    #[test]
    fn valid_remotes_round_trip(
        user in proptest::option::of("[a-z_][a-z0-9_.@-]{0,12}"),
        host in prop_oneof!["[a-z][a-z0-9.-]{0,20}", Just("::1".to_string()), Just("fe80::1".to_string())],
        path in "(/?[a-zA-Z0-9_ .:-]{0,10}){0,4}",
    ) {
        let r = Remote { user, host, path };
        let parsed = Remote::parse(&r.to_string()).unwrap();
        prop_assert_eq!(parsed, r);
    }

    #[test]
    fn docker_opts_never_panic(opts in prop::collection::btree_map(any_text(), any_text(), 0..6)) {
        let mut opts: BTreeMap<String, String> = opts;
        opts.insert("sshcmd".into(), "u@h:/p".into());
        match options::parse(&options::from_docker_opts(&opts), None, Context::Plugin) {
            Ok(p) => prop_assert_eq!(p.options.remote.host, "h"),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                // An unknown name is answered with the list of supported ones.
                if msg.starts_with("unknown option") {
                    prop_assert!(msg.contains("sshcmd") && msg.contains("IdentityFile"));
                }
            }
        }
    }

    #[test]
    fn cli_options_never_panic(s in any_text(), remote in any_text()) {
        let _ = options::parse(&options::split_cli_options(&s), Some(&remote), Context::Command);
    }

    #[test]
    fn ports_outside_range_are_refused(port in prop_oneof![Just(0i64), 65536i64..10_000_000, -1000i64..0]) {
        let mut opts = BTreeMap::new();
        opts.insert("sshcmd".to_string(), "h:/x".to_string());
        opts.insert("port".to_string(), port.to_string());
        let e = options::parse(&options::from_docker_opts(&opts), None, Context::Plugin).unwrap_err();
        prop_assert!(e.to_string().contains("1 to 65535"));
    }

    #[test]
    fn password_never_appears_in_debug(pw in "[a-zA-Z0-9]{6,20}") {
        let mut opts = BTreeMap::new();
        opts.insert("sshcmd".to_string(), "h:/x".to_string());
        opts.insert("password".to_string(), pw.clone());
        let o = options::parse(&options::from_docker_opts(&opts), None, Context::Plugin).unwrap().options;
        let shown = format!("{:?}", o);
        prop_assert!(!shown.contains(&pw));
    }
}
