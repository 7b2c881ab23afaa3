//! Core metadata read from real wheels' METADATA files (`tests/metadata/`, each taken from the
//! wheel its name gives): Metadata-Version 2.1 to 2.4, a License folded over lines of blanks
//! (markupsafe), long descriptions in the body, non-ASCII authors, requirements with and
//! without markers. Each is read as installers read it too: Python's own email parser, which
//! pip and uv's references use, must find the same name, version and Requires-Python.

use std::path::PathBuf;
use std::process::Command;

use piwheels_common::inspect::{CoreMetadata, parse_metadata};

fn corpus(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/metadata").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the corpus files say, as the farm keeps it.
fn expected() -> Vec<(&'static str, CoreMetadata)> {
    let core = |name: &str, version: &str, python: &str, requirements: &[&str]| CoreMetadata {
        name: Some(name.into()),
        version: Some(version.into()),
        requires_python: Some(python.into()),
        requirements: requirements.iter().map(|r| r.to_string()).collect(),
        ..CoreMetadata::default()
    };
    vec![
        ("markupsafe-3.0.2.METADATA", core("MarkupSafe", "3.0.2", ">=3.9", &[])),
        ("certifi-2025.1.31.METADATA", core("certifi", "2025.1.31", ">=3.6", &[])),
        ("packaging-24.2.METADATA", core("packaging", "24.2", ">=3.8", &[])),
        ("attrs-25.3.0.METADATA", core("attrs", "25.3.0", ">=3.8", &[])),
        ("poetry-core-2.1.3.METADATA", core("poetry-core", "2.1.3", ">=3.9, <4.0", &[])),
        // Its one run-time requirement has a marker: not unconditional.
        ("ruamel.yaml-0.18.10.METADATA", core("ruamel.yaml", "0.18.10", ">=3.7", &[])),
        ("requests-2.32.3.METADATA", core("requests", "2.32.3", ">=3.8", &["certifi", "charset-normalizer", "idna", "urllib3"])),
    ]
}

#[test]
fn real_metadata_files_yield_their_name_version_requires_python_and_requirements() {
    for (file, want) in expected() {
        // Every Requires-Dist is compared with Python's below.
        let found = parse_metadata(&corpus(file));
        assert_eq!(CoreMetadata { requires_dist: Vec::new(), summary: None, urls: Vec::new(), ..found }, want, "{file}");
    }
    // A conditional requirement keeps its marker, for the project page.
    let ruamel = parse_metadata(&corpus("ruamel.yaml-0.18.10.METADATA"));
    assert_eq!(ruamel.requires_dist[0], r#"ruamel.yaml.clib >=0.2.7 ; platform_python_implementation=="CPython" and python_version<"3.13""#);
    // The summary and the project's links, a Home-page first.
    let requests = parse_metadata(&corpus("requests-2.32.3.METADATA"));
    assert_eq!(requests.summary.as_deref(), Some("Python HTTP for Humans."));
    let urls: Vec<(&str, &str)> = requests.urls.iter().map(|(label, url)| (label.as_str(), url.as_str())).collect();
    assert_eq!(
        urls,
        [
            ("Homepage", "https://requests.readthedocs.io"),
            ("Documentation", "https://requests.readthedocs.io"),
            ("Source", "https://github.com/psf/requests")
        ]
    );
}

#[test]
fn every_metadata_version_from_2_1_to_2_4_is_in_the_corpus() {
    let mut versions: Vec<String> = expected()
        .iter()
        .map(|(file, _)| {
            let text = String::from_utf8(corpus(file)).unwrap();
            text.lines().next().unwrap().trim_start_matches("Metadata-Version: ").to_string()
        })
        .collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions, ["2.1", "2.2", "2.3", "2.4"]);
    // Non-ASCII text, and descriptions in the body, are there too.
    assert!(expected().iter().any(|(file, _)| !corpus(file).is_ascii()));
    assert!(expected().iter().all(|(file, _)| String::from_utf8_lossy(&corpus(file)).contains("\n\n")));
}

/// Python's email parser (compat32, as the standard library's metadata readers use it) reads
/// the same name, version, Requires-Python, Requires-Dist entries, summary and links from each
/// file.
#[test]
fn python_s_email_parser_reads_the_same_headers() {
    let script = "import email.parser, email.policy, sys\n\
                  for path in sys.argv[1:]:\n\
                  \x20   m = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(open(path, 'rb').read())\n\
                  \x20   print('|'.join(' '.join(str(m[h]).split()) for h in ('Name', 'Version', 'Requires-Python')))\n\
                  \x20   print('|'.join(' '.join(r.split()) for r in m.get_all('Requires-Dist') or []))\n\
                  \x20   print(' '.join(str(m['Summary']).split()))\n\
                  \x20   links = [('Homepage', m['Home-page'])] if m['Home-page'] else []\n\
                  \x20   links += [tuple(u.split(',', 1)) for u in m.get_all('Project-URL') or []]\n\
                  \x20   print('|'.join(label.strip() + ' ' + url.strip() for label, url in links))\n";
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/metadata");
    let files: Vec<&str> = expected().iter().map(|(file, _)| *file).collect();
    let out = Command::new("python3").arg("-c").arg(script).args(files.iter().map(|f| dir.join(f))).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let python: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect();
    let ours: Vec<String> = files
        .iter()
        .map(|file| {
            let core = parse_metadata(&corpus(file));
            let scalars = [core.name, core.version, core.requires_python].map(Option::unwrap_or_default).join("|");
            let requirements: Vec<String> = core.requires_dist.iter().map(|r| r.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            let urls: Vec<String> = core.urls.iter().map(|(label, url)| format!("{label} {url}")).collect();
            format!("{scalars}\n{}\n{}\n{}", requirements.join("|"), core.summary.unwrap_or_default(), urls.join("|"))
        })
        .collect();
    let ours: Vec<String> = ours.join("\n").lines().map(str::to_string).collect();
    assert_eq!(ours, python);
}
