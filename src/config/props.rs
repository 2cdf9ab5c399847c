//! Property tests of the configuration parser (proptest, bounded case
//! counts): no file makes it panic, and the generator below, which writes
//! files from the schema's keys with values at and beyond every bound, is
//! shared with the pool's property test (src/pool/tests/props.rs), which
//! drives every pool of every accepted file.

use proptest::prelude::*;

use super::schema::{Section, KEYS};
use super::Config;

/// TOML values for a key: valid ones at the edges of their range, then,
/// after [`BAD`], the wrong type or out of range ones a careless operator
/// writes.
fn candidates(name: &str) -> &'static [&'static str] {
    match name {
        "command" => &[
            r#"["/bin/true"]"#,
            r#"["sh", "-c", "exit 0"]"#,
            BAD,
            r#"["./w", "{fd:0}"]"#,
            r#"["./w", "{fd:web}"]"#,
            "[]",
            r#"[""]"#,
        ],
        "count" => &[
            "0",
            "1",
            "2",
            "3",
            "100000",
            BAD,
            "100001",
            "-1",
            "4294967296",
        ],
        "max_unacked" | "max_surge" | "canary" | "retries" => &[
            "1",
            "2",
            "3",
            "100000",
            BAD,
            "0",
            "100001",
            "-1",
            "4294967296",
        ],
        "binds" => &[
            r#"["127.0.0.1:0"]"#,
            r#"["127.0.0.1:0,r,n,b"]"#,
            r#"["[::1]:0", "127.0.0.1:0"]"#,
            "[]",
            BAD,
            r#"["0.0.0.0:99999"]"#,
            "[]",
        ],
        "ack" => &[
            r#""timer""#,
            r#""manual""#,
            r#""notify""#,
            BAD,
            r#""bogus""#,
        ],
        "upgrade" => &[r#""smooth""#, r#""fleet""#, BAD, r#""x""#],
        "stop_signal" => &[
            r#""USR2""#,
            r#""SIGTERM""#,
            "15",
            r#""KILL""#,
            BAD,
            "0",
            "65",
        ],
        "level" => &[r#""info""#, r#""off""#, r#""trace""#, BAD, r#""loud""#],
        "socket_protocol" => &[
            r#"["einhorn"]"#,
            r#"["systemd"]"#,
            r#"["einhorn", "systemd"]"#,
            BAD,
            r#"["x"]"#,
        ],
        "max_rss" => &[r#""512MiB""#, r#""1B""#, BAD, r#""16EiB""#, r#""-1""#, "0"],
        "umask" => &[r#""0027""#, r#""0777""#, BAD, r#""1000""#, "18"],
        "nice" => &["0", "19", "-20", BAD, "20", "-21"],
        "oom_score_adj" => &["0", "1000", "-1000", BAD, "1001"],
        "rlimits" => &[
            "{ nofile = 1024 }",
            "{ core = 0, nproc = 100 }",
            BAD,
            r#"{ as = "unlimited" }"#,
            "{ nofile = 18446744073709551615 }",
            "{ bogus = 1 }",
        ],
        "env" => &[
            r#"{ A = "1" }"#,
            BAD,
            r#"{ EINHORN_FD_0 = "3" }"#,
            "{ B = 1 }",
        ],
        "drop_env" | "watch" => &["[]", r#"["PATH"]"#, r#"["/nonexistent"]"#, BAD, "[1]"],
        "mode" => &["0o600", r#""0600""#, BAD, "4096"],
        "allow_uids" => &["[]", "[0]", BAD, "[4294967296]", "[-1]"],
        "user" | "group" => &[r#""root""#, BAD, r#""no-such-user-x""#, "-1"],
        "reexec_as" => &[r#""/bin/true""#, BAD, r#""""#],
        "socket" | "syslog_socket" | "pidfile" | "lockfile" | "cwd" => &[
            r#""/tmp/einh-prop.sock""#,
            r#""relative""#,
            BAD,
            r#""""#,
            r#""/""#,
        ],
        n if n.ends_with("timeout")
            || n.ends_with("timer")
            || n.ends_with("delay")
            || n.ends_with("interval")
            || n.ends_with("hold")
            || n.ends_with("age")
            || n.ends_with("jitter")
            || n == "debounce"
            || n == "watchdog" =>
        {
            &[
                r#""0s""#,
                r#""1ms""#,
                r#""100ms""#,
                r#""7d""#,
                "0",
                "0.05",
                "604800",
                r#""1h30m""#,
                BAD,
                r#""8d""#,
                r#""1e19""#,
                "1e19",
                "-1",
                r#""forever""#,
            ]
        }
        "stdout" | "stderr" => &[
            r#""inherit""#,
            r#""log""#,
            r#""null""#,
            r#""/tmp/einh-prop-{pool}-{index}.log""#,
            BAD,
            r#""/tmp/{bogus}.log""#,
            r#""""#,
            "1",
        ],
        "output_max_bytes" | "max_bytes" => &["0", "1048576", "9223372036854775807", BAD, "-1"],
        "output_backups" | "backups" => &["0", "10", BAD, "-1", "100000000000"],
        "listen" => &[
            r#""127.0.0.1:0""#,
            r#""/tmp/einh-prop-metrics.sock""#,
            BAD,
            r#""nohost:""#,
            r#""""#,
        ],
        "file" => &[r#""/tmp/einh-prop.log""#, BAD, r#""""#],
        _ => &["true", "false", BAD, r#""x""#, "1"],
    }
}

/// Separates the valid candidates from the invalid ones.
const BAD: &str = "<bad>";

/// Anything of any type, for the wrong-type branch.
const JUNK: &[&str] = &[
    "1e19",
    "-1",
    "9223372036854775807",
    r#""""#,
    "[]",
    "{}",
    "true",
    "1.5",
    "nan",
    "inf",
    r#""7d""#,
    "0",
    r#"[1, "a"]"#,
    r#"{ a = { b = 1 } }"#,
];

/// How often a value is taken from the invalid candidates or the junk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mix {
    /// One in four: most files are refused, each for a reason or several.
    Careless,
    /// One in forty: most files are accepted, with values at their bounds.
    Careful,
}

fn value_for(name: &'static str, mix: Mix) -> BoxedStrategy<String> {
    // A careful file keeps pools small so that the pool's property test
    // runs thousands of events in seconds; 100,000 workers have their own
    // test there.
    let own = match (name, mix) {
        ("count", Mix::Careful) => &["0", "1", "2", "3", BAD][..],
        _ => candidates(name),
    };
    let cut = own.iter().position(|v| *v == BAD).unwrap_or(own.len());
    let good: Vec<&'static str> = own[..cut].to_vec();
    let bad: Vec<&'static str> = own[cut..].iter().skip(1).chain(JUNK).copied().collect();
    let (g, b) = match mix {
        Mix::Careless => (3, 1),
        Mix::Careful => (39, 1),
    };
    prop_oneof![
        g => prop::sample::select(good).prop_map(str::to_string),
        b => prop::sample::select(bad).prop_map(str::to_string),
    ]
    .boxed()
}

fn section_text(
    section: Section,
    header: String,
    required: &'static [&'static str],
    mix: Mix,
) -> BoxedStrategy<String> {
    let keys: Vec<&'static str> = KEYS
        .iter()
        .filter(|k| k.section == section)
        .map(|k| k.name)
        .collect();
    let picked = prop::sample::subsequence(keys.clone(), 0..=keys.len().min(8));
    picked
        .prop_flat_map(move |mut names| {
            for r in required {
                if !names.contains(r) {
                    names.push(r);
                }
            }
            let header = header.clone();
            names
                .into_iter()
                .map(|n| value_for(n, mix).prop_map(move |v| format!("{n} = {v}\n")))
                .collect::<Vec<_>>()
                .prop_map(move |lines| format!("{header}\n{}", lines.concat()))
        })
        .boxed()
}

/// A whole configuration file: optional master-wide sections, one to three
/// pools (each with a command, usually valid), keys and values from the
/// schema.
pub(crate) fn config_text(mix: Mix) -> impl Strategy<Value = String> {
    let masters = prop::collection::vec(
        prop::sample::select(vec![
            Section::Control,
            Section::Log,
            Section::Watch,
            Section::MasterProcess,
            Section::Metrics,
        ]),
        0..3,
    );
    (masters, 1..=3usize).prop_flat_map(move |(mut secs, npools)| {
        secs.sort_by_key(|s| s.table());
        secs.dedup();
        let mut parts: Vec<BoxedStrategy<String>> = secs
            .into_iter()
            .map(|s| section_text(s, s.header().to_string(), &[], mix))
            .collect();
        for i in 0..npools {
            parts.push(section_text(
                Section::Pool,
                format!("[pools.p{i}]"),
                &["command", "count"],
                mix,
            ));
        }
        parts.prop_map(|p| p.concat())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Any text: parsed or refused, never a panic.
    #[test]
    fn any_text_parses_or_is_refused_without_a_panic(text in ".{0,400}") {
        let _ = Config::from_toml_str(&text, None);
    }

    /// Files made of the schema's keys with values at and beyond their
    /// bounds: parsed or refused with a located message, never a panic.
    #[test]
    fn schema_made_files_parse_or_are_refused_with_a_message(text in config_text(Mix::Careless)) {
        if let Err(errs) = Config::from_toml_str(&text, None) {
            let msg = errs.to_string();
            prop_assert!(!msg.trim().is_empty(), "an empty error for {text}");
        }
    }

    /// A valid file cut at any byte (a half-written file): no panic.
    #[test]
    fn any_prefix_of_a_file_is_handled(text in config_text(Mix::Careful), cut in any::<prop::sample::Index>()) {
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let _ = Config::from_toml_str(&text[..at], None);
    }
}
