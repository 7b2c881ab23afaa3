//! The site in a real browser: Debian's chromium, headless, loads pages the index writer wrote
//! from the built-in web server and runs their scripts. The search box finds a package typed in
//! mixed case, the package list filters itself by the query it was opened with, and no page
//! logs a script error.
//!
//! Needs chromium (`scripts/test.sh` installs it) and PostgreSQL.

mod index_support;
mod support;

use std::process::Command;

use index_support::Farm;
use piwheels_master::web_server::WebServer;

/// The browser, run headless as root (CI) needs no sandbox; `budget` is the virtual time, in
/// milliseconds, the page may take to load and run its scripts before its DOM is dumped.
fn dump_dom(url: &str, budget: u32) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test.sh installs it)");
    assert!(output.status.success(), "chromium failed on {url}: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Script errors and failed requests the browser logged for a page.
fn page_errors(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught") || line.contains("Failed to load resource")).collect()
}

/// A farm whose index has three projects with files, served over HTTP.
fn site() -> (Farm, WebServer) {
    let mut farm = Farm::started();
    for (package, display) in [("zope-interface", "zope.interface"), ("zopfli", "zopfli"), ("attrs", "attrs")] {
        farm.package(package, display, "", &[("1.0", 1)]);
        let w = farm.wheel(&format!("{}-1.0-py3-none-any.whl", package.replace('-', "_")), None);
        farm.build(package, "1.0", "cp39", &[w]);
        farm.rewrite(package);
    }
    farm.wait("the search index", |f| f.read("packages.json").matches("\"").count() == 6);
    let server = WebServer::start(farm.root().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    (farm, server)
}

#[test]
fn the_package_list_shows_what_the_query_it_was_opened_with_matches() {
    let (_farm, server) = site();
    let (dom, log) = dump_dom(&format!("http://{}/packages/?q=Zope.Interface", server.local_addr()), 3000);
    assert!(page_errors(&log).is_empty(), "{:?}", page_errors(&log));
    let shown: Vec<&str> = dom.lines().filter(|l| l.starts_with("<li>") && !l.contains("hidden")).collect();
    assert_eq!(shown, [r#"<li><a href="/project/zope-interface/">zope-interface</a></li>"#], "{dom}");
    assert!(dom.contains(r#"<li hidden=""><a href="/project/zopfli/">zopfli</a></li>"#), "{dom}");
}

/// The search box of a real project page, typed into from a page of the same site that holds
/// it in a frame (the browser cannot be typed into otherwise when headless): the matches of
/// "ZOP", then of "zope_I", are listed, as links to the project pages.
#[test]
fn the_search_box_lists_the_packages_a_query_typed_in_any_case_matches() {
    let (farm, server) = site();
    let driver = r#"<!DOCTYPE html><html><body><ol id="found"></ol>
<iframe id="page" src="/project/attrs/"></iframe>
<script>
var frame = document.getElementById("page");
frame.addEventListener("load", function () {
  var doc = frame.contentDocument;
  var box = doc.getElementById("search-box");
  function type(text, then) {
    box.value = text;
    box.dispatchEvent(new Event("input"));
    setTimeout(then, 500);
  }
  function note(label) {
    var results = doc.getElementById("search-results");
    var item = document.createElement("li");
    item.textContent = label + ": " + (results.hidden ? "hidden" : Array.prototype.map.call(results.querySelectorAll("a"), function (a) { return a.getAttribute("href"); }).join(" "));
    document.getElementById("found").appendChild(item);
  }
  type("ZOP", function () { note("ZOP"); type("zope_I", function () { note("zope_I"); type("", function () { note("empty"); }); }); });
});
</script></body></html>"#;
    std::fs::write(farm.path("driver.html"), driver).unwrap();
    let (dom, log) = dump_dom(&format!("http://{}/driver.html", server.local_addr()), 5000);
    assert!(page_errors(&log).is_empty(), "{:?}", page_errors(&log));
    let list = dom.split(r#"<ol id="found">"#).nth(1).and_then(|rest| rest.split("</ol>").next()).unwrap_or_default();
    let found: Vec<&str> = list.split("<li>").filter_map(|item| item.strip_suffix("</li>")).collect();
    assert_eq!(
        found,
        ["ZOP: /project/zope-interface/ /project/zopfli/", "zope_I: /project/zope-interface/", "empty: hidden"],
        "{dom}"
    );
}
