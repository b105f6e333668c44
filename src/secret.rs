//! Secrets: a string that must never reach a log line, an error message or `docker volume
//! inspect`; which options count as secrets; and blanking them in the process's own argv.

use std::fmt;

/// Holds a password or passphrase. `Debug` and `Display` print `<redacted>`, so a secret that
/// slips into a `tracing` field or a `format!` is still not disclosed.
#[derive(Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The only way to read the value: call sites are easy to audit with grep.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Options whose values are secrets. `password_file` is not: it names a file, and the file's
/// content never passes through the options.
const SECRET_OPTIONS: &[&str] = &["password", "passphrase"];

/// True if the option `name` carries a secret value. Matched like the option parser matches
/// names (surrounding spaces ignored, ASCII case-insensitive), so no spelling the parser
/// accepts slips past.
pub fn is_secret_option(name: &str) -> bool {
    let name = name.trim();
    SECRET_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Overwrites the values of secret options (`password=...`, `passphrase=...`) in the process's
/// own argv, so that `/proc/PID/cmdline` (readable by every local user) no longer shows them.
/// Call it once the options are parsed, before any other thread starts: what was parsed has
/// been copied already. Returns how many values were blanked. Does nothing where the original
/// argv could not be captured (not Linux/glibc).
pub fn scrub_process_args() -> usize {
    // SAFETY: the slices are dropped at the end of this function, before any later call
    // takes new ones. The one caller (the mount command) runs this on its main thread right
    // after parsing, before it starts the runtime or any thread, so nothing reads the
    // arguments meanwhile, as documented above. See `argv::original` for the memory itself.
    let args = unsafe { argv::original() };
    args.into_iter().map(blank_secret_values).sum()
}

/// Replaces, in one command-line argument, every byte of the value of each secret option with
/// `*` (same length, so the argument keeps its place and size). The argument is read the way
/// `-o` values are split (`a=b,c=d`, `\,` escapes a comma); a leading `-o` or `-o=` (as in
/// `-opassword=x`) is skipped. Returns how many values were blanked.
pub fn blank_secret_values(arg: &mut [u8]) -> usize {
    let start = match arg {
        [b'-', b'o', b'=', ..] => 3,
        [b'-', b'o', ..] => 2,
        _ => 0,
    };
    let mut blanked = 0;
    let mut item = start;
    while item < arg.len() {
        let end = item_end(arg, item);
        let eq = arg[item..end].iter().position(|&b| b == b'=');
        if let Some(eq) = eq {
            let name = String::from_utf8_lossy(&arg[item..item + eq]);
            if is_secret_option(&name) && item + eq + 1 < end {
                arg[item + eq + 1..end].fill(b'*');
                blanked += 1;
            }
        }
        item = end + 1;
    }
    blanked
}

/// Where the `-o` item starting at `from` ends: the next comma not escaped by a backslash.
fn item_end(arg: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < arg.len() {
        match arg[i] {
            b'\\' if arg.get(i + 1) == Some(&b',') => i += 2,
            b',' => return i,
            _ => i += 1,
        }
    }
    arg.len()
}

/// The original argv strings, captured at start-up.
///
/// Rust's std copies the arguments and gives no access to the memory the kernel laid out (the
/// memory `/proc/PID/cmdline` reads). glibc calls each `.init_array` function with
/// `(argc, argv, envp)`, in static builds too (our binary is one); std captures its own copy
/// of the pointers the same way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod argv {
    use std::ffi::{CStr, c_char, c_int};
    use std::sync::atomic::{AtomicIsize, AtomicPtr, Ordering};

    static ARGC: AtomicIsize = AtomicIsize::new(0);
    static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

    #[used]
    #[unsafe(link_section = ".init_array.00099")]
    static CAPTURE: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture;

    extern "C" fn capture(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
        ARGC.store(argc as isize, Ordering::Relaxed);
        ARGV.store(argv, Ordering::Relaxed);
    }

    /// Each argument after the program name, as its bytes in the original argv memory (without
    /// the terminating NUL).
    ///
    /// # Safety
    /// No slice from an earlier call may still be alive (they alias the same memory), and no
    /// other thread may be reading the arguments (`std::env::args`) while they are written.
    pub unsafe fn original() -> Vec<&'static mut [u8]> {
        let argc = ARGC.load(Ordering::Relaxed);
        let argv = ARGV.load(Ordering::Relaxed);
        if argv.is_null() {
            return Vec::new();
        }
        (1..argc)
            .filter_map(|i| {
                // SAFETY: glibc passed `argc` and `argv` to `capture` as the kernel laid them
                // out: `argv[0..argc]` are valid pointers to NUL-terminated strings that live,
                // writable (the process's own stack), for the whole process. Each string is
                // handed out once per call, and the caller keeps to this function's contract.
                // The slices end before the NUL, so writes through them never change a
                // string's length for std's `env::args`, which reads them by raw pointer.
                unsafe {
                    let p = *argv.offset(i);
                    if p.is_null() {
                        return None;
                    }
                    let len = CStr::from_ptr(p).to_bytes().len();
                    Some(std::slice::from_raw_parts_mut(p.cast::<u8>(), len))
                }
            })
            .collect()
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod argv {
    /// # Safety
    /// Nothing to uphold: there is no captured argv here.
    pub unsafe fn original() -> Vec<&'static mut [u8]> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blanked(arg: &str) -> (String, usize) {
        let mut b = arg.as_bytes().to_vec();
        let n = blank_secret_values(&mut b);
        (String::from_utf8(b).unwrap(), n)
    }

    #[test]
    fn secret_option_names_match_like_the_parser() {
        for yes in ["password", "Password", " PASSPHRASE ", "passphrase"] {
            assert!(is_secret_option(yes), "{yes}");
        }
        for no in ["password_file", "password_stdin", "port", "sshcmd", "pass"] {
            assert!(!is_secret_option(no), "{no}");
        }
    }

    #[test]
    fn only_secret_values_are_blanked() {
        assert_eq!(blanked("password=hunter2"), ("password=*******".into(), 1));
        assert_eq!(
            blanked("allow_other,Password=a\\,b,port=22,passphrase=pp"),
            ("allow_other,Password=****,port=22,passphrase=**".into(), 2)
        );
        assert_eq!(blanked("-opassword=xy"), ("-opassword=**".into(), 1));
        assert_eq!(blanked("-o=password=xy"), ("-o=password=**".into(), 1));
        for kept in [
            "password_file=/root/.ssh/pw",
            "password_stdin",
            "user@host:/password=x",
            "password=",
            "mount",
            "",
        ] {
            assert_eq!(blanked(kept), (kept.to_string(), 0), "{kept}");
        }
    }

    #[test]
    fn argv_is_captured_at_start_up() {
        // The test binary's own argv: present, and the program name is left out.
        // SAFETY: the only call in this test binary; nothing writes the arguments.
        let args = unsafe { argv::original() };
        let first = std::env::args().nth(1);
        assert_eq!(
            args.first()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            first
        );
    }
}
