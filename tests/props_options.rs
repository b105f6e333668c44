//! Property tests (a fuzzer in miniature) over the option parser: whatever users or Docker send,
//! parsing never panics, errors always say what to fix, valid remotes round-trip, and every
//! number (and `writeback_max`'s sizes) is taken within its range or refused with the option,
//! the range and the value named.

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

/// Every numeric option: name, smallest and largest value taken, how the error states the range.
const NUMERIC: &[(&str, u64, u64, &str)] = &[
    ("port", 1, 65535, "1 to 65535"),
    ("reconnect_timeout", 1, 86400, "1 to 86400"),
    ("ConnectTimeout", 1, 86400, "1 to 86400"),
    ("cache_timeout", 0, 86400, "0 to 86400"),
    ("ServerAliveInterval", 0, 86400, "0 to 86400"),
    ("ServerAliveCountMax", 1, 1000, "1 to 1000"),
    ("uid", 0, 4294967294, "0 to 4294967294"),
    ("gid", 0, 4294967294, "0 to 4294967294"),
];

fn numeric_value(o: &options::MountOptions, name: &str) -> u64 {
    match name {
        "port" => u64::from(o.port),
        "reconnect_timeout" => o.reconnect_timeout.as_secs(),
        "ConnectTimeout" => o.connect_timeout.as_secs(),
        "cache_timeout" => o.cache_timeout.as_secs(),
        "ServerAliveInterval" => o.server_alive_interval.as_secs(),
        "ServerAliveCountMax" => u64::from(o.server_alive_count_max),
        "uid" => u64::from(o.uid.unwrap()),
        "gid" => u64::from(o.gid.unwrap()),
        _ => unreachable!("{name}"),
    }
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
    fn numbers_are_accepted_in_range_or_refused_naming_option_range_and_value(
        which in 0..NUMERIC.len(),
        value in prop_oneof![
            4 => any::<u64>().prop_map(|n| n.to_string()),
            4 => (0u64..100_000).prop_map(|n| n.to_string()),
            2 => any::<i128>().prop_map(|n| n.to_string()),
            1 => Just(u64::MAX.to_string()),
            1 => Just(u32::MAX.to_string()),
            1 => "[0-9]{20,40}",
            1 => any_text(),
        ],
    ) {
        let (name, min, max, range) = NUMERIC[which];
        let mut opts = BTreeMap::new();
        opts.insert("sshcmd".to_string(), "h:/x".to_string());
        opts.insert(name.to_string(), value.clone());
        let parsed = options::parse(&options::from_docker_opts(&opts), None, Context::Plugin);
        let in_range = value.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n));
        match (parsed, in_range) {
            (Ok(p), Some(n)) => prop_assert_eq!(numeric_value(&p.options, name), n),
            (Err(e), None) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(name), "{}", msg);
                if !value.is_empty() {
                    prop_assert!(msg.contains(range) && msg.contains(&value), "{}", msg);
                }
            }
            (Ok(_), None) => prop_assert!(false, "{} = {:?} accepted out of range", name, value),
            (Err(e), Some(_)) => prop_assert!(false, "{} = {:?} refused: {}", name, value, e),
        }
    }

    /// `writeback_max`: a byte count with an optional binary suffix, 1 MiB at least; anything
    /// else is refused naming the option, the minimum and the value.
    #[test]
    fn writeback_max_is_a_size_of_1m_or_more_or_refused_saying_so(
        number in prop_oneof![
            3 => (0u64..5000).prop_map(|n| n.to_string()),
            2 => any::<u64>().prop_map(|n| n.to_string()),
            1 => "[0-9]{20,30}",
            1 => any_text(),
        ],
        space in prop_oneof![4 => Just(""), 1 => Just(" ")],
        unit in prop_oneof![
            Just(""), Just("b"), Just("B"), Just("k"), Just("KiB"), Just("kB"), Just("M"),
            Just("mib"), Just("MB"), Just("g"), Just("GiB"), Just("Gb"), Just("T"), Just("tib"),
            Just("TB"), Just("iB"), Just("P"), Just("x"), Just("GG"),
        ],
    ) {
        let value = format!("{number}{space}{unit}");
        // The model: surrounding blanks do not count, nor blanks between number and unit.
        let t = value.trim();
        let (digits, rest) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let shift = match rest.trim_start().to_ascii_lowercase().as_str() {
            "" | "b" => Some(0),
            "k" | "kb" | "kib" => Some(10),
            "m" | "mb" | "mib" => Some(20),
            "g" | "gb" | "gib" => Some(30),
            "t" | "tb" | "tib" => Some(40),
            _ => None,
        };
        let want = shift
            .and_then(|sh| digits.parse::<u64>().ok()?.checked_mul(1u64 << sh))
            .filter(|n| *n >= 1 << 20);
        let mut opts = BTreeMap::new();
        opts.insert("sshcmd".to_string(), "h:/x".to_string());
        opts.insert("writeback".to_string(), "yes".to_string());
        opts.insert("writeback_max".to_string(), value.clone());
        let parsed = options::parse(&options::from_docker_opts(&opts), None, Context::Plugin);
        match (parsed, want) {
            (Ok(p), Some(n)) => prop_assert_eq!(p.options.writeback.unwrap().max_bytes, n),
            (Err(e), None) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("writeback_max"), "{}", msg);
                if !value.trim().is_empty() {
                    prop_assert!(msg.contains("at least 1M") && msg.contains(&value), "{}", msg);
                }
            }
            (Ok(p), None) => prop_assert!(false, "{:?} accepted as {:?}", value, p.options.writeback),
            (Err(e), Some(_)) => prop_assert!(false, "{:?} refused: {}", value, e),
        }
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
