//! NATS subjects: validating a publish subject, matching patterns with `*` and
//! `>`, and rendering the output subject template. Pure functions; the
//! pipeline uses them to keep each tenant inside its permitted subjects.

use std::fmt;

/// Why a subject or a template is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Empty subject or an empty token (`a..b`, trailing dot).
    #[error("subject `{0}` has an empty token")]
    EmptyToken(String),
    /// Whitespace or control characters are not allowed in subjects.
    #[error("subject `{0}` contains whitespace or a control character")]
    BadCharacter(String),
    /// Wildcards belong in patterns, never in a subject to publish to.
    #[error("subject `{0}` contains a wildcard (`*` or `>`), which cannot be published to")]
    Wildcard(String),
    /// `>` must be the last token of a pattern.
    #[error("pattern `{0}` has `>` before its last token")]
    MisplacedTail(String),
    /// A `{...}` placeholder that the template language does not know.
    #[error(
        "template `{template}` has an unknown placeholder `{{{placeholder}}}` (expected {{tenant}}, {{subject}}, {{subject[N]}} or {{subject[N..]}})"
    )]
    Placeholder {
        /// The whole template.
        template: String,
        /// The placeholder's text between the braces.
        placeholder: String,
    },
    /// The template renders to something that is not a valid subject.
    #[error("template `{template}` cannot produce a valid subject")]
    Invalid {
        /// The whole template.
        template: String,
        /// What is wrong with what it renders.
        #[source]
        cause: Box<SubjectError>,
    },
    /// A `{` without a closing `}`.
    #[error("template `{0}` has an unclosed `{{`")]
    Unclosed(String),
}

/// Non-empty tokens and no whitespace or control characters: what subjects
/// and patterns share. Every output of every message passes here, so it
/// reads bytes: in ASCII, whitespace and control characters are exactly the
/// bytes up to the space, and DEL; other text is checked by character.
fn check_tokens(subject: &str) -> Result<(), SubjectError> {
    let bytes = subject.as_bytes();
    if bytes.is_empty() || tokens(bytes).any(<[u8]>::is_empty) {
        return Err(SubjectError::EmptyToken(subject.to_owned()));
    }
    let bad_character = if bytes.is_ascii() {
        bytes.iter().any(|&b| b <= b' ' || b == 0x7f)
    } else {
        subject.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if bad_character {
        return Err(SubjectError::BadCharacter(subject.to_owned()));
    }
    Ok(())
}

/// The `.`-separated tokens of a subject, as bytes.
fn tokens(subject: &[u8]) -> impl Iterator<Item = &[u8]> {
    subject.split(|&b| b == b'.')
}

/// Check that `subject` can be published to: non-empty tokens, no
/// whitespace, no wildcards.
pub fn validate_subject(subject: &str) -> Result<(), SubjectError> {
    check_tokens(subject)?;
    if tokens(subject.as_bytes()).any(|t| t == b"*" || t == b">") {
        return Err(SubjectError::Wildcard(subject.to_owned()));
    }
    Ok(())
}

/// Check that `pattern` is a well-formed subscription pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), SubjectError> {
    check_tokens(pattern)?;
    let tokens: Vec<&str> = pattern.split('.').collect();
    if tokens[..tokens.len() - 1].contains(&">") {
        return Err(SubjectError::MisplacedTail(pattern.to_owned()));
    }
    Ok(())
}

/// Does `subject` match `pattern`? `*` matches exactly one token, a final `>`
/// one or more.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Used to check a template once at parse time: enough tokens that every
/// `{subject[N]}` a sane template uses renders to something.
const SAMPLE_SUBJECT: &str = "s0.s1.s2.s3.s4.s5.s6.s7.s8.s9.s10.s11.s12.s13.s14.s15";

/// A concrete subject that `pattern` matches: each wildcard token becomes
/// `fill` (for sample traffic and offline runs).
pub fn concrete(pattern: &str, fill: &str) -> String {
    pattern
        .split('.')
        .map(|t| if t == "*" || t == ">" { fill } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Tenant,
    Subject,
    /// One token of the source subject, 0-based.
    Token(usize),
    /// The tokens from this one on, joined with `.`.
    TokensFrom(usize),
}

/// An output subject template such as `{tenant}.out.{subject[2..]}`.
///
/// Placeholders: `{tenant}`, `{subject}` (the whole subject the last stage
/// passed on), `{subject[N]}` (its N-th token, 0-based) and `{subject[N..]}`
/// (the tokens from N on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parse a template; unknown placeholders are errors.
    pub fn parse(text: &str) -> Result<Self, SubjectError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| SubjectError::Unclosed(text.to_owned()))?;
            let name = &after[..close];
            pieces.push(
                parse_placeholder(name).ok_or_else(|| SubjectError::Placeholder {
                    template: text.to_owned(),
                    placeholder: name.to_owned(),
                })?,
            );
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        let template = Template {
            text: text.to_owned(),
            pieces,
        };
        // Render with a long sample subject to catch templates that can
        // never yield a valid subject (`a..{tenant}`, wildcards, spaces).
        validate_subject(&template.render("tenant", SAMPLE_SUBJECT)).map_err(|cause| {
            SubjectError::Invalid {
                template: text.to_owned(),
                cause: Box::new(cause),
            }
        })?;
        Ok(template)
    }

    /// Fill in the placeholders. A token index past the end of the subject
    /// renders as nothing, which the caller's subject check then rejects.
    pub fn render(&self, tenant: &str, subject: &str) -> String {
        let mut out = String::with_capacity(self.text.len() + subject.len());
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Tenant => out.push_str(tenant),
                Piece::Subject => out.push_str(subject),
                Piece::Token(n) => out.push_str(subject.split('.').nth(*n).unwrap_or("")),
                Piece::TokensFrom(n) => {
                    for (i, t) in subject.split('.').skip(*n).enumerate() {
                        if i > 0 {
                            out.push('.');
                        }
                        out.push_str(t);
                    }
                }
            }
        }
        out
    }

    /// The permitted-subject pattern this template implies: its literal
    /// leading tokens followed by `>`, or the template itself when it has no
    /// placeholder. `None` when the template starts with a placeholder other
    /// than `{tenant}`, so nothing safe can be derived.
    pub fn implied_permit(&self, tenant: &str) -> Option<String> {
        let mut prefix = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => prefix.push_str(s),
                Piece::Tenant => prefix.push_str(tenant),
                _ => {
                    // Keep only whole tokens before the first free placeholder.
                    let cut = prefix.rfind('.')?;
                    prefix.truncate(cut);
                    return Some(format!("{prefix}.>"));
                }
            }
        }
        Some(prefix)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_placeholder(name: &str) -> Option<Piece> {
    match name {
        "tenant" => return Some(Piece::Tenant),
        "subject" => return Some(Piece::Subject),
        _ => {}
    }
    let index = name.strip_prefix("subject[")?.strip_suffix(']')?;
    match index.strip_suffix("..") {
        Some(from) => from.parse().ok().map(Piece::TokensFrom),
        None => index.parse().ok().map(Piece::Token),
    }
}

/// Could some subject match both patterns? Token-wise: `*` and `>` match
/// anything, literals must agree.
pub fn pattern_overlaps(a: &str, b: &str) -> bool {
    let mut at = a.split('.');
    let mut bt = b.split('.');
    loop {
        match (at.next(), bt.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_patterns() {
        assert!(pattern_overlaps("a.>", "a.b.c"));
        assert!(pattern_overlaps("a.*.c", "a.b.*"));
        assert!(!pattern_overlaps("a.out.>", "a.in.>"));
        assert!(!pattern_overlaps("a.b", "a.b.c"));
    }

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_token_checks() {
        for subject in [
            "a", "a.b", "", ".", "a.", ".a", "a..b", "a b", "a\tb", "a\x7fb", "a\u{85}b",
            "a\u{a0}b", "é.ü", "a.*", "*", ">", "a.>", "a.*b", "a\x01.*",
        ] {
            // The checks as first written, by `str` token and by character.
            let expected = if subject.is_empty() || subject.split('.').any(str::is_empty) {
                Err(SubjectError::EmptyToken(subject.to_owned()))
            } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err(SubjectError::BadCharacter(subject.to_owned()))
            } else if subject.split('.').any(|t| t == "*" || t == ">") {
                Err(SubjectError::Wildcard(subject.to_owned()))
            } else {
                Ok(())
            };
            assert_eq!(validate_subject(subject), expected, "{subject:?}");
        }
    }

    #[test]
    fn publish_subjects_are_validated() {
        assert!(validate_subject("acme.out.orders").is_ok());
        assert!(matches!(
            validate_subject("acme..x"),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_subject(""),
            Err(SubjectError::EmptyToken(_))
        ));
        assert!(matches!(
            validate_subject("a.*"),
            Err(SubjectError::Wildcard(_))
        ));
        assert!(matches!(
            validate_subject("a b"),
            Err(SubjectError::BadCharacter(_))
        ));
        assert!(validate_pattern("a.*.>").is_ok());
        assert!(matches!(
            validate_pattern("a.>.b"),
            Err(SubjectError::MisplacedTail(_))
        ));
    }

    #[test]
    fn templates_render_tokens() {
        let t = Template::parse("{tenant}.out.{subject[2..]}").unwrap();
        assert_eq!(t.render("acme", "acme.in.orders.eu"), "acme.out.orders.eu");
        let t = Template::parse("out.{subject[1]}.{subject}").unwrap();
        assert_eq!(t.render("x", "a.b"), "out.b.a.b");
        assert_eq!(
            Template::parse("fixed.subject").unwrap().render("x", "y"),
            "fixed.subject"
        );
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert!(matches!(
            Template::parse("out.{nope}"),
            Err(SubjectError::Placeholder { .. })
        ));
        assert!(matches!(
            Template::parse("out.{tenant"),
            Err(SubjectError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("out..{tenant}"),
            Err(SubjectError::Invalid { .. })
        ));
        assert!(matches!(
            Template::parse("out.*.{tenant}"),
            Err(SubjectError::Invalid { .. })
        ));
    }

    #[test]
    fn permits_follow_the_literal_prefix() {
        let t = Template::parse("{tenant}.out.{subject[2..]}").unwrap();
        assert_eq!(t.implied_permit("acme").as_deref(), Some("acme.out.>"));
        let t = Template::parse("fixed.{tenant}").unwrap();
        assert_eq!(t.implied_permit("acme").as_deref(), Some("fixed.acme"));
        let t = Template::parse("{subject}.out").unwrap();
        assert_eq!(t.implied_permit("acme"), None);
    }
}
