//! Splitting a shell line into words, the way an operator expects from a shell.
//!
//! Signal lists and pool names are typed by hand; quoting lets an argument hold
//! spaces (`'a b'`), and `#` starts a comment so scripts fed on stdin can be
//! annotated. This is a deliberately small subset of sh: no expansion of any kind.

use thiserror::Error;

/// Why a line could not be split.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WordsError {
    #[error("unterminated {0} quote")]
    Unterminated(&'static str),
    #[error("a backslash ends the line: nothing to escape")]
    TrailingBackslash,
}

/// Splits `line` into words: blanks separate words; `'...'` is literal;
/// `"..."` is literal except `\"` and `\\`; a backslash outside quotes escapes
/// the next character; an unquoted `#` at the start of a word starts a comment.
pub fn split(line: &str) -> Result<Vec<String>, WordsError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    // A word exists once anything (even an empty quote pair) was seen, so that
    // `''` yields an empty argument instead of nothing.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => break,
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(WordsError::Unterminated("double")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(WordsError::Unterminated("double")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(WordsError::TrailingBackslash),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn blanks_separate_words() {
        assert_eq!(
            split("  signal  HUP\tUSR1 "),
            Ok(s(&["signal", "HUP", "USR1"]))
        );
        assert_eq!(split(""), Ok(vec![]));
        assert_eq!(split("   "), Ok(vec![]));
    }

    #[test]
    fn quotes_keep_blanks_and_join_adjacent_text() {
        assert_eq!(split("pool 'my pool'"), Ok(s(&["pool", "my pool"])));
        assert_eq!(split(r#"a"b c"d"#), Ok(s(&["ab cd"])));
        assert_eq!(
            split(r#"x "say \"hi\" \\ \n""#),
            Ok(s(&["x", r#"say "hi" \ \n"#]))
        );
        assert_eq!(split("x '' y"), Ok(s(&["x", "", "y"])));
        assert_eq!(split(r"a\ b \'"), Ok(s(&["a b", "'"])));
    }

    #[test]
    fn hash_starts_a_comment_only_at_a_word_start() {
        assert_eq!(split("# just a comment"), Ok(vec![]));
        assert_eq!(split("inc # one more"), Ok(s(&["inc"])));
        assert_eq!(split("a#b '#c'"), Ok(s(&["a#b", "#c"])));
    }

    #[test]
    fn unbalanced_input_is_an_error() {
        assert_eq!(split("pool 'web"), Err(WordsError::Unterminated("single")));
        assert_eq!(split("pool \"web"), Err(WordsError::Unterminated("double")));
        assert_eq!(split("pool web\\"), Err(WordsError::TrailingBackslash));
    }
}
