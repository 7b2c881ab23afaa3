//! The pages for people and programs beside the simple index, parsed from disk: the project
//! page (releases table with the build state per ABI and links to logs, files with sizes,
//! install command, dependencies), the project JSON, build logs, former names' pages, the home
//! page and the search index.

mod index_support;
mod support;

use piwheels_common::config::human_size;
use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use index_support::{Farm, strip_tags, tags, text_of};
use piwheels_common::protocols::{HostStats, MasterStats};
use piwheels_master::calls::db::{RenamePackage, SearchEntry};
use piwheels_master::calls::tasks::{CheckCounts, WebRequest};

/// numpy: 1.0 built on both ABIs (apt and pip dependencies), 1.1 failed on cp311 and pending
/// on cp39, 2.0b1 a pre-release built on cp39, with logs for some builds.
struct Numpy {
    farm: Farm,
    builds: BTreeMap<&'static str, i64>,
}

fn numpy() -> Numpy {
    let mut farm = Farm::started();
    farm.package("numpy", "NumPy", "Fast arrays & more", &[("1.0", 1), ("1.1", 2), ("2.0b1", 3)]);
    let mut builds = BTreeMap::new();
    let w = farm.wheel("numpy-1.0-cp39-cp39-linux_armv7l.whl", Some(">=3.9"));
    builds.insert("1.0 cp39", farm.build("numpy", "1.0", "cp39", &[w]));
    let w = farm.wheel("numpy-1.0-cp311-cp311-linux_armv7l.whl", Some(">=3.9"));
    builds.insert("1.0 cp311", farm.build("numpy", "1.0", "cp311", &[w]));
    builds.insert("1.1 cp311", farm.fail("numpy", "1.1", "cp311"));
    let w = farm.wheel("numpy-2.0b1-cp39-cp39-linux_armv7l.whl", None);
    builds.insert("2.0b1 cp39", farm.build("numpy", "2.0b1", "cp39", &[w]));
    // Logs for two builds; the others have none, so their cells link nowhere.
    for key in ["1.0 cp39", "1.1 cp311"] {
        farm.log("numpy", builds[key], &format!("log of {key}\nwith ünïcode\n"));
    }
    farm.rewrite("numpy");
    // The logs' rewrites of the project page alone may land first: wait for the full rewrite's
    // JSON, which knows of the simple page (its HTML is written just before).
    farm.wait("numpy's pages", |f| {
        let json = f.path("project/numpy/json/index.json");
        let json = std::fs::read_to_string(json).ok().and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        json.is_some_and(|json| json["simple_url"] == "/simple/numpy/")
    });
    Numpy { farm, builds }
}

#[test]
fn the_project_page_shows_releases_per_abi_with_logs_files_and_install_command() {
    let Numpy { farm, builds } = numpy();
    let html = farm.read("project/numpy/index.html");
    assert_eq!(text_of(&html, "package"), "NumPy");
    assert!(html.contains(r#"data-package="numpy""#));
    assert_eq!(text_of(&html, "description"), "Fast arrays & more");
    // The newest stable release with files decides the install command; Debian packages
    // every image has are left out.
    assert_eq!(text_of(&html, "install-command"), "sudo apt install libatlas3-base\npip3 install numpy");
    // Every requirement of the wheel's METADATA, with its marker when it has one.
    let deps: Vec<String> = text_of(&html, "pipdeps").lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    assert_eq!(deps, ["numpy", "ruamel-yaml-clib >=0.2.7; python_version < \"3.13\""]);
    // A project's own name is linked; this farm has no ruamel-yaml-clib, so it is not.
    assert_eq!(dependency_links(&html), ["/project/numpy/"]);
    // A METADATA with thousands of requirements, one of them very long, makes a bounded list.
    let metadata = farm.path("simple/numpy/numpy-1.0-cp39-cp39-linux_armv7l.whl.metadata");
    let mut text = String::from("Metadata-Version: 2.1\nName: numpy\nVersion: 1.0\n");
    text.push_str(&format!("Requires-Dist: long>={}\n", "9".repeat(1000)));
    for n in 0..2000 {
        text.push_str(&format!("Requires-Dist: dep{n}\n"));
    }
    std::fs::write(&metadata, text).unwrap();
    std::fs::write(farm.path("simple/numpy/numpy-1.0-cp311-cp311-linux_armv7l.whl.metadata"), std::fs::read(&metadata).unwrap()).unwrap();
    farm.rewrite("numpy");
    farm.wait("the bounded list", |f| f.read("project/numpy/index.html").contains("dep0"));
    let deps = text_of(&farm.read("project/numpy/index.html"), "pipdeps");
    let deps: Vec<&str> = deps.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(deps.len(), 100);
    assert_eq!(deps[0].chars().count(), "long ".len() + 200);
    assert_eq!(text_of(&html, "requires-python"), "Requires Python >=3.9");

    let table = &html[html.find(r#"id="releases-table""#).unwrap()..html.find("</table>").unwrap()];
    let headings: Vec<String> = tags(table, "th").into_iter().map(|th| th.text).collect();
    assert_eq!(headings, ["Version", "Released", "cp39", "cp311"]);
    let rows: Vec<&str> = table.split("<tr data-version=").skip(1).collect();
    let versions: Vec<&str> = rows.iter().map(|r| &r[1..r[1..].find('"').unwrap() + 1]).collect();
    assert_eq!(versions, ["2.0b1", "1.1", "1.0"]);
    // The state cells: (class, link to the log).
    let cells = |row: &str| -> Vec<(String, Option<String>)> {
        let row = &row[..row.find("</tr>").unwrap()];
        row.split("<td").skip(1)
            .map(|cell| format!("<td{}", &cell[..cell.find("</td>").unwrap() + 5]))
            .filter_map(|cell| {
                let td = tags(&cell, "td").remove(0);
                let link = tags(&cell, "a").first().and_then(|a| a.attr("href").map(str::to_string));
                td.attr("class").map(|class| (class.to_string(), link))
            })
            .collect()
    };
    let log = |key: &str| Some(format!("/logs/{}", piwheels_master::index::layout::log_path(builds[key]).trim_start_matches("logs/")));
    assert_eq!(cells(rows[0]), [("success".into(), None), ("pending".into(), None)]);
    assert!(rows[0].contains("pre-release"));
    assert_eq!(cells(rows[1]), [("pending".into(), None), ("fail".into(), log("1.1 cp311"))]);
    assert_eq!(cells(rows[2]), [("success".into(), log("1.0 cp39")), ("success".into(), None)]);
    // A cell says when, where and how long its build ran; a failure shows the end of its log.
    let titles = |row: &str| -> Vec<String> {
        tags(row, "td").iter().filter(|td| td.has("class")).filter_map(|td| td.attr("title").map(str::to_string)).collect()
    };
    let failed = titles(rows[1]);
    assert!(matches!(failed.as_slice(), [t] if t.starts_with("failed 20") && t.ends_with(" UTC on pi4-1 after 1m30s")), "{failed:?}");
    assert!(rows[1].contains(r#"<details class="why"><summary>why</summary><pre>log</pre></details>"#), "{}", rows[1]);
    let built = titles(rows[2]);
    assert!(built.len() == 2 && built.iter().all(|t| t.starts_with("built 20") && t.ends_with(" UTC by pi4-1 in 1m30s")), "{built:?}");
    // Each release's files, with sizes, follow its row.
    let files_row = &rows[2][rows[2].find(r#"<tr class="files-info">"#).unwrap()..];
    let links: Vec<String> = tags(files_row, "a").into_iter().filter_map(|a| a.attr("href").map(str::to_string)).collect();
    // The build whose recording the writer was told of (with its log) has its signed statement
    // written and linked; the other's statement was never written, so it is not linked.
    assert_eq!(
        links,
        [
            "/simple/numpy/numpy-1.0-cp311-cp311-linux_armv7l.whl",
            "/simple/numpy/numpy-1.0-cp39-cp39-linux_armv7l.whl",
            "/simple/numpy/numpy-1.0-cp39-cp39-linux_armv7l.whl.intoto.jsonl"
        ]
    );
    let size = std::fs::metadata(farm.path("simple/numpy/numpy-1.0-cp311-cp311-linux_armv7l.whl")).unwrap().len();
    // Each file by its tags, as the release's row names it already.
    assert!(files_row.contains(&format!("linux_armv7l.whl\">cp311-cp311-linux_armv7l</a> {}", human_size(size))), "{files_row}");
    assert!(!rows[1].contains("files-info"));

    // A newer failure on the same ABI shows its last lines; the older one keeps its log link
    // and its title, not its lines.
    farm.fail("numpy", "2.0b1", "cp311");
    farm.rewrite("numpy");
    farm.wait("2.0b1's failure", |f| f.read("project/numpy/index.html").matches(r#"<td class="fail""#).count() == 2);
    let html = farm.read("project/numpy/index.html");
    let rows: Vec<&str> = html.split("<tr data-version=").skip(1).map(|r| &r[..r.find("</tr>").unwrap()]).collect();
    assert!(rows[0].starts_with("\"2.0b1\"") && rows[0].contains(r#"<details class="why">"#), "{}", rows[0]);
    assert!(rows[1].starts_with("\"1.1\"") && !rows[1].contains(r#"<details class="why">"#), "{}", rows[1]);
    assert!(rows[1].contains(r#"<td class="fail" title="failed 20"#) && rows[1].contains("/logs/"), "{}", rows[1]);
}

#[test]
fn the_project_json_lists_releases_newest_first_with_files_and_builds() {
    let Numpy { farm, builds } = numpy();
    let json = farm.json("project/numpy/json/index.json");
    assert_eq!(json["package"], "numpy");
    assert_eq!(json["display_name"], "NumPy");
    assert_eq!(json["summary"], "Fast arrays & more");
    assert_eq!(json["simple_url"], "/simple/numpy/");
    assert!(json.get("pypi_url").is_none(), "no PyPI address is configured");
    let releases = json["releases"].as_object().unwrap();
    // serde_json keeps an object's keys sorted unless told otherwise: read the text's order.
    let text = farm.read("project/numpy/json/index.json");
    let order: Vec<usize> = ["\"2.0b1\":", "\"1.1\":", "\"1.0\":"].iter().map(|k| text.find(k).unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(releases.len(), 3);
    let one = &releases["1.0"];
    assert_eq!(one["prerelease"], false);
    assert_eq!(one["yanked"], false);
    assert_eq!(releases["2.0b1"]["prerelease"], true);
    let file = &one["files"]["numpy-1.0-cp39-cp39-linux_armv7l.whl"];
    assert_eq!(file["file_url"], "/simple/numpy/numpy-1.0-cp39-cp39-linux_armv7l.whl");
    assert_eq!(file["builder_abi"], "cp39");
    assert_eq!(file["requires_python"], ">=3.9");
    assert_eq!(file["apt_dependencies"], serde_json::json!(["libatlas3-base"]));
    assert_eq!(file["pip_dependencies"], serde_json::json!(["numpy"]));
    assert_eq!(file["filehash"].as_str().unwrap().len(), 64);
    assert_eq!(one["builds"]["cp39"]["status"], "success");
    assert_eq!(one["builds"]["cp39"]["build_id"], builds["1.0 cp39"]);
    assert_eq!(one["builds"]["cp39"]["log_url"], format!("/{}", piwheels_master::index::layout::log_path(builds["1.0 cp39"])));
    assert_eq!(one["builds"]["cp311"]["log_url"], serde_json::Value::Null);
    assert_eq!(releases["1.1"]["builds"]["cp311"]["status"], "fail");
}

#[test]
fn build_logs_are_gzipped_under_logs_by_build_id() {
    let Numpy { farm, builds } = numpy();
    let path = farm.path(&piwheels_master::index::layout::log_path(builds["1.0 cp39"]));
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
    assert_eq!(text, "log of 1.0 cp39\nwith ünïcode\n");
    // A log sent again replaces the first.
    farm.log("numpy", builds["1.0 cp39"], "again");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
    assert_eq!(text, "again");
}

/// A log that cannot be written (here a file stands where its directory should be; a full
/// disk does the same) is kept and written once it can be, and the project page then links it.
#[test]
fn a_log_that_cannot_be_written_is_written_when_it_can_and_then_linked() {
    let Numpy { farm, builds } = numpy();
    let id = builds["2.0b1 cp39"];
    let rel = piwheels_master::index::layout::log_path(id);
    let path = farm.path(&rel);
    let blocker = path.parent().unwrap().to_path_buf();
    if blocker.is_dir() {
        std::fs::remove_dir_all(&blocker).unwrap();
    }
    std::fs::write(&blocker, b"in the way").unwrap();
    farm.log("numpy", id, "the log that waited");
    assert!(!path.exists());
    std::fs::remove_file(&blocker).unwrap();
    farm.wait("the log written on a later try", |f| f.path(&rel).is_file());
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
    assert_eq!(text, "the log that waited");
    let url = format!("/{rel}");
    farm.wait("the project page linking the log", |f| f.json("project/numpy/json/index.json")["releases"]["2.0b1"]["builds"]["cp39"]["log_url"] == url.as_str());
}

#[test]
fn a_waiting_log_of_a_build_deleted_meanwhile_is_never_written() {
    let Numpy { farm, builds } = numpy();
    let (kept, deleted) = (builds["2.0b1 cp39"], builds["1.1 cp311"]);
    let (kept_log, deleted_log) = (farm.path(&piwheels_master::index::layout::log_path(kept)), farm.path(&piwheels_master::index::layout::log_path(deleted)));
    // Both logs live in one directory, which a file stands in the place of.
    let blocker = kept_log.parent().unwrap().to_path_buf();
    assert_eq!(Some(blocker.as_path()), deleted_log.parent());
    std::fs::remove_dir_all(&blocker).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    // The deleted build's log waits first, so the retry would write it before the kept one.
    farm.log("numpy", deleted, "the log of a build that is gone");
    farm.log("numpy", kept, "the log that waited");
    farm.send(WebRequest::DeleteVersion { package: "numpy".into(), version: "1.1".into(), files: Vec::new(), builds: vec![deleted] });
    std::fs::remove_file(&blocker).unwrap();
    // The retry that writes the one kept log passes the deleted build's by.
    farm.wait("the kept log written on a later try", |f| f.path(&piwheels_master::index::layout::log_path(kept)).is_file());
    assert!(!deleted_log.exists(), "the log of the deleted build was written");
}

#[test]
fn a_former_name_gets_a_page_pointing_at_the_project_and_spellings_need_none() {
    let mut farm = Farm::started();
    farm.package("old-name", "Old_Name", "", &[("1.0", 1)]);
    let w = farm.wheel("old_name-1.0-py3-none-any.whl", None);
    farm.build("old-name", "1.0", "cp39", &[w]);
    farm.db.call(RenamePackage { from: "old-name".into(), to: "new-name".into() }).unwrap();
    farm.rewrite("new-name");
    // Alias pages are written after the project's own.
    farm.wait("the former name's page", |f| f.path("project/old-name/index.html").is_file());
    let alias = farm.read("project/old-name/index.html");
    assert!(alias.contains(r#"<meta name="piwheels:alias-of" content="new-name">"#), "{alias}");
    assert_eq!(tags(&alias, "a")[0].attr("href"), Some("/project/new-name/"));
    // The spelling "Old_Name" canonicalizes to old-name: no page of its own ("Old_Name" is
    // redirected to the canonical URL by the web server).
    assert!(!farm.path("project/Old_Name").exists());
    assert!(!farm.path("simple/Old_Name").exists());
    let json = farm.json("project/new-name/json/index.json");
    assert!(json["aliases"].as_array().unwrap().iter().any(|a| a == "old-name"));
}

#[test]
fn the_home_page_and_search_index_show_what_they_are_sent() {
    let farm = Farm::started();
    let stats = MasterStats {
        packages_built: 1_234_567,
        files_count: 2_345,
        downloads_all: 98_765_432,
        downloads_last_month: 4_321,
        builds_last_hour: [("cp311".to_string(), 12), ("cp39".to_string(), 3)].into(),
        builds_pending: [("cp311".to_string(), 100)].into(),
        host: HostStats { disk_free: 5 << 30, disk_size: 100 << 30, ..HostStats::default() },
        ..MasterStats::default()
    };
    farm.send(WebRequest::Home { stats: Box::new(stats.clone()), checks: CheckCounts { reproduced: 1_200, not_reproduced: 3 }, drifts: Vec::new() });
    let html = farm.read("index.html");
    assert!(!html.contains(r#"id="drifts""#), "no drift, no word of it");
    assert_eq!(text_of(&html, "packages-built"), "1,234,567");
    assert_eq!(text_of(&html, "files-count"), "2,345");
    assert_eq!(text_of(&html, "downloads-all"), "98,765,432");
    assert_eq!(text_of(&html, "downloads-30"), "4,321");
    assert_eq!(text_of(&html, "disk-free"), "5.0 GiB of 100.0 GiB");
    assert_eq!(text_of(&html, "reproduced"), "1,200");
    assert_eq!(text_of(&html, "not-reproduced"), "3");
    assert!(html.contains(r#"<tr data-abi="cp311"><td>cp311</td><td>12</td><td>100</td></tr>"#), "{html}");

    // Builders that drifted apart are named by ABI and entry, with the values and their counts.
    let drift = "cp311 builders differ in setuptools: 2 hosts with 68.1.2, 1 host with 69.0.0".to_string();
    farm.send(WebRequest::Home { stats: Box::new(stats), checks: CheckCounts::default(), drifts: vec![drift.clone()] });
    let html = farm.read("index.html");
    assert!(html.contains(r#"id="drifts""#) && html.contains(&format!("<li>{drift}</li>")), "{html}");
}

/// The links of a project page's dependency list.
fn dependency_links(html: &str) -> Vec<String> {
    let list = &html[html.find(r#"id="pipdeps""#).unwrap()..];
    tags(&list[..list.find("</ul>").unwrap()], "a").iter().filter_map(|a| a.attr("href").map(str::to_string)).collect()
}

/// A project PyPI gave no summary for shows its wheel's; its wheel's own links are shown when
/// they are http or https, each once; its downloads in 30 days once the stats task counted
/// them; a dependency with wheels here is linked. The JSON says the same.
#[test]
fn a_project_shows_its_wheel_s_summary_links_and_downloads() {
    let mut farm = Farm::started();
    // A dependency with wheels here, written first.
    farm.package("numpy", "numpy", "", &[("1.0", 1)]);
    let w = farm.wheel("numpy-1.0-py3-none-any.whl", None);
    farm.build("numpy", "1.0", "cp39", &[w]);
    farm.rewrite("numpy");
    farm.wait("numpy's simple page", |f| f.path("simple/numpy/index.html").is_file());
    farm.package("zope", "zope", "", &[("1.0", 1)]);
    let mut w = farm.wheel("zope-1.0-py3-none-any.whl", None);
    let mut metadata = String::from_utf8_lossy(&w.metadata).into_owned();
    metadata.push_str(
        "Summary: Zope's summary\nHome-page: https://zope.example/\nProject-URL: Source, https://code.example/zope\n\
         Project-URL: Evil, javascript:alert(1)\nProject-URL: Again, https://zope.example/\nProject-URL: , http://docs.example/z\n",
    );
    w.metadata = metadata.into_bytes().into();
    farm.build("zope", "1.0", "cp39", &[w]);
    farm.send(WebRequest::Search { entries: vec![SearchEntry { package: "zope".into(), downloads_recent: 1234, downloads_all: 5000 }] });
    farm.rewrite("zope");
    // The JSON is written after the HTML: wait for both.
    farm.wait("zope's pages", |f| {
        f.path("project/zope/json/index.json").is_file() && f.read("project/zope/index.html").contains("downloads-month")
    });
    let html = farm.read("project/zope/index.html");
    assert_eq!(text_of(&html, "description"), "Zope's summary");
    let links: Vec<(String, String)> = tags(&html, "a")
        .into_iter()
        .filter(|a| a.attr("class") == Some("project-link"))
        .map(|a| (a.text.clone(), a.attr("href").unwrap_or_default().to_string()))
        .collect();
    let want = [("Homepage", "https://zope.example/"), ("Source", "https://code.example/zope"), ("docs.example", "http://docs.example/z")];
    assert_eq!(links, want.map(|(label, url)| (label.to_string(), url.to_string())));
    assert_eq!(text_of(&html, "downloads-month"), "1,234");
    // numpy has wheels here, ruamel-yaml-clib not.
    assert_eq!(dependency_links(&html), ["/project/numpy/"]);
    // One release, one file: said in the singular.
    assert!(strip_tags(&html).contains("1 version, 1 file"), "{html}");
    let json = farm.json("project/zope/json/index.json");
    assert_eq!(json["summary"], "Zope's summary");
    assert_eq!(json["project_urls"][1], serde_json::json!({"label": "Source", "url": "https://code.example/zope"}));
    assert_eq!(json["project_urls"].as_array().map(Vec::len), Some(3));
    // A restarted writer shows the counts the search index holds until new ones come.
    farm.stop();
    std::fs::remove_file(farm.path("project/zope/index.html")).unwrap();
    farm.start(Duration::from_millis(100));
    farm.rewrite("zope");
    farm.wait("zope's page again", |f| f.path("project/zope/index.html").is_file());
    assert_eq!(text_of(&farm.read("project/zope/index.html"), "downloads-month"), "1,234");
}

/// The search index and the package list follow the projects with files within the simple
/// index root's interval (at once in these tests), not the stats task's ten minutes; the
/// stats task's download counts are kept in it.
#[test]
fn the_search_index_and_the_package_list_follow_the_projects_with_files() {
    let mut farm = Farm::started();
    assert!(farm.path("search.js").is_file(), "the search box's script is written at start");
    farm.package("zope", "zope", "", &[("1.0", 1)]);
    let w = farm.wheel("zope-1.0-py3-none-any.whl", None);
    farm.build("zope", "1.0", "cp39", &[w]);
    farm.rewrite("zope");
    farm.wait("zope in the search index", |f| f.read("packages.json").contains("zope"));
    assert_eq!(farm.json("packages.json"), serde_json::json!([["zope", 0, 0]]));
    let entries = vec![
        SearchEntry { package: "zope".into(), downloads_recent: 1, downloads_all: 10 },
        SearchEntry { package: "attrs".into(), downloads_recent: 5, downloads_all: 50 },
    ];
    farm.send(WebRequest::Search { entries });
    // attrs has no files here (the counts are older than the tree): not listed.
    assert_eq!(farm.json("packages.json"), serde_json::json!([["zope", 1, 10]]));
    farm.package("attrs", "attrs", "", &[("2.0", 1)]);
    let w = farm.wheel("attrs-2.0-py3-none-any.whl", None);
    farm.build("attrs", "2.0", "cp39", &[w]);
    farm.rewrite("attrs");
    farm.wait("attrs in the search index", |f| f.read("packages.json").contains("attrs"));
    assert_eq!(farm.json("packages.json"), serde_json::json!([["attrs", 5, 50], ["zope", 1, 10]]));
    // The package list, for browsers without JavaScript.
    let list = farm.read("packages/index.html");
    let links: Vec<String> = tags(&list, "a").iter().filter_map(|a| a.attr("href").map(str::to_string)).filter(|h| h.starts_with("/project/")).collect();
    assert_eq!(links, ["/project/attrs/", "/project/zope/"]);
    assert_eq!(text_of(&list, "packages-count"), "2");
    // Every page has the search box, which submits to the list.
    let home = farm.read("project/zope/index.html");
    assert!(home.contains(r#"<form id="search" action="/packages/" method="get" role="search">"#), "{home}");
    assert!(home.contains(r#"<script src="/search.js" defer></script>"#), "{home}");
}

/// A rewrite its sender recorded itself (a source's pin, a cross-check) is written like any
/// other, without being recorded a second time; a plain one is recorded before it is answered.
#[test]
fn a_recorded_rewrite_is_written_without_a_second_record() {
    let mut farm = Farm::new();
    farm.start(Duration::from_secs(2));
    farm.package("attrs", "attrs", "Classes without boilerplate", &[("1.0", 1)]);
    farm.package("zope", "zope", "Zope", &[("1.0", 1)]);
    farm.send(WebRequest::Rewrite { package: "attrs".into(), scope: piwheels_master::calls::db::RewriteScope::Project });
    farm.send(WebRequest::Recorded { package: "zope".into(), scope: piwheels_master::calls::db::RewriteScope::Project });
    // Both answered; the window (2 s) has not let either be written yet.
    assert_eq!(farm.pending(), ["attrs"]);
    farm.wait("both pages", |farm| farm.path("project/attrs/index.html").is_file() && farm.path("project/zope/index.html").is_file());
    farm.wait("the record cleared", |farm| farm.pending().is_empty());
}

#[test]
fn requests_with_unsafe_names_are_refused_and_change_nothing() {
    let farm = Farm::started();
    for name in ["../etc", "Foo", "", "a/b"] {
        let reply = farm.web.request(&WebRequest::Rewrite { package: name.into(), scope: piwheels_master::calls::db::RewriteScope::Both }, Duration::from_secs(5)).unwrap();
        assert!(matches!(reply, piwheels_master::calls::tasks::WebReply::Error(_)), "{name}: {reply:?}");
        let reply = farm.web.request(&WebRequest::Recorded { package: name.into(), scope: piwheels_master::calls::db::RewriteScope::Both }, Duration::from_secs(5)).unwrap();
        assert!(matches!(reply, piwheels_master::calls::tasks::WebReply::Error(_)), "{name}: {reply:?}");
        let reply = farm
            .web
            .request(&WebRequest::DeletePackage { package: name.into(), files: vec!["x".into()], builds: vec![] }, Duration::from_secs(5))
            .unwrap();
        assert!(matches!(reply, piwheels_master::calls::tasks::WebReply::Error(_)), "{name}: {reply:?}");
    }
    assert!(farm.pending().is_empty());
}

#[test]
fn a_statement_that_cannot_be_written_is_written_when_it_can_and_then_linked() {
    let Numpy { farm, builds } = numpy();
    let id = builds["2.0b1 cp39"];
    let wheel = "numpy-2.0b1-cp39-cp39-linux_armv7l.whl";
    let rel = format!("simple/numpy/{wheel}.intoto.jsonl");
    // A directory stands where the statement goes.
    std::fs::create_dir(farm.path(&rel)).unwrap();
    // Answered once the writer has written the log and tried the statement.
    farm.log("numpy", id, "a log");
    assert!(farm.path(&piwheels_master::index::layout::log_path(id)).is_file());
    assert!(farm.path(&rel).is_dir(), "the statement was written over the directory");
    std::fs::remove_dir(farm.path(&rel)).unwrap();
    farm.wait("the statement written on a later try", |f| f.path(&rel).is_file());
    let statement = piwheels_common::provenance::verify(&std::fs::read(farm.path(&rel)).unwrap(), &index_support::signing_key().verifying_key()).unwrap();
    assert_eq!(statement.subject[0].name, wheel);
    let url = format!("/{rel}");
    farm.wait("the project JSON linking it", |f| {
        f.json("project/numpy/json/index.json")["releases"]["2.0b1"]["files"][wheel]["provenance_url"] == url.as_str()
    });
}
