//! The site in a real browser: Debian's chromium, headless, loads pages the index writer wrote
//! from the built-in web server and runs their scripts. The search box finds a package typed in
//! mixed case, the package list filters itself by the query it was opened with, a project page
//! shows what a user looks for, every page passes axe-core's accessibility checks in light and
//! dark colours, and no page logs a script error.
//!
//! Needs chromium and axe-core (`scripts/test.sh` installs both) and PostgreSQL.

mod index_support;
mod support;

use std::path::PathBuf;
use std::process::Command;

use index_support::{Farm, text_of, unescape};
use piwheels_common::protocols::MasterStats;
use piwheels_master::calls::tasks::{CheckCounts, WebRequest};
use piwheels_master::web_server::WebServer;

/// The browser, run headless as root (CI) needs no sandbox; `budget` is the virtual time, in
/// milliseconds, the page may take to load and run its scripts before its DOM is dumped.
fn dump_dom(url: &str, budget: u32) -> (String, String) {
    dump_dom_with(url, budget, &[])
}

/// [`dump_dom`] with more of chromium's switches.
fn dump_dom_with(url: &str, budget: u32, switches: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr", "--v=0"])
        .args(switches)
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

/// A farm whose index has three projects with files (attrs with a failed build of a second
/// release too), and a home page, served over HTTP.
fn site() -> (Farm, WebServer) {
    let mut farm = Farm::started();
    for (package, display) in [("zope-interface", "zope.interface"), ("zopfli", "zopfli"), ("attrs", "attrs")] {
        farm.package(package, display, "Classes without boilerplate", &[("1.0", 1), ("1.1", 2)]);
        let w = farm.wheel(&format!("{}-1.0-py3-none-any.whl", package.replace('-', "_")), Some(">=3.9"));
        farm.build(package, "1.0", "cp39", &[w]);
        farm.rewrite(package);
    }
    let failed = farm.fail("attrs", "1.1", "cp39");
    farm.log("attrs", failed, "Collecting attrs==1.1\nerror: no compiler\n");
    farm.rewrite("attrs");
    let stats = MasterStats { packages_built: 3, files_count: 3, ..MasterStats::default() };
    farm.send(WebRequest::Home { stats: Box::new(stats), checks: CheckCounts::default(), drifts: Vec::new() });
    farm.wait("the search index", |f| f.read("packages.json").matches("\"").count() == 6);
    farm.wait("attrs's failed build", |f| f.read("project/attrs/index.html").contains(r#"<details class="why">"#));
    let server = WebServer::start(farm.root().to_path_buf(), "127.0.0.1:0".parse().unwrap()).unwrap();
    (farm, server)
}

/// axe-core's script: where `PIW_AXE_SCRIPT` says, else where `scripts/test.sh` installs it.
fn axe_script() -> PathBuf {
    let path = std::env::var_os("PIW_AXE_SCRIPT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-node/node_modules/axe-core/axe.min.js")
    });
    assert!(path.is_file(), "no axe-core at {}: run scripts/test.sh, or set PIW_AXE_SCRIPT", path.display());
    path
}

/// axe-core's findings on the page at `path`: a page of the same site holds it in a large frame,
/// loads axe-core into it and runs the WCAG 2.1 A and AA rules and the best practices; each
/// violation is `rule: element, element...`. An error running axe is a finding too.
fn accessibility_violations(farm: &Farm, server: &WebServer, path: &str, switches: &[&str]) -> Vec<String> {
    std::fs::copy(axe_script(), farm.path("axe.min.js")).unwrap();
    let driver = format!(
        r#"<!DOCTYPE html><html lang="en"><body><pre id="result">not run</pre>
<iframe id="page" src="{path}" title="page" width="1200" height="3000"></iframe>
<script>
var frame = document.getElementById("page");
var result = document.getElementById("result");
frame.addEventListener("load", function () {{
  var doc = frame.contentDocument;
  var script = doc.createElement("script");
  script.src = "/axe.min.js";
  script.onload = function () {{
    var rules = {{ runOnly: {{ type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] }} }};
    frame.contentWindow.axe.run(doc, rules).then(function (found) {{
      result.textContent = found.violations.map(function (v) {{
        return v.id + ": " + v.nodes.map(function (n) {{ return n.target.join(" "); }}).join(", ");
      }}).join("\n") || "none";
    }}, function (e) {{ result.textContent = "axe failed: " + e; }});
  }};
  doc.head.appendChild(script);
}});
</script></body></html>"#
    );
    std::fs::write(farm.path("axe-driver.html"), driver).unwrap();
    let (dom, log) = dump_dom_with(&format!("http://{}/axe-driver.html", server.local_addr()), 20000, switches);
    assert!(page_errors(&log).is_empty(), "{path}: {:?}", page_errors(&log));
    let result = unescape(&text_of(&dom, "result"));
    assert_ne!(result, "not run", "axe-core did not run on {path}: {dom}");
    result.lines().filter(|line| *line != "none").map(str::to_string).collect()
}

/// Every kind of page a person reads passes axe-core's checks (contrast, headings, landmarks,
/// labels, table headers), in the light colours and the dark ones.
#[test]
fn every_page_passes_an_accessibility_check_in_light_and_dark_colours() {
    let (farm, server) = site();
    // The check itself finds what it is there to find: pale text, an input without a label,
    // a heading level skipped.
    let bad = r#"<!DOCTYPE html><html lang="en"><head><title>bad</title></head><body><main><h1>Bad</h1>
<h3>skipped a level</h3><p style="color: #ccc; background: #fff">pale</p><input id="q"></main></body></html>"#;
    std::fs::write(farm.path("bad.html"), bad).unwrap();
    let mut rules: Vec<String> =
        accessibility_violations(&farm, &server, "/bad.html", &[]).iter().map(|v| v.split(':').next().unwrap().to_string()).collect();
    rules.sort();
    assert_eq!(rules, ["color-contrast", "heading-order", "label"]);
    for (scheme, switches) in [("light", &[][..]), ("dark", &["--blink-settings=preferredColorScheme=0"][..])] {
        for path in ["/", "/packages/", "/project/attrs/", "/project/zopfli/"] {
            let found = accessibility_violations(&farm, &server, path, switches);
            assert!(found.is_empty(), "{path} in {scheme} colours:\n{}", found.join("\n"));
        }
    }
}

/// Every link of the pages a person reads leads somewhere, as the browser follows it: each
/// link of this site the home page, the package list and a project page hold answers 200.
#[test]
fn every_link_of_the_site_s_pages_resolves() {
    let (farm, server) = site();
    let driver = r#"<!DOCTYPE html><html lang="en"><body><pre id="links">not run</pre>
<iframe id="page" title="page"></iframe>
<script>
var pages = ["/", "/packages/", "/project/attrs/"], found = [];
var frame = document.getElementById("page");
function next() {
  var page = pages.shift();
  if (!page) {
    Promise.all(found.map(function (href) {
      return fetch(href).then(function (r) { return href + " " + r.status; }, function (e) { return href + " " + e; });
    })).then(function (lines) { document.getElementById("links").textContent = lines.join("\n"); });
    return;
  }
  frame.onload = function () {
    Array.prototype.forEach.call(frame.contentDocument.querySelectorAll("a[href]"), function (a) {
      var url = new URL(a.getAttribute("href"), frame.contentWindow.location.href);
      if (url.origin === location.origin && found.indexOf(url.pathname) < 0) { found.push(url.pathname); }
    });
    next();
  };
  frame.src = page;
}
next();
</script></body></html>"#;
    std::fs::write(farm.path("links.html"), driver).unwrap();
    let (dom, log) = dump_dom(&format!("http://{}/links.html", server.local_addr()), 10000);
    assert!(page_errors(&log).is_empty(), "{:?}", page_errors(&log));
    let links = unescape(&text_of(&dom, "links"));
    let links: Vec<&str> = links.lines().collect();
    // The home page's, the list's and the project's own links, its files and its log among them.
    for wanted in ["/ ", "/packages/ ", "/simple/ ", "/project/zopfli/ ", "/simple/attrs/attrs-1.0-py3-none-any.whl ", "/logs/"] {
        assert!(links.iter().any(|l| l.starts_with(wanted)), "no link {wanted:?} in {links:?}");
    }
    let broken: Vec<&&str> = links.iter().filter(|l| !l.ends_with(" 200")).collect();
    assert!(broken.is_empty(), "{broken:?}");
}

/// The dark colours are the ones a reader whose system asks for them gets: the check above
/// checks both.
#[test]
fn a_reader_who_prefers_dark_colours_gets_them() {
    let (farm, server) = site();
    let driver = r#"<!DOCTYPE html><html lang="en"><body><p id="colour">not run</p>
<iframe id="page" src="/project/attrs/" title="page"></iframe>
<script>
var frame = document.getElementById("page");
frame.addEventListener("load", function () {
  document.getElementById("colour").textContent = frame.contentWindow.getComputedStyle(frame.contentDocument.body).backgroundColor;
});
</script></body></html>"#;
    std::fs::write(farm.path("colour.html"), driver).unwrap();
    let url = format!("http://{}/colour.html", server.local_addr());
    let (light, _) = dump_dom(&url, 3000);
    let (dark, _) = dump_dom_with(&url, 3000, &["--blink-settings=preferredColorScheme=0"]);
    assert_eq!(text_of(&light, "colour"), "rgb(255, 255, 255)");
    assert_eq!(text_of(&dark, "colour"), "rgb(18, 18, 18)");
}

/// A project page as the browser renders it: its summary, the Pythons it installs on, a state
/// per ABI and release, why a build failed, and its dependencies with their markers.
#[test]
fn a_project_page_shows_summary_requires_python_build_states_and_dependencies() {
    let (_farm, server) = site();
    let (dom, log) = dump_dom(&format!("http://{}/project/attrs/", server.local_addr()), 3000);
    assert!(page_errors(&log).is_empty(), "{:?}", page_errors(&log));
    assert_eq!(text_of(&dom, "description"), "Classes without boilerplate");
    assert_eq!(text_of(&dom, "requires-python"), "Requires Python >=3.9");
    let table = &dom[dom.find(r#"id="releases-table""#).unwrap()..];
    let row = |version: &str| {
        let start = table.find(&format!(r#"<tr data-version="{version}">"#)).unwrap();
        &table[start..start + table[start..].find("</tr>").unwrap()]
    };
    assert!(row("1.0").contains(r#"<td class="success" title="built 20"#), "{}", row("1.0"));
    assert!(row("1.1").contains(r#"<td class="fail" title="failed 20"#), "{}", row("1.1"));
    assert!(row("1.1").contains(r#"<details class="why"><summary>why</summary><pre>log</pre></details>"#), "{}", row("1.1"));
    let deps = unescape(&text_of(&dom, "pipdeps"));
    let deps: Vec<&str> = deps.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(deps, ["numpy", r#"ruamel-yaml-clib >=0.2.7; python_version < "3.13""#]);
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
