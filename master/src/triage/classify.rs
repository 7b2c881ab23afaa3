//! Reading why a build failed from its log and its exit: [`classify`].
//!
//! The rules are the error messages of the tools a build runs (gcc and clang, ld, pkg-config,
//! the shell, setuptools and setuptools-rust, meson, CMake front ends, pip, the Python
//! interpreter). A log holds messages that did not stop the build too (a setup script probing
//! for an optional library, pip retrying a download), so the recognised message nearest the
//! end of the log wins, and a network message only when nothing else is recognised. The log
//! is whatever the build printed: a detail is taken only when it looks like what it claims to
//! be (a path of a header, a command's name, in printable ASCII), and is kept free of control
//! characters and cut to the column's size. Word boundaries are ASCII ones, so that the regex
//! engine's fast path holds on logs full of UTF-8 quotes.

use std::sync::LazyLock;

use piwheels_common::protocols::FailureClass;
use regex::{Captures, Regex, RegexSet};

/// The longest detail kept (the schema's `failure_detail` column).
pub const MAX_DETAIL: usize = 200;

/// A failed build's class and detail (empty when the class has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triage {
    /// The class.
    pub class: FailureClass,
    /// What was missing, or what was asked for, as the log named it.
    pub detail: String,
}

/// One rule: its pattern and how a match becomes a detail.
struct Rule {
    class: FailureClass,
    pattern: String,
    detail: fn(&Captures<'_>) -> String,
}

/// The first capture group, as written.
fn group(captures: &Captures<'_>) -> String {
    captures.get(1).map_or(String::new(), |m| m.as_str().to_string())
}

fn none(_: &Captures<'_>) -> String {
    String::new()
}

/// The first capture group's last path component (`/usr/bin/gfortran` → `gfortran`).
fn command(captures: &Captures<'_>) -> String {
    let name = group(captures);
    name.rsplit('/').next().unwrap_or_default().to_string()
}

/// `-lxml2` → `libxml2.so`, the file the linker looked for.
fn shared_library(captures: &Captures<'_>) -> String {
    format!("lib{}.so", group(captures))
}

/// `libxml-2.0` → `libxml-2.0.pc`, the file pkg-config looked for.
fn pkg_config_file(captures: &Captures<'_>) -> String {
    format!("{}.pc", group(captures))
}

/// A name of a header, library or command: what a Debian Contents index can hold.
const NAME: &str = r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*";

/// The rules. Their order breaks ties only (two rules matching at the same place).
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    use FailureClass::*;
    // A header has a C or C++ header's extension, or is in a directory (`Eigen/Dense`).
    let header = r"((?:[A-Za-z0-9_+][A-Za-z0-9_.+-]*/)*[A-Za-z0-9_+][A-Za-z0-9_.+-]*\.(?:h|hh|hpp|hxx|H)|(?:[A-Za-z0-9_+][A-Za-z0-9_.+-]*/)+[A-Za-z0-9_+][A-Za-z0-9_+-]*)";
    vec![
        // gcc: `x.c:1:10: fatal error: libxml/xmlversion.h: No such file or directory`
        Rule { class: MissingHeader, pattern: format!(r"fatal error: {header}: No such file or directory"), detail: group },
        // clang: `fatal error: 'libxml/xmlversion.h' file not found`
        Rule { class: MissingHeader, pattern: format!(r"fatal error: '{header}' file not found"), detail: group },
        // ld: `/usr/bin/ld: cannot find -lxml2: No such file or directory`
        Rule { class: MissingLibrary, pattern: format!(r"cannot find -l({NAME})"), detail: shared_library },
        // pkg-config: `Package libxml-2.0 was not found in the pkg-config search path.`;
        // pkgconf: `Package 'libxml-2.0', required by 'virtual:world', not found`
        Rule {
            class: MissingLibrary,
            pattern: format!(r"Package '?({NAME}?)'?(?:, required by '[^'\n]*',)? (?:was )?not found"),
            detail: pkg_config_file,
        },
        // setuptools-rust
        Rule { class: MissingTool, pattern: r"can't find Rust compiler".into(), detail: |_| "rustc".into() },
        // sh, dash, bash: `sh: 1: cmake: not found`, `bash: line 1: gfortran: command not found`
        Rule {
            class: MissingTool,
            pattern: format!(r"(?m)(?:^|[\s/])(?:ba|da)?sh: (?:\d+: |line \d+: )?({NAME}): (?:command )?not found"),
            detail: group,
        },
        // setuptools: `error: command 'gfortran' failed: No such file or directory`
        Rule {
            class: MissingTool,
            pattern: r"error: command '((?:[^'\n/]*/)*[A-Za-z0-9_+][A-Za-z0-9_.+-]*)' failed: No such file or directory".into(),
            detail: command,
        },
        // Python running a command that is not there, as the exception or as setuptools
        // reports it (a file would have a dot or a slash, or be VERSION, README, ...).
        Rule {
            class: MissingTool,
            pattern: r"(?:FileNotFoundError|error): \[Errno 2\] No such file or directory: '([a-z0-9_+][A-Za-z0-9_+-]*)'".into(),
            detail: group,
        },
        // meson: `ERROR: Unknown compiler(s): [['gfortran'], ['flang']]`
        Rule { class: MissingTool, pattern: format!(r"Unknown compiler\(s\): \[\['({NAME})'"), detail: group },
        // scikit-build, cmake front ends
        Rule {
            class: MissingTool,
            pattern: r"(?i)cmake (?:must be installed|is not installed|executable not found)|could not find cmake|did not find cmake".into(),
            detail: |_| "cmake".into(),
        },
        // pip: `ERROR: Package 'foo' requires a different Python: 3.11.2 not in '>=3.12'`
        Rule { class: UnsupportedPython, pattern: r"requires a different Python: \S+ not in '([ -&(-~]{1,100})'".into(), detail: group },
        Rule { class: UnsupportedPython, pattern: r"(?i)require[sd]? a different python version".into(), detail: none },
        // Python 2 code: `SyntaxError: Missing parentheses in call to 'print'`
        Rule { class: UnsupportedPython, pattern: r"Missing parentheses in call to '(?:print|exec)'".into(), detail: |_| "Python 2 only".into() },
        // setup.py's own check: `Python 3.12 or later is required`, `requires Python >= 3.12`
        Rule {
            class: UnsupportedPython,
            pattern: r"(?i)(?-u:\b)python (?:version )?(?:>= ?)?[23]\.\d+(?:\.\d+)? (?:or (?:later|newer|higher|above) )?(?:is )?required|requires python (?:version )?(?:>= ?)?[23]\.\d+".into(),
            detail: none,
        },
        // pip: a source or build dependency that could not be had, or not with its hash.
        Rule { class: SourceUnavailable, pattern: r"No matching distribution found for ([!-:<-~]{1,200})".into(), detail: group },
        Rule { class: SourceUnavailable, pattern: r"THESE PACKAGES DO NOT MATCH THE HASHES".into(), detail: |_| "hash mismatch".into() },
        Rule { class: SourceUnavailable, pattern: r"404 Client Error".into(), detail: none },
        Rule {
            class: Network,
            pattern: r"Temporary failure in name resolution|Name or service not known|Could not resolve host|Connection refused|Connection reset by peer|Network is unreachable|Failed to establish a new connection|Read timed out|Connection timed out".into(),
            detail: none,
        },
        Rule {
            class: Memory,
            pattern: r"(?-u:\b)MemoryError(?-u:\b)|Cannot allocate memory|virtual memory exhausted|[Oo]ut of memory|Killed signal terminated program".into(),
            detail: none,
        },
    ]
});

/// Every rule's pattern, for one pass over a log.
static SET: LazyLock<RegexSet> = LazyLock::new(|| RegexSet::new(RULES.iter().map(|rule| &rule.pattern)).expect("the triage rules are valid"));
/// Every rule's pattern on its own, for its captures.
static PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| RULES.iter().map(|rule| Regex::new(&rule.pattern).expect("a valid triage rule")).collect());

/// The class of a failed build: `failure` is the schema's failure name (`build`, `timeout`,
/// `out-of-memory`), `exit_status` its command's (None: a signal ended it), `log` its log.
/// The farm's own limits decide first; then the log; then a signal; then it is `other`.
pub fn classify(failure: Option<&str>, exit_status: Option<i32>, log: &str) -> Triage {
    let plain = |class| Triage { class, detail: String::new() };
    match failure {
        Some("timeout") => return plain(FailureClass::Timeout),
        Some("out-of-memory") => return plain(FailureClass::Memory),
        _ => {}
    }
    // Each matching rule's last match: the latest wins, a network message only alone.
    let latest = SET
        .matches(log)
        .iter()
        .filter_map(|index| PATTERNS[index].captures_iter(log).last().map(|captures| (index, captures)))
        .max_by_key(|(index, captures)| {
            (RULES[*index].class != FailureClass::Network, captures.get(0).map_or(0, |m| m.start()), std::cmp::Reverse(*index))
        });
    if let Some((index, captures)) = latest {
        let rule = &RULES[index];
        return Triage { class: rule.class, detail: cut((rule.detail)(&captures)) };
    }
    plain(if exit_status.is_none() { FailureClass::Killed } else { FailureClass::Other })
}

/// `detail` without control characters, cut to [`MAX_DETAIL`] bytes on a character boundary.
fn cut(detail: String) -> String {
    let mut detail: String = detail.chars().filter(|c| !c.is_control()).collect();
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(log: &str) -> (FailureClass, String) {
        let triage = classify(Some("build"), Some(1), log);
        (triage.class, triage.detail)
    }

    fn is(class: FailureClass, detail: &str) -> (FailureClass, String) {
        (class, detail.to_string())
    }

    #[test]
    fn compilers_name_the_missing_header() {
        let gcc = "building 'lxml.etree' extension\n\
                   src/lxml/includes/etree_defs.h:14:10: fatal error: libxml/xmlversion.h: No such file or directory\n   \
                   14 | #include \"libxml/xmlversion.h\"\ncompilation terminated.\n\
                   error: command '/usr/bin/aarch64-linux-gnu-gcc' failed with exit code 1\n";
        assert_eq!(class_of(gcc), is(FailureClass::MissingHeader, "libxml/xmlversion.h"));
        let clang = "x.c:2:10: fatal error: 'ffi.h' file not found\n#include <ffi.h>\n";
        assert_eq!(class_of(clang), is(FailureClass::MissingHeader, "ffi.h"));
    }

    #[test]
    fn the_error_nearest_the_end_names_the_cause() {
        let log = "a.c:1:10: fatal error: first.h: No such file or directory\nb.c:1:10: fatal error: second.h: No such file or directory\n";
        assert_eq!(class_of(log), is(FailureClass::MissingHeader, "second.h"));
        // A setup script's probes that did not stop the build come before the error that did.
        let probed = "sh: 1: git: not found\nPackage cairo was not found in the pkg-config search path.\n\
                      x.c:1:10: fatal error: zlib.h: No such file or directory\n";
        assert_eq!(class_of(probed), is(FailureClass::MissingHeader, "zlib.h"));
        let eigen = "x.cpp:1:10: fatal error: Eigen/Dense: No such file or directory\n";
        assert_eq!(class_of(eigen), is(FailureClass::MissingHeader, "Eigen/Dense"));
    }

    #[test]
    fn the_linker_and_pkg_config_name_the_missing_library() {
        assert_eq!(class_of("/usr/bin/ld: cannot find -lxml2: No such file or directory\n"), is(FailureClass::MissingLibrary, "libxml2.so"));
        assert_eq!(class_of("/usr/bin/ld: cannot find -lgfortran\n"), is(FailureClass::MissingLibrary, "libgfortran.so"));
        let pkg_config = "Package libxml-2.0 was not found in the pkg-config search path.\nPerhaps you should add the directory";
        assert_eq!(class_of(pkg_config), is(FailureClass::MissingLibrary, "libxml-2.0.pc"));
        let pkgconf = "Package 'cairo', required by 'virtual:world', not found\n";
        assert_eq!(class_of(pkgconf), is(FailureClass::MissingLibrary, "cairo.pc"));
    }

    #[test]
    fn shells_setuptools_and_build_backends_name_the_missing_tool() {
        assert_eq!(class_of("error: can't find Rust compiler\n"), is(FailureClass::MissingTool, "rustc"));
        assert_eq!(class_of("sh: 1: cmake: not found\n"), is(FailureClass::MissingTool, "cmake"));
        assert_eq!(class_of("/bin/sh: 1: swig: not found\n"), is(FailureClass::MissingTool, "swig"));
        assert_eq!(class_of("bash: line 1: gfortran: command not found\n"), is(FailureClass::MissingTool, "gfortran"));
        assert_eq!(
            class_of("error: command '/usr/bin/gfortran' failed: No such file or directory\n"),
            is(FailureClass::MissingTool, "gfortran")
        );
        assert_eq!(
            class_of("FileNotFoundError: [Errno 2] No such file or directory: 'rustc'\n"),
            is(FailureClass::MissingTool, "rustc")
        );
        assert_eq!(class_of("      running build_py\n      error: [Errno 2] No such file or directory: 'rustc'\n"), is(FailureClass::MissingTool, "rustc"));
        assert_eq!(class_of("ERROR: Unknown compiler(s): [['gfortran'], ['flang']]\n"), is(FailureClass::MissingTool, "gfortran"));
        assert_eq!(class_of("RuntimeError: CMake must be installed to build the following extensions\n"), is(FailureClass::MissingTool, "cmake"));
    }

    #[test]
    fn a_missing_file_is_not_a_missing_tool() {
        for file in ["README.md", "VERSION", "LICENSE"] {
            let log = format!("FileNotFoundError: [Errno 2] No such file or directory: '{file}'\n");
            assert_eq!(class_of(&log), is(FailureClass::Other, ""), "{file}");
        }
    }

    #[test]
    fn pip_and_setup_scripts_say_when_the_python_is_unsupported() {
        let pip = "ERROR: Package 'foo' requires a different Python: 3.11.2 not in '>=3.12'\n";
        assert_eq!(class_of(pip), is(FailureClass::UnsupportedPython, ">=3.12"));
        assert_eq!(class_of("RuntimeError: Python 3.12 or later is required\n"), is(FailureClass::UnsupportedPython, ""));
        let python2 = "    print \"hello\"\nSyntaxError: Missing parentheses in call to 'print'. Did you mean print(...)?\n";
        assert_eq!(class_of(python2), is(FailureClass::UnsupportedPython, "Python 2 only"));
    }

    #[test]
    fn sources_that_cannot_be_had_and_the_network() {
        let log = "ERROR: Could not find a version that satisfies the requirement setuptools>=99 (from versions: 68.0.0)\n\
                   ERROR: No matching distribution found for setuptools>=99\n";
        assert_eq!(class_of(log), is(FailureClass::SourceUnavailable, "setuptools>=99"));
        assert_eq!(class_of("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"), is(FailureClass::SourceUnavailable, "hash mismatch"));
        let network = "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>\n";
        assert_eq!(class_of(network), is(FailureClass::Network, ""));
    }

    #[test]
    fn a_network_warning_counts_only_when_nothing_else_is_recognised() {
        let header = "x.c:1:10: fatal error: zlib.h: No such file or directory\n";
        let retry = "WARNING: Retrying after connection broken by 'NewConnectionError(Connection refused)'\n";
        assert_eq!(class_of(&format!("{retry}{header}")), is(FailureClass::MissingHeader, "zlib.h"));
        assert_eq!(class_of(&format!("{header}{retry}")), is(FailureClass::MissingHeader, "zlib.h"));
        let memory = "c++: fatal error: Killed signal terminated program cc1plus\n";
        assert_eq!(class_of(&format!("{retry}{memory}")).0, FailureClass::Memory);
        assert_eq!(class_of(retry).0, FailureClass::Network);
    }

    #[test]
    fn details_carry_no_control_characters_and_logs_may_be_any_utf8() {
        let log = "\u{2018}x\u{2019} ERROR: No matching distribution found for evil\u{202e}txt.exe\n";
        assert_eq!(class_of(log), is(FailureClass::SourceUnavailable, "evil"));
        assert_eq!(cut("a\u{1b}[2Jb".into()), "a[2Jb");
        let quoted = "x.c: In function \u{2018}f\u{2019}:\nMemoryError\n";
        assert_eq!(class_of(quoted).0, FailureClass::Memory);
    }

    #[test]
    fn limits_decide_before_the_log_and_a_signal_after_it() {
        let log = "x.c:1:10: fatal error: zlib.h: No such file or directory\n";
        assert_eq!(classify(Some("timeout"), None, log).class, FailureClass::Timeout);
        assert_eq!(classify(Some("out-of-memory"), None, log).class, FailureClass::Memory);
        assert_eq!(classify(Some("build"), None, "c++: fatal error: Killed signal terminated program cc1plus\n").class, FailureClass::Memory);
        assert_eq!(classify(Some("build"), None, "building...\n").class, FailureClass::Killed);
        assert_eq!(classify(Some("build"), Some(1), "building...\n").class, FailureClass::Other);
    }

    #[test]
    fn details_are_cut_to_the_column() {
        let long = format!("ERROR: Package 'x' requires a different Python: 3.11.2 not in '{}'\n", ">=3.12,".repeat(14));
        let triage = classify(Some("build"), Some(1), &long);
        assert_eq!(triage.class, FailureClass::UnsupportedPython);
        assert_eq!(triage.detail, ">=3.12,".repeat(14)[..98]);
        let header = format!("x.c:1:10: fatal error: {}x.h: No such file or directory\n", "a/".repeat(150));
        assert_eq!(classify(Some("build"), Some(1), &header).detail.len(), MAX_DETAIL);
        assert_eq!(cut("é".repeat(150)).len(), MAX_DETAIL);
    }
}
