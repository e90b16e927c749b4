//! NATS subjects: patterns to match input subjects, and the output subject
//! templates a rule publishes to.
//!
//! Subjects are `.`-separated tokens. In a pattern, a `*` token matches any
//! one token and a final `>` matches one or more trailing tokens, as in NATS
//! subscriptions; any other token (including `a*`) is literal.

/// The placeholder in output subjects that becomes the tenant.
pub const TENANT: &str = "{tenant}";

/// A parsed subject pattern such as `acme.orders.*.>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; only ever last.
    Rest,
}

impl Pattern {
    /// Parse a pattern, rejecting empty tokens, whitespace and a `>` that is
    /// not the last token (NATS would refuse such a subscription too).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let raw: Vec<&str> = split_tokens(pattern)?;
        let last = raw.len() - 1;
        let tokens = raw
            .iter()
            .enumerate()
            .map(|(index, token)| match *token {
                "*" => Ok(Token::One),
                ">" if index == last => Ok(Token::Rest),
                ">" => Err(format!(
                    "invalid subject pattern \"{pattern}\": \">\" must be the last token"
                )),
                literal => Ok(Token::Literal(literal.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tokens })
    }

    /// Whether `subject` matches this pattern.
    pub fn matches(&self, subject: &str) -> bool {
        let mut remaining = subject.split('.');
        for token in &self.tokens {
            match (token, remaining.next()) {
                (_, None) => return false,
                (Token::Rest, Some(_)) => return true,
                (Token::One, Some(_)) => {}
                (Token::Literal(literal), Some(got)) => {
                    if literal != got {
                        return false;
                    }
                }
            }
        }
        remaining.next().is_none()
    }
}

/// An output subject template, split once at its `{tenant}` placeholders so
/// that filling it per message is copying, not searching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The text between placeholders: one more piece than placeholders.
    pieces: Vec<String>,
}

impl Template {
    /// Parse and check a template: a publishable subject (no wildcards, no
    /// empty tokens, no whitespace) once `{tenant}` is filled in.
    pub fn parse(template: &str) -> Result<Self, String> {
        let parsed = Template {
            pieces: template.split(TENANT).map(str::to_owned).collect(),
        };
        let filled = parsed.fill("tenant");
        let tokens = split_tokens(&filled)
            .map_err(|err| err.replace(&format!("\"{filled}\""), &format!("\"{template}\"")))?;
        if tokens.iter().any(|t| *t == "*" || *t == ">") {
            return Err(format!(
                "invalid output subject \"{template}\": wildcards cannot be published to"
            ));
        }
        Ok(parsed)
    }

    /// The subject for `tenant`.
    pub fn fill(&self, tenant: &str) -> String {
        let placeholders = self.pieces.len() - 1;
        let len = self.pieces.iter().map(String::len).sum::<usize>() + placeholders * tenant.len();
        let mut out = String::with_capacity(len);
        for (index, piece) in self.pieces.iter().enumerate() {
            if index > 0 {
                out.push_str(tenant);
            }
            out.push_str(piece);
        }
        out
    }
}

fn split_tokens(subject: &str) -> Result<Vec<&str>, String> {
    if subject.is_empty() {
        return Err("empty subject".to_owned());
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(format!(
            "invalid subject \"{subject}\": contains whitespace"
        ));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(format!("invalid subject \"{subject}\": empty token"));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, subject: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(subject)
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(matches("a.b.c", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.x.c"));
    }

    #[test]
    fn star_matches_one_token() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("*.*", "x.y"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
    }

    #[test]
    fn gt_matches_one_or_more_trailing_tokens() {
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c.d"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.>", "b.c"));
        assert!(matches(">", "x"));
        assert!(matches("*.b.>", "a.b.c"));
    }

    #[test]
    fn partial_wildcards_are_literal() {
        assert!(matches("a*.b", "a*.b"));
        assert!(!matches("a*.b", "ax.b"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a..b").is_err());
        assert!(Pattern::parse("a.").is_err());
        assert!(Pattern::parse("a b").is_err());
        let err = Pattern::parse("a.>.b").unwrap_err();
        assert_eq!(
            err,
            "invalid subject pattern \"a.>.b\": \">\" must be the last token"
        );
    }

    #[test]
    fn templates() {
        let fill = |t: &str| Template::parse(t).map(|t| t.fill("acme"));
        assert_eq!(
            fill("{tenant}.out.{tenant}"),
            Ok("acme.out.acme".to_owned())
        );
        assert_eq!(fill("{tenant}.out"), Ok("acme.out".to_owned()));
        assert_eq!(fill("out.x"), Ok("out.x".to_owned()));
        assert_eq!(fill("a.{tenant}{tenant}.b"), Ok("a.acmeacme.b".to_owned()));
        assert!(fill("out.*").is_err());
        assert!(fill("out.>").is_err());
        assert_eq!(
            fill("{tenant}..x"),
            Err("invalid subject \"{tenant}..x\": empty token".to_owned())
        );
        assert!(fill("").is_err());
    }
}
