//! Shell quoting: the one way task data becomes part of a command line.
//!
//! Anything that builds a `sh -c` command from values a task submitter chose (a work item's
//! title or inputs filled into a `command` payload's `cmd`) passes each value through
//! [`shell_quote`], so a value is always exactly one shell word: `; rm -rf /` is an argument,
//! never a second command. Nothing here runs a shell.

/// `text` as one POSIX shell word: unchanged when it is made only of characters no shell
/// treats specially, else single-quoted (a `'` inside becomes `'\''`). Empty text is `''`.
pub fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_and_everything_else_is_single_quoted() {
        assert_eq!(shell_quote("make"), "make");
        assert_eq!(shell_quote("src/main.rs"), "src/main.rs");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("; rm -rf /"), "'; rm -rf /'");
        assert_eq!(shell_quote("$(id) `id` $HOME"), "'$(id) `id` $HOME'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("two\nlines"), "'two\nlines'");
    }
}
