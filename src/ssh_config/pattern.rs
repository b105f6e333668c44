//! ssh_config(5) PATTERNS: `*` and `?` wildcards, `!` negation, and the two list forms
//! (`Host a b !c`, one pattern per word; `Match host a,b,!c`, a comma-separated list).
//! Also used for `Include` globs, one path component at a time.

/// Whether `text` matches the wildcard `pattern` (`*`: any run of characters, `?`: exactly one).
/// Case-sensitive; callers lowercase host names first, as ssh does.
pub fn wildcard(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative matcher with one backtrack point (the last `*`): linear in practice and never
    // recursive, so a hostile pattern cannot blow the stack.
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The outcome of matching a list of patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListMatch {
    /// No pattern matched.
    None,
    /// A positive pattern matched and no negated one did.
    Positive,
    /// A negated pattern (`!pat`) matched: the whole list fails, whatever else matched.
    Negated,
}

impl ListMatch {
    pub fn matched(self) -> bool {
        self == ListMatch::Positive
    }
}

/// Matches `text` against each pattern in turn; a matching `!pattern` wins over everything.
pub fn list<'a>(text: &str, patterns: impl IntoIterator<Item = &'a str>) -> ListMatch {
    let mut result = ListMatch::None;
    for pat in patterns {
        let (negated, pat) = match pat.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, pat),
        };
        if wildcard(text, pat) {
            if negated {
                return ListMatch::Negated;
            }
            result = ListMatch::Positive;
        }
    }
    result
}

/// A `Host` line's words, matched against a host name (case-insensitively).
pub fn host_words(host: &str, words: &[String]) -> ListMatch {
    let host = host.to_ascii_lowercase();
    let lowered: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    list(&host, lowered.iter().map(String::as_str))
}

/// A `Match` criterion's comma-separated list; host names compare case-insensitively.
pub fn comma_list(text: &str, patterns: &str, hostname: bool) -> ListMatch {
    if hostname {
        let text = text.to_ascii_lowercase();
        let patterns = patterns.to_ascii_lowercase();
        list(&text, patterns.split(',').filter(|p| !p.is_empty()))
    } else {
        list(text, patterns.split(',').filter(|p| !p.is_empty()))
    }
}

/// Whether a path component contains glob characters.
pub fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("host.example.com", "*.example.com"));
        assert!(wildcard("host.example.com", "*"));
        assert!(wildcard("", "*"));
        assert!(!wildcard("example.com", "*.example.com"));
        assert!(wildcard("192.168.0.7", "192.168.0.?"));
        assert!(!wildcard("192.168.0.17", "192.168.0.?"));
        assert!(wildcard("abc", "a*c"));
        assert!(wildcard("abbbc", "a*b*c"));
        assert!(!wildcard("abcd", "a*c"));
        assert!(wildcard("a*c", "a*c"));
        assert!(!wildcard("ab", "abc"));
        assert!(wildcard("abc", "abc"));
        assert!(wildcard(
            "xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
            "x*a*a*a*a*a*a*a*b"
        ));
    }

    #[test]
    fn negation_wins() {
        // ssh_config(5): "Host *.example.com !bad.example.com".
        let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        let w = words("*.example.com !bad.example.com");
        assert_eq!(host_words("good.example.com", &w), ListMatch::Positive);
        assert_eq!(host_words("bad.example.com", &w), ListMatch::Negated);
        assert_eq!(host_words("other.org", &w), ListMatch::None);
        // A negation alone never matches anything by itself.
        assert_eq!(host_words("x", &words("!y")), ListMatch::None);
        assert_eq!(host_words("y", &words("!y *")), ListMatch::Negated);
        assert_eq!(host_words("Good.Example.COM", &w), ListMatch::Positive);
        assert_eq!(comma_list("web1", "web*,!web2", true), ListMatch::Positive);
        assert_eq!(comma_list("web2", "web*,!web2", true), ListMatch::Negated);
        assert_eq!(comma_list("Alice", "alice", false), ListMatch::None);
    }
}
