//! Reading ssh_config(5) files: one line into a keyword and its arguments (ssh's own rules for
//! `=`, quotes, backslashes and `#` comments), a file into numbered directives, and `Include`
//! arguments into the files they name (`~`, paths relative to ~/.ssh, glob wildcards).

use std::path::{Path, PathBuf};

use super::pattern;

/// One meaningful line of a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The keyword, lowercased (keywords are case-insensitive).
    pub keyword: String,
    /// Its arguments with quotes removed.
    pub args: Vec<String>,
    /// 1-based line number.
    pub line: usize,
}

/// Splits one line as ssh does: the keyword ends at whitespace or `=` (`Port=22`, `Port = 22`,
/// `Port 22`), the rest are words separated by whitespace, with `"..."`/`'...'` grouping and
/// `\"`, `\'`, `\\` and (outside quotes) `\ ` escapes; a word starting with `#` ends the line.
/// Returns `None` for blank and comment lines; `Err` names what is wrong.
pub fn split_line(text: &str) -> Result<Option<(String, Vec<String>)>, String> {
    let s = text.trim_end_matches(['\r', '\n', ' ', '\t', '\x0c']);
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let end = s.find([' ', '\t', '=']).unwrap_or(s.len());
    let keyword = s[..end].to_ascii_lowercase();
    let mut rest = s[end..].trim_start_matches([' ', '\t']);
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start_matches([' ', '\t']);
    }
    if keyword.is_empty() {
        return Err("a line starts with '=' instead of a keyword".into());
    }
    Ok(Some((keyword, split_words(rest)?)))
}

/// ssh's argv_split with comment termination.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' || chars[i] == '\t' {
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' {
                match chars.get(i + 1) {
                    Some(&n)
                        if n == '\'' || n == '"' || n == '\\' || (quote.is_none() && n == ' ') =>
                    {
                        word.push(n);
                        i += 2;
                    }
                    _ => {
                        word.push(c);
                        i += 1;
                    }
                }
                continue;
            }
            match quote {
                None if c == ' ' || c == '\t' => break,
                None if c == '"' || c == '\'' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ => word.push(c),
            }
            i += 1;
        }
        if quote.is_some() {
            return Err("a quote is not closed".into());
        }
        words.push(word);
    }
    Ok(words)
}

/// Parses a whole file's text into directives; the first bad line is an error with its number.
pub fn directives(text: &str) -> Result<Vec<Directive>, (usize, String)> {
    let mut out = Vec::new();
    for (n, raw) in text.split('\n').enumerate() {
        match split_line(raw) {
            Ok(Some((keyword, args))) => out.push(Directive {
                keyword,
                args,
                line: n + 1,
            }),
            Ok(None) => {}
            Err(e) => return Err((n + 1, e)),
        }
    }
    Ok(out)
}

/// `~` or `~/...` with the given home; `~user/...` with that user's home from the password
/// database. Anything else is returned unchanged.
pub fn tilde(path: &str, home: &Path) -> Result<PathBuf, String> {
    let Some(rest) = path.strip_prefix('~') else {
        return Ok(PathBuf::from(path));
    };
    let (user, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i + 1..].trim_start_matches('/')),
        None => (rest, ""),
    };
    let base = if user.is_empty() {
        home.to_path_buf()
    } else {
        match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => u.dir,
            _ => return Err(format!("'{path}': no user named '{user}' for '~{user}'")),
        }
    };
    Ok(if tail.is_empty() {
        base
    } else {
        base.join(tail)
    })
}

/// The files an `Include` argument names, sorted as glob(3) returns them. A relative path is
/// relative to `~/.ssh` (the rule ssh applies to user configuration files); no match is no
/// file (not an error, as in ssh).
pub fn include_paths(arg: &str, home: &Path) -> Result<Vec<PathBuf>, String> {
    let path = tilde(arg, home)?;
    let path = if path.is_absolute() {
        path
    } else {
        home.join(".ssh").join(path)
    };
    let mut found = vec![PathBuf::from("/")];
    for comp in path.components().skip(1) {
        let comp = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        for base in &found {
            if !pattern::has_wildcard(&comp) {
                next.push(base.join(&comp));
                continue;
            }
            let Ok(entries) = std::fs::read_dir(base) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // As glob(3): a leading dot is only matched by a pattern's leading dot.
                .filter(|n| !n.starts_with('.') || comp.starts_with('.'))
                .filter(|n| pattern::wildcard(n, &comp))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    Ok(found.into_iter().filter(|p| p.is_file()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> (String, Vec<String>) {
        split_line(s).unwrap().unwrap()
    }

    #[test]
    fn keyword_forms() {
        let want = ("port".to_string(), vec!["2222".to_string()]);
        for s in [
            "Port 2222",
            "Port=2222",
            "Port = 2222",
            "  port\t2222  ",
            "PORT =2222\r",
        ] {
            assert_eq!(split(s), want, "{s:?}");
        }
        assert_eq!(split_line("   ").unwrap(), None);
        assert_eq!(split_line("# Port 1").unwrap(), None);
        assert_eq!(split_line("  # Port 1").unwrap(), None);
        assert_eq!(split("Host"), ("host".to_string(), vec![]));
    }

    #[test]
    fn quotes_escapes_comments() {
        assert_eq!(
            split(r#"IdentityFile "/path with/spaces" second # a comment"#).1,
            vec!["/path with/spaces", "second"]
        );
        assert_eq!(split(r"IdentityFile /a\ b").1, vec!["/a b"]);
        assert_eq!(split(r#"X 'it''s' "a\"b""#).1, vec!["its", "a\"b"]);
        assert_eq!(split(r#"X a"b c"d"#).1, vec!["ab cd"]);
        assert_eq!(split(r#"X """#).1, vec![""]);
        assert_eq!(split(r"X a\qb").1, vec![r"a\qb"]);
        assert_eq!(split("X a#b").1, vec!["a#b"]);
        assert!(split_line(r#"X "open"#).is_err());
        assert!(split_line("= 3").is_err());
    }

    #[test]
    fn line_numbers() {
        let d = directives("# c\n\nHost a\n  Port 1\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].line, d[1].line), (3, 4));
        assert_eq!(directives("Host a\nX \"x\n").unwrap_err().0, 2);
    }

    #[test]
    fn includes_glob_and_relative() {
        let home = std::env::temp_dir().join(format!("dvs-inc-{}", std::process::id()));
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(ssh.join("conf.d")).unwrap();
        for f in ["b.conf", "a.conf", ".hidden.conf", "c.txt"] {
            std::fs::write(ssh.join("conf.d").join(f), "").unwrap();
        }
        let got = include_paths("conf.d/*.conf", &home).unwrap();
        assert_eq!(
            got,
            vec![ssh.join("conf.d/a.conf"), ssh.join("conf.d/b.conf")]
        );
        let got = include_paths("~/.ssh/conf.d/?.txt", &home).unwrap();
        assert_eq!(got, vec![ssh.join("conf.d/c.txt")]);
        let abs = ssh.join("conf.d/a.conf");
        assert_eq!(
            include_paths(abs.to_str().unwrap(), &home).unwrap(),
            vec![abs.clone()]
        );
        assert!(include_paths("nothing/*", &home).unwrap().is_empty());
        assert_eq!(tilde("~", &home).unwrap(), home);
        assert_eq!(tilde("~/x", &home).unwrap(), home.join("x"));
        assert_eq!(tilde("~root/x", &home).unwrap(), PathBuf::from("/root/x"));
        assert!(tilde("~no-such-user-here/x", &home).is_err());
        let _ = std::fs::remove_dir_all(&home);
    }
}
