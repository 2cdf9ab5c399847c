//! `--list-pools` (hidden): the running master's pool names, one per line,
//! for the completion scripts (contrib/completions/) to offer after `--pool`
//! and the shell's `pool`. Quiet on failure: a completion prints nothing.

use std::io::Write;

use serde_json::Value;

use crate::conn::{self, Conn, Outcome};
use crate::Settings;

/// The pool names in a `state` reply's message.
pub fn names(state_message: &str) -> Vec<String> {
    serde_json::from_str::<Value>(state_message)
        .ok()
        .and_then(|v| v.get("pools").and_then(Value::as_object).cloned())
        .map(|pools| pools.keys().cloned().collect())
        .unwrap_or_default()
}

/// Prints the pool names; the exit status of the `state` request.
pub fn list(settings: &Settings) -> u8 {
    let mut message = String::new();
    let result = Conn::connect(&settings.path).and_then(|mut c| {
        let req = conn::request("state", &[], 1, None, None);
        c.request(&req, Some(std::time::Duration::from_secs(2)), &mut |r| {
            message = r.reply.message.clone();
            Ok(())
        })
    });
    match result {
        Ok(Outcome::Ok) => {
            let mut out = std::io::stdout().lock();
            for n in names(&message) {
                if writeln!(out, "{n}").is_err() {
                    return conn::EXIT_FAILURE;
                }
            }
            0
        }
        Ok(Outcome::ErrorReply) => conn::EXIT_FAILURE,
        Err(e) => e.exit_code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_state_dump() {
        let st = r#"{"master":{},"pools":{"web":{},"api":{}}}"#;
        assert_eq!(names(st), vec!["api", "web"]);
        assert!(names("not json").is_empty());
    }
}
