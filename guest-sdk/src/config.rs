//! The stage configuration handed to `init`.
//!
//! The host flattens the stage's TOML table into string pairs, joining nested
//! keys with `.`: `[stages.config.rename] "user.name" = "customer"` arrives
//! as `("rename.user.name", "customer")`. This module only looks values up
//! and checks key names; what a value means is the plugin's business.

use std::fmt::Write as _;

/// The configuration of one stage: flat key/value strings in host order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wrap the pairs `init` received.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// The value of `key`. If the key repeats, the last value wins, as a
    /// later TOML layer overrides an earlier one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is absent.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key)
            .ok_or_else(|| format!("missing config key \"{key}\""))
    }

    /// Every pair, in the order the host sent them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The pairs whose key starts with `prefix`, with the prefix removed:
    /// `with_prefix("set.")` yields `("a.b", "1")` for `set.a.b = "1"`.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v)))
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fail on the first key that `accepted` does not allow, naming it and
    /// listing the accepted ones, so a typo is caught when the config is
    /// checked rather than silently ignored.
    ///
    /// An accepted entry is either an exact key (`"field"`) or a prefix
    /// pattern ending in `.*` (`"rename.*"`), which allows any key that
    /// starts with the part before `*` and has something after it.
    pub fn reject_unknown(&self, accepted: &[&str]) -> Result<(), String> {
        match self.iter().find(|(key, _)| !is_accepted(key, accepted)) {
            None => Ok(()),
            Some((key, _)) => {
                let mut msg = format!("unknown config key \"{key}\"");
                if accepted.is_empty() {
                    msg.push_str("; this plugin takes no configuration");
                } else {
                    let _ = write!(msg, "; accepted keys: {}", accepted.join(", "));
                }
                Err(msg)
            }
        }
    }
}

fn is_accepted(key: &str, accepted: &[&str]) -> bool {
    accepted
        .iter()
        .any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
            None => key == *pattern,
        })
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Self {
        Self::new(entries)
    }
}

impl<'a> IntoIterator for &'a Config {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl FromIterator<(String, String)> for Config {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn get_returns_the_last_value_of_a_key() {
        let c = config(&[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(c.get("a"), Some("3"));
        assert_eq!(c.get("b"), Some("2"));
        assert_eq!(c.get("c"), None);
    }

    #[test]
    fn get_or_and_require() {
        let c = config(&[("a", "1")]);
        assert_eq!(c.get_or("a", "x"), "1");
        assert_eq!(c.get_or("b", "x"), "x");
        assert_eq!(c.require("a"), Ok("1"));
        assert_eq!(c.require("b"), Err("missing config key \"b\"".to_owned()));
    }

    #[test]
    fn iteration_keeps_host_order() {
        let c = config(&[("b", "2"), ("a", "1")]);
        let pairs: Vec<_> = c.iter().collect();
        assert_eq!(pairs, vec![("b", "2"), ("a", "1")]);
        let via_ref: Vec<_> = (&c).into_iter().collect();
        assert_eq!(via_ref, pairs);
        assert_eq!(c.len(), 2);
        assert!(!c.is_empty());
        assert!(Config::default().is_empty());
    }

    #[test]
    fn with_prefix_strips_the_prefix() {
        let c = config(&[("set.a.b", "1"), ("remove", "x"), ("set.c", "2")]);
        let set: Vec<_> = c.with_prefix("set.").collect();
        assert_eq!(set, vec![("a.b", "1"), ("c", "2")]);
    }

    #[test]
    fn reject_unknown_accepts_exact_keys_and_prefix_patterns() {
        let c = config(&[("field", "x"), ("rename.a", "b")]);
        assert_eq!(c.reject_unknown(&["field", "rename.*"]), Ok(()));
    }

    #[test]
    fn reject_unknown_names_the_key_and_the_accepted_ones() {
        let c = config(&[("field", "x"), ("feild", "y")]);
        let err = c.reject_unknown(&["field", "header"]).unwrap_err();
        assert_eq!(
            err,
            "unknown config key \"feild\"; accepted keys: field, header"
        );
    }

    #[test]
    fn a_prefix_pattern_needs_something_after_the_prefix() {
        let c = config(&[("rename.", "b")]);
        let err = c.reject_unknown(&["rename.*"]).unwrap_err();
        assert!(err.starts_with("unknown config key \"rename.\""), "{err}");
        let c = config(&[("renamed", "b")]);
        assert!(c.reject_unknown(&["rename.*"]).is_err());
    }

    #[test]
    fn no_accepted_keys_says_so() {
        let c = config(&[("x", "1")]);
        assert_eq!(
            c.reject_unknown(&[]),
            Err("unknown config key \"x\"; this plugin takes no configuration".to_owned())
        );
        assert_eq!(Config::default().reject_unknown(&[]), Ok(()));
    }
}
