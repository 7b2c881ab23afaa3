//! The simple index as pip and uv read it, parsed from the files the index writer puts on
//! disk: the root (HTML and PEP 691 JSON) lists exactly the projects with files, with the
//! PEP 629 marker; each project's pages list every published wheel with its hash, escaped
//! Requires-Python, yank reason and metadata hash (HTML), and size, upload time and versions
//! (JSON); a project with nothing to install has no page at all.

mod index_support;
mod support;

use index_support::{Farm, sha256_of, tags};
use piwheels_master::calls::db::{YankVersion};

const META: &str = r#"<meta name="pypi:repository-version" content="1.1">"#;

/// foo-bar: six releases with every kind of file a page can show, and one package whose
/// builds all failed.
fn farm() -> Farm {
    let mut farm = Farm::started();
    farm.package(
        "foo-bar",
        "Foo_Bar",
        "A <test> package",
        &[("1.0", 1), ("1.1", 2), ("1.2", 3), ("1.3+rpi", 4), ("2.0rc1", 5), ("2004d", 0)],
    );
    let files = [
        farm.wheel("foo_bar-1.0-cp39-cp39-linux_armv7l.whl", Some(">=3.9,<4")),
        farm.wheel("foo_bar-1.0-cp311-cp311-linux_armv7l.whl", Some(">=3.9,<4")),
    ];
    farm.build("foo-bar", "1.0", "cp39", &files[..1]);
    farm.build("foo-bar", "1.0", "cp311", &files[1..]);
    let yanked = farm.wheel("foo_bar-1.1-py3-none-any.whl", Some(">=3.7, !=3.8.*"));
    farm.build("foo-bar", "1.1", "cp39", &[yanked]);
    let yanked_silently = farm.wheel("foo_bar-1.2-py3-none-any.whl", None);
    farm.build("foo-bar", "1.2", "cp39", &[yanked_silently]);
    let local = farm.wheel("foo_bar-1.3+rpi-py3-none-any.whl", None);
    farm.build("foo-bar", "1.3+rpi", "cp39", &[local]);
    // A build tag and a compressed tag set; this one's metadata file is not on disk.
    let tagged = farm.wheel("foo_bar-2.0rc1-1-cp39.cp311-abi3-linux_armv7l.linux_aarch64.whl", Some(""));
    farm.build("foo-bar", "2.0rc1", "cp39", &[tagged]);
    std::fs::remove_file(farm.path("simple/foo-bar/foo_bar-2.0rc1-1-cp39.cp311-abi3-linux_armv7l.linux_aarch64.whl.metadata"))
        .unwrap();
    // A legacy version: installers cannot use it, so the simple pages leave it out.
    let legacy = farm.wheel("foo_bar-2004d-py3-none-any.whl", None);
    farm.build("foo-bar", "2004d", "cp39", &[legacy]);
    // Recorded but missing from disk: never linked.
    let lost = farm.wheel("foo_bar-1.0-cp39-cp39-linux_aarch64.whl", None);
    farm.build("foo-bar", "1.0", "cp39", &[lost]);
    std::fs::remove_file(farm.path("simple/foo-bar/foo_bar-1.0-cp39-cp39-linux_aarch64.whl")).unwrap();
    for (version, reason) in [("1.1", Some("broken build, use \"1.0\" <please>")), ("1.2", Some(""))] {
        farm.db.call(YankVersion { package: "foo-bar".into(), version: version.into(), reason: reason.map(str::to_string) }).unwrap();
    }
    farm.package("failing", "failing", "", &[("1.0", 1)]);
    farm.fail("failing", "1.0", "cp39");
    farm.rewrite("foo-bar");
    farm.rewrite("failing");
    farm.wait("foo-bar's simple page", |f| f.path("simple/foo-bar/index.json").is_file());
    farm.wait("failing's project page", |f| f.path("project/failing/json/index.json").is_file());
    farm
}

#[test]
fn the_root_lists_exactly_the_projects_with_files_in_html_and_json() {
    let farm = farm();
    farm.wait("the root to list foo-bar", |f| f.read("simple/index.json").contains("foo-bar"));
    let html = farm.read("simple/index.html");
    let head = &html[..html.find("</head>").unwrap()];
    assert!(head.contains(META), "{head}");
    let links = tags(&html, "a");
    assert_eq!(links.len(), 1, "{html}");
    assert_eq!((links[0].attr("href"), links[0].text.as_str()), (Some("foo-bar/"), "foo-bar"));

    let json = farm.json("simple/index.json");
    assert_eq!(json["meta"]["api-version"], "1.1");
    assert_eq!(json["projects"], serde_json::json!([{"name": "foo-bar"}]));
}

#[test]
fn a_project_without_files_has_no_simple_page_at_all() {
    let farm = farm();
    assert!(!farm.path("simple/failing").exists());
    // Its project page exists: people can see why.
    assert!(farm.read("project/failing/index.html").contains("fail"));
}

#[test]
fn every_published_wheel_is_linked_with_its_hash_and_attributes() {
    let farm = farm();
    let html = farm.read("simple/foo-bar/index.html");
    let head = &html[..html.find("</head>").unwrap()];
    assert!(head.contains(META), "{head}");
    // Attribute values are escaped exactly once.
    assert!(html.contains(r#"data-requires-python="&gt;=3.9,&lt;4""#), "{html}");
    assert!(!html.contains("&amp;gt;"));

    let links = tags(&html, "a");
    let names: Vec<&str> = links.iter().map(|a| a.text.as_str()).collect();
    // Newest release first (PEP 440 order), files by name; the legacy version and the
    // missing file are left out.
    assert_eq!(
        names,
        [
            "foo_bar-2.0rc1-1-cp39.cp311-abi3-linux_armv7l.linux_aarch64.whl",
            "foo_bar-1.3+rpi-py3-none-any.whl",
            "foo_bar-1.2-py3-none-any.whl",
            "foo_bar-1.1-py3-none-any.whl",
            "foo_bar-1.0-cp311-cp311-linux_armv7l.whl",
            "foo_bar-1.0-cp39-cp39-linux_armv7l.whl",
        ]
    );
    for a in &links {
        let href = a.attr("href").unwrap();
        let (url, fragment) = href.split_once('#').unwrap();
        // The link text is the last part of the URL, which is percent-encoded.
        assert_eq!(index_support::percent_decode(url), a.text);
        assert!(!url.contains('+'), "{url}");
        let wheel = farm.path(&format!("simple/foo-bar/{}", a.text));
        assert_eq!(fragment, format!("sha256={}", sha256_of(&wheel)));
        assert_eq!(a.attr("data-size"), Some(std::fs::metadata(&wheel).unwrap().len().to_string().as_str()));
        let metadata = wheel.with_file_name(format!("{}.metadata", a.text));
        if metadata.exists() {
            let expected = format!("sha256={}", sha256_of(&metadata));
            assert_eq!(a.attr("data-core-metadata"), Some(expected.as_str()), "{}", a.text);
            assert_eq!(a.attr("data-dist-info-metadata"), Some(expected.as_str()));
        } else {
            assert!(!a.has("data-core-metadata") && !a.has("data-dist-info-metadata"), "{}", a.text);
        }
    }
    let by_name = |name: &str| links.iter().find(|a| a.text == name).unwrap();
    let plain = by_name("foo_bar-1.0-cp39-cp39-linux_armv7l.whl");
    assert_eq!(plain.attr("data-requires-python"), Some(">=3.9,<4"));
    assert!(!plain.has("data-yanked"));
    let yanked = by_name("foo_bar-1.1-py3-none-any.whl");
    assert_eq!(yanked.attr("data-yanked"), Some("broken build, use \"1.0\" <please>"));
    assert_eq!(yanked.attr("data-requires-python"), Some(">=3.7, !=3.8.*"));
    // A yank without a reason still has a value, which old uv releases need.
    assert_eq!(by_name("foo_bar-1.2-py3-none-any.whl").attr("data-yanked"), Some(""));
    // An empty Requires-Python is no Requires-Python.
    assert!(!by_name("foo_bar-2.0rc1-1-cp39.cp311-abi3-linux_armv7l.linux_aarch64.whl").has("data-requires-python"));
}

#[test]
fn the_json_page_has_sizes_upload_times_versions_and_pep_714_names_only() {
    let farm = farm();
    let json = farm.json("simple/foo-bar/index.json");
    assert_eq!(json["meta"]["api-version"], "1.1");
    assert_eq!(json["name"], "foo-bar");
    assert_eq!(json["versions"], serde_json::json!(["1.0", "1.1", "1.2", "1.3+rpi", "2.0rc1"]));
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 6);
    let html_names: Vec<String> = tags(&farm.read("simple/foo-bar/index.html"), "a").into_iter().map(|a| a.text).collect();
    let json_names: Vec<&str> = files.iter().map(|f| f["filename"].as_str().unwrap()).collect();
    assert_eq!(json_names, html_names);
    for file in files {
        let name = file["filename"].as_str().unwrap();
        let wheel = farm.path(&format!("simple/foo-bar/{name}"));
        assert_eq!(index_support::percent_decode(file["url"].as_str().unwrap()), name);
        assert_eq!(file["hashes"]["sha256"], sha256_of(&wheel));
        assert_eq!(file["size"], std::fs::metadata(&wheel).unwrap().len());
        let time = file["upload-time"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'), "{time}");
        let fraction = time.split('.').nth(1).map_or(0, |f| f.len() - 1);
        assert!(fraction <= 6, "{time}");
        assert!(file.get("dist-info-metadata").is_none(), "PEP 714: never the old name in JSON");
        let metadata = wheel.with_file_name(format!("{name}.metadata"));
        if metadata.exists() {
            assert_eq!(file["core-metadata"]["sha256"], sha256_of(&metadata));
        } else {
            assert!(file.get("core-metadata").is_none());
        }
    }
    let by_name = |name: &str| files.iter().find(|f| f["filename"] == name).unwrap();
    assert_eq!(by_name("foo_bar-1.0-cp39-cp39-linux_armv7l.whl")["requires-python"], ">=3.9,<4");
    assert_eq!(by_name("foo_bar-1.0-cp39-cp39-linux_armv7l.whl")["yanked"], false);
    assert_eq!(by_name("foo_bar-1.1-py3-none-any.whl")["yanked"], "broken build, use \"1.0\" <please>");
    // PEP 592: an empty reason would read as "not yanked" to pip.
    assert_eq!(by_name("foo_bar-1.2-py3-none-any.whl")["yanked"], true);
}

#[test]
fn an_unyanked_release_loses_its_marker_on_the_next_rewrite() {
    let farm = farm();
    farm.db.call(YankVersion { package: "foo-bar".into(), version: "1.1".into(), reason: None }).unwrap();
    farm.rewrite("foo-bar");
    // Both forms of the page are rewritten, one after the other.
    farm.wait("the unyank", |f| {
        !f.read("simple/foo-bar/index.html").contains("please") && !f.read("simple/foo-bar/index.json").contains("please")
    });
    let links = tags(&farm.read("simple/foo-bar/index.html"), "a");
    assert!(!links.iter().find(|a| a.text == "foo_bar-1.1-py3-none-any.whl").unwrap().has("data-yanked"));
    assert_eq!(farm.json("simple/foo-bar/index.json")["files"][3]["yanked"], false);
}
